"""The contract every registered noise process keeps with the sampler loop (and the uniform process's own
math). A new process registered in dlm.diffusion joins these tests by being registered."""

import pytest
import torch
import torch.nn.functional as F

from dlm.diffusion import PROCESSES, DiffusionConfig, build_process
from dlm.diffusion.uniform import score_entropy
from dlm.errors import ConfigError
from dlm.hub import from_pretrained, save_pretrained
from dlm.hub.loading import open_checkpoint
from dlm.hub.pipeline import checkpoint_settings
from dlm.model import Transformer
from dlm.sampling import GenerationConfig, RecordingStreamer, generate
from dlm.sampling.generate import Denoiser

from ..conftest import tiny_config

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [20]]
SETTINGS = [
    dict(),
    dict(temperature=0.9, seed=4, block_length=4, steps=8),
    dict(cache="dual", block_length=4, steps=8),
]


def _network(name: str = "masked"):
    """The tiny network a process trains (its `resolve` fits the config: the continuous process adds noise
    conditioning), with weights scaled up so that logits are far from uniform."""
    cfg = tiny_config(vocab_size=96, d_model=48, n_heads=4, n_kv_heads=2)
    cfg = PROCESSES[name].resolve(DiffusionConfig(process=name), cfg)[1]
    torch.manual_seed(0)
    m = Transformer(cfg).eval()
    for p in m.parameters():
        if p.dim() > 1:
            p.data.mul_(3.0)
    return m


@pytest.fixture(scope="module")
def networks():
    return {name: _network(name) for name in PROCESSES}


@pytest.fixture(scope="module")
def model():
    return _network()


def _process(name, model):
    return build_process(DiffusionConfig(process=name), model.config)


def _cfg(**kw):
    return GenerationConfig(**{"gen_length": 8, "steps": 8, "seed": 0, "stop_at_eos": False, **kw})


@pytest.mark.parametrize("name", sorted(PROCESSES))
@pytest.mark.parametrize("kw", SETTINGS, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()) or "default")
def test_a_batch_gives_each_prompt_its_tokens_alone_and_a_seed_fixes_them(networks, name, kw):
    model = networks[name]
    process, cfg = _process(name, model), _cfg(**kw)
    if process.reverse(cfg).feeds_inputs and cfg.cache != "none":  # its latents change every step: no cache
        with pytest.raises(ConfigError, match="cache"):
            generate(model, PROMPTS, cfg, process=process)
        return
    batch = generate(model, PROMPTS, cfg, process=process)
    again = generate(model, PROMPTS, cfg, process=process)
    assert batch.canvases == again.canvases
    for i, p in enumerate(PROMPTS):
        alone = generate(model, [p], cfg, process=process)
        assert alone.canvases[0] == batch.canvases[i]
        assert batch.canvases[i][: len(p)] == p  # the prompt is never touched


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_nothing_noisy_is_left_and_every_step_is_reported(networks, name):
    model = networks[name]
    st = RecordingStreamer()
    out = generate(model, PROMPTS, _cfg(block_length=4, steps=8), process=_process(name, model), streamer=st)
    assert all(len(s) == 8 for s in out.sequences)
    assert st.events and all(noisy == [] for noisy in st.events[-1].masked)
    assert all(0 <= t < 96 for s in out.sequences for t in s)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_the_process_survives_save_and_load(networks, name, tmp_path):
    model = networks[name]
    # a setting every process takes (the spindle process bends only the linear schedule): eps
    save_pretrained(model, tmp_path / "m", diffusion_config=DiffusionConfig(process=name, eps=0.002))
    loaded = from_pretrained(tmp_path / "m")
    _, diff = checkpoint_settings(open_checkpoint(tmp_path / "m"))
    assert (diff.process, diff.eps) == (name, 0.002)
    process = build_process(diff, loaded.config)
    assert type(process) is PROCESSES[name]
    cfg = _cfg(temperature=0.7)
    want = generate(
        model, PROMPTS, cfg, process=build_process(DiffusionConfig(process=name, eps=0.002), model.config)
    )
    assert generate(loaded, PROMPTS, cfg, process=process).canvases == want.canvases


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_rows_joining_a_running_batch_match_running_alone(networks, name):
    model = networks[name]
    process, cfg = _process(name, model), _cfg(temperature=0.8, block_length=4)
    d = Denoiser(model, cfg, process=process)
    first = d.add(PROMPTS[:2])
    d.step()
    later = d.add(PROMPTS[2:])
    while d.live:
        d.step()
    for h, p in zip(first + later, PROMPTS):
        assert d.pop_result(h)["canvas"] == generate(model, [p], cfg, process=process).canvases[0]


def test_the_uniform_process_revises_tokens_it_already_proposed(model):
    """Uniform-state diffusion redraws every position of the block at each step: some position holds one
    token after a step and a different one after a later step (a committed token revised)."""
    st = RecordingStreamer()
    generate(model, [PROMPTS[0]], _cfg(gen_length=8, steps=8, temperature=1.0), process=_process("uniform", model),
             streamer=st)  # fmt: skip
    seen: dict[int, list[int]] = {}
    for ev in st.events:
        for pos, tok in zip(ev.positions[0], ev.tokens[0]):
            seen.setdefault(pos, []).append(tok)
    revised = [pos for pos, toks in seen.items() if len(set(toks)) >= 2]
    assert revised, seen


