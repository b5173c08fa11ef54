"""dlm samples a Dream checkpoint exactly as Dream's own `diffusion_generate` does, schedule included.

The reference below follows Dream's published sampling loop (HKUNLP/Dream `generation_utils.py`, `_sample`; also
kept in ZHZisZZ/dllm under `dllm/pipelines/dream/models/`), written out here for batch 1 without padding and
driving the independent float64 Qwen2 forward of tests/foreign.py:
- the time grid is float32 `linspace(1, eps, steps + 1)`; step i < steps - 1 commits `int(n_masked * (1 - s/t))`
  positions (possibly none), the last step everything left;
- alg `origin` first draws one uniform per masked position and commits those below `1 - s/t` (all at the last
  step), then samples tokens only for them; `maskgit_plus` / `topk_margin` / `entropy` rank by the sampled token's
  probability / top-1 minus top-2 / negative entropy;
- with temperature > 0 the logits are divided by T, then top-p, then top-k filtered, and tokens are drawn from
  that categorical distribution with torch's global generator (seeded like dlm's row generator);
- Dream's `generation_logits_hook_func` is used as Dream users use it to keep the mask token out of the
  proposals (dlm never proposes it).
dlm gets the same tokens from the Dream family's own defaults (schedule `dream`, proposal `categorical`) and
the policy that names each alg.
"""

import pytest
import torch
import torch.nn.functional as F

from dlm.hub import from_pretrained
from dlm.hub.loading import open_checkpoint
from dlm.hub.pipeline import checkpoint_settings
from dlm.sampling import GenerationConfig, generate

from ..foreign import dream_config, qwen2_reference, write_dream

MASK = 95
ALG_TO_POLICY = {"origin": "posterior", "maskgit_plus": "low_confidence", "topk_margin": "margin", "entropy": "entropy"}


def _top_p(logits, top_p):
    sorted_logits, order = torch.sort(logits, descending=True)
    cum = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    drop = cum > top_p
    drop[..., 1:] = drop[..., :-1].clone()
    drop[..., 0] = False
    return logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), torch.finfo(logits.dtype).min)


def _sample_tokens(logits, temperature, top_p, margin=False, neg_entropy=False):
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = _top_p(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        x0 = torch.distributions.Categorical(probs=probs).sample()
        confidence = probs.gather(-1, x0[:, None]).squeeze(-1)
    else:
        confidence, x0 = probs.max(dim=-1)
    if margin:
        top = probs.sort(dim=-1, descending=True).values
        confidence = top[:, 0] - top[:, 1]
    if neg_entropy:
        confidence = (probs * torch.log(probs + 1e-10)).sum(-1)
    return confidence, x0


def dream_reference(state, cfg, prompt, *, max_new_tokens, steps, alg, temperature=0.0, top_p=None, eps=1e-3,
                    seed=0):  # fmt: skip
    torch.manual_seed(seed)
    x = torch.tensor([list(prompt) + [MASK] * max_new_tokens])
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x == MASK
        logits = qwen2_reference(state, cfg, x, causal=False).float()
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        logits[..., MASK] = float("-inf")  # the logits hook: never propose the mask token
        mask_logits = logits[mask_index]
        t, s = timesteps[i], timesteps[i + 1]
        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1
            x0 = torch.zeros_like(x[mask_index]) + MASK
            transfer = torch.rand(*x0.shape) < p_transfer
            _, x0[transfer] = _sample_tokens(mask_logits[transfer], temperature, top_p)
            x[mask_index] = x0.clone()
            continue
        confidence, x0 = _sample_tokens(
            mask_logits, temperature, top_p, margin=alg == "topk_margin", neg_entropy=alg == "entropy"
        )
        n_masked = mask_index.sum() / mask_index.shape[0]
        k = int(n_masked * (1 - s / t)) if i < steps - 1 else int(n_masked)
        full = torch.full(x.shape, -torch.inf, dtype=logits.dtype)
        full[mask_index] = confidence
        if k > 0:
            _, transfer = torch.topk(full, k)
            proposal = torch.zeros_like(x) + MASK
            proposal[mask_index] = x0.clone()
            x[0, transfer[0]] = proposal[0, transfer[0]]
    return x[0].tolist()


@pytest.fixture(scope="module")
def dream(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dream")
    state = write_dream(folder, seed=3)
    return folder, state, from_pretrained(folder)


CASES = [  # (alg, temperature, top_p, seed, gen_length, steps)
    *[(alg, 0.0, None, 0, 12, 5) for alg in ALG_TO_POLICY],
    *[(alg, 0.0, None, 0, 16, 16) for alg in ALG_TO_POLICY],
    *[(alg, 0.8, None, seed, 12, 6) for alg in ALG_TO_POLICY for seed in (1, 2)],
    *[(alg, 0.5, 0.9, 7, 10, 4) for alg in ALG_TO_POLICY],
]


@pytest.mark.parametrize("alg, temperature, top_p, seed, gen_length, steps", CASES)
def test_dlm_reproduces_dream_diffusion_generate(dream, alg, temperature, top_p, seed, gen_length, steps):
    folder, state, model = dream
    assert model.config.shift_logits and model.config.mask_token_id == MASK
    prompt = [7, 41, 13, 66, 29]
    want = dream_reference(state, dream_config(), prompt, max_new_tokens=gen_length, steps=steps, alg=alg,
                           temperature=temperature, top_p=top_p, seed=seed)  # fmt: skip
    family_defaults, _ = checkpoint_settings(open_checkpoint(folder))
    cfg = GenerationConfig(**{
        **family_defaults.__dict__, "gen_length": gen_length, "steps": steps, "temperature": temperature,
        "top_p": top_p or 1.0, "policy": ALG_TO_POLICY[alg], "seed": seed, "stop_at_eos": False, "trim_at_eos": False,
    })  # fmt: skip
    assert (cfg.schedule, cfg.proposal, cfg.schedule_eps) == ("dream", "categorical", 1e-3)
    got = generate(model, [prompt], cfg).canvases[0]
    assert got == want
    assert MASK not in got


def test_dreams_schedule_moves_single_tokens_that_the_even_split_does_not(dream):
    """The commit counts differ (8 tokens over 4 steps: Dream [1, 2, 2, 3] vs the even split [2, 2, 2, 2]), so
    the schedule is visible in the output: with LLaDA's even split the same policy fills other tokens."""
    folder, state, model = dream
    prompt = [7, 41, 13, 66, 29]
    want = dream_reference(state, dream_config(), prompt, max_new_tokens=8, steps=4, alg="maskgit_plus")
    base = dict(gen_length=8, steps=4, policy="low_confidence", stop_at_eos=False, trim_at_eos=False)
    from dlm.sampling import RecordingStreamer

    st = RecordingStreamer()
    assert generate(model, [prompt], GenerationConfig(**base, schedule="dream"), streamer=st).canvases[0] == want
    assert [len(ev.positions[0]) for ev in st.events] == [1, 2, 2, 3]
    st = RecordingStreamer()
    generate(model, [prompt], GenerationConfig(**base, schedule="even"), streamer=st)
    assert [len(ev.positions[0]) for ev in st.events] == [2, 2, 2, 2]