def _brute_force_integrand(logits, z, x, alpha, beta):
    """The ELBO integrand written term by term: beta/N sum_{y != z} [s_y - a_y log s_y + a_y (log a_y - 1)]."""
    N = logits.shape[-1]
    p = torch.softmax(logits.double(), -1)
    a = float(alpha)

    def q(y, x_):  # q_t(y | x)
        return a * (y == x_) + (1 - a) / N

    total = 0.0
    for y in range(N):
        if y == z:
            continue
        s_y = sum(float(p[xp]) * q(y, xp) / q(z, xp) for xp in range(N))
        a_y = q(y, x) / q(z, x)
        total += s_y - a_y * torch.log(torch.tensor(s_y)).item() + a_y * (torch.log(torch.tensor(a_y)).item() - 1)
    return float(beta) / N * total


@pytest.mark.parametrize("z, x", [(2, 2), (1, 3), (0, 4)])
@pytest.mark.parametrize("alpha", [0.05, 0.5, 0.97])
def test_uniform_elbo_integrand_matches_the_term_by_term_sum(z, x, alpha):
    g = torch.Generator().manual_seed(z * 7 + x)
    logits = torch.randn(1, 5, generator=g) * 2
    beta = torch.tensor([1.3])
    got = score_entropy(logits, torch.tensor([z]), torch.tensor([x]), torch.tensor([alpha]), beta)
    assert got.item() == pytest.approx(_brute_force_integrand(logits[0], z, x, alpha, 1.3), rel=1e-5, abs=1e-7)
    assert got.item() >= -1e-9  # a KL-type integrand is never negative


def _plain_integrand(logits, z, x, alpha, beta):
    """The integrand through autograd-visible float64 ops (the fused version computes its gradient by hand)."""
    N = logits.shape[-1]
    p = torch.softmax(logits.double(), -1)
    a = alpha.double()
    r = 1.0 + a * N / (1.0 - a)
    p_z = p.gather(-1, z[:, None])
    s = 1.0 + p * (r - 1.0)[:, None] + p_z * (1.0 / r - 1.0)[:, None]
    a_y = torch.where((z == x)[:, None], (1.0 / r)[:, None].expand_as(s), torch.ones_like(s))
    a_y = torch.where(F.one_hot(x, N).bool() & (z != x)[:, None], r[:, None].expand_as(s), a_y)
    term = s - a_y * torch.log(s) + a_y * (torch.log(a_y) - 1.0)
    return beta.double() / N * term.masked_fill(F.one_hot(z, N).bool(), 0.0).sum(-1)


def test_uniform_elbo_gradient_matches_autograd_through_the_plain_formula():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(7, 11, generator=g) * 2).requires_grad_()
    z = torch.randint(0, 11, (7,), generator=g)
    x = torch.where(torch.rand(7, generator=g) < 0.5, z, torch.randint(0, 11, (7,), generator=g))
    alpha, beta = torch.rand(7, generator=g) * 0.98 + 0.01, torch.rand(7, generator=g) + 0.5
    w = torch.randn(7, generator=g)
    (score_entropy(logits, z, x, alpha, beta, chunk=3) * w).sum().backward()
    fused = logits.grad.clone()
    logits.grad = None
    plain = _plain_integrand(logits, z, x, alpha, beta)
    (plain * w).sum().backward()
    assert torch.allclose(score_entropy(logits, z, x, alpha, beta).float(), plain.float(), rtol=1e-5, atol=1e-6)
    assert torch.allclose(fused, logits.grad, rtol=1e-4, atol=1e-6)


def test_uniform_elbo_is_zero_for_a_model_that_knows_the_answer_and_positive_otherwise():
    z, x = torch.tensor([3, 1, 4]), torch.tensor([3, 2, 4])
    alpha, beta = torch.tensor([0.3, 0.6, 0.9]), torch.ones(3)
    oracle = torch.full((3, 6), -60.0).scatter(1, x[:, None], 60.0)
    assert score_entropy(oracle, z, x, alpha, beta).abs().max().item() < 1e-6
    assert (score_entropy(torch.zeros(3, 6), z, x, alpha, beta) > 1e-3).all()


def test_uniform_noise_draws_real_tokens_at_the_schedules_rate():
    process = build_process(DiffusionConfig(process="uniform"), tiny_config(vocab_size=50))
    x0 = torch.zeros(4, 5000, dtype=torch.long)
    t = torch.tensor([0.1, 0.4, 0.7, 0.999])
    xt, noised = process.add_noise(x0, t, torch.Generator().manual_seed(0))
    rate = noised.float().mean(1)
    assert torch.allclose(rate, t, atol=0.02)
    assert int(xt.min()) >= 0 and int(xt.max()) < 50
    # a resampled token is uniform over the vocabulary: about 1/50 of them land back on the clean token
    assert abs(float((xt[3][noised[3]] == 0).float().mean()) - 1 / 50) < 0.01
