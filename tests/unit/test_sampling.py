import pytest
import torch

from dlm.errors import ConfigError, InputError
from dlm.model import Transformer
from dlm.sampling import (
    POLICIES,
    GenerationConfig,
    RecordingStreamer,
    SuppressTokens,
    UnmaskPolicy,
    generate,
    register_policy,
)

from ..conftest import EOS, MASK, tiny_config

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16], [20], [30, 31, 32, 33, 34]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Transformer(tiny_config(vocab_size=96, d_model=48, n_heads=4, n_kv_heads=2)).eval()
    for p in m.parameters():  # a sharper random model: confidences are far apart, like a trained one
        p.data.mul_(3.0) if p.dim() > 1 else None
    return m


CONFIGS = [
    GenerationConfig(gen_length=16, steps=16, block_length=4),
    GenerationConfig(gen_length=16, steps=8, block_length=8, policy="margin"),
    GenerationConfig(gen_length=12, steps=6, policy="entropy"),
    GenerationConfig(gen_length=16, steps=8, block_length=8, temperature=1.0, seed=7),
    GenerationConfig(
        gen_length=16, steps=16, block_length=4, temperature=0.7, top_p=0.9, top_k=20, seed=3, policy="random"
    ),
    GenerationConfig(gen_length=8, steps=8, cfg_scale=1.5),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.policy}-T{c.temperature}-cfg{c.cfg_scale}")
def test_batch_gives_exactly_what_each_prompt_gives_alone(model, cfg):
    batch = generate(model, PROMPTS, cfg)
    for i, p in enumerate(PROMPTS):
        alone = generate(model, [p], cfg)
        assert batch.sequences[i] == alone.sequences[0]
        assert batch.canvases[i] == alone.canvases[0]
        assert batch.nfe[i] == alone.nfe[0]


def test_seeded_sampling_is_deterministic_and_seed_dependent(model):
    cfg = GenerationConfig(gen_length=16, steps=16, temperature=1.0, seed=11, stop_at_eos=False, trim_at_eos=False)
    a = generate(model, PROMPTS, cfg).canvases
    b = generate(model, PROMPTS, cfg).canvases
    c = generate(model, PROMPTS, GenerationConfig(**{**cfg.__dict__, "seed": 12})).canvases
    assert a == b
    assert a != c


def test_prompts_never_change_and_no_mask_is_left(model):
    cfg = GenerationConfig(gen_length=16, steps=4, block_length=8, stop_at_eos=False)
    out = generate(model, PROMPTS, cfg)
    for p, canvas in zip(PROMPTS, out.canvases):
        assert canvas[: len(p)] == p
        assert len(canvas) == len(p) + 16
        assert MASK not in canvas


@pytest.mark.parametrize("steps,per_step", [(16, 1), (8, 2), (4, 4)])
def test_tokens_committed_per_step_follow_the_schedule(model, steps, per_step):
    st = RecordingStreamer()
    cfg = GenerationConfig(gen_length=16, steps=steps, block_length=16 if steps < 8 else 8, stop_at_eos=False)
    out = generate(model, PROMPTS[:2], cfg, streamer=st)
    assert st.ended and len(st.events) == steps
    for ev in st.events:
        assert [len(p) for p in ev.positions] == [per_step, per_step]
    assert out.nfe == [steps, steps]
    # semi-AR: block b's positions are committed only during block b's steps
    if cfg.block_length == 8:
        for ev in st.events:
            lo = len(PROMPTS[0]) + 8 * ev.block
            assert all(lo <= q < lo + 8 for q in ev.positions[0])


def test_infill_keeps_prefix_and_suffix_fixed(model):
    cfg = GenerationConfig(gen_length=6, steps=6, stop_at_eos=False, trim_at_eos=False)
    sfx = [[40, 41, 42], [43], [44, 45]]
    out = generate(model, PROMPTS[:3], cfg, suffixes=sfx)
    for p, s, canvas, seq in zip(PROMPTS, sfx, out.canvases, out.sequences):
        assert canvas[: len(p)] == p and canvas[len(p) + 6 :] == s
        assert canvas[len(p) : len(p) + 6] == seq and MASK not in canvas


def test_masks_inside_the_text_are_filled_in_place(model):
    prompt = [5, MASK, 7, MASK, MASK, 9]
    out = generate(model, [prompt, [4, 4]], GenerationConfig(gen_length=4, steps=4, stop_at_eos=False))
    canvas = out.canvases[0]
    assert MASK not in canvas
    assert [canvas[i] for i in (0, 2, 5)] == [5, 7, 9]
    assert out.canvases[1][:2] == [4, 4]
    alone = generate(model, [prompt], GenerationConfig(gen_length=4, steps=4, stop_at_eos=False))
    assert alone.canvases[0] == canvas


class EosModel(torch.nn.Module):
    """Predicts EOS everywhere with the same confidence (leftmost wins ties)."""

    def __init__(self):
        super().__init__()
        self.config = tiny_config()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    def forward(self, x, attention_mask=None, logits_index=None, **kw):
        self.calls += 1
        n = logits_index.shape[1] if logits_index is not None else x.shape[1]
        out = torch.zeros(x.shape[0], n, 64)
        out[..., EOS] = 10.0
        return out


def test_generation_stops_once_eos_is_final_and_output_is_trimmed():
    m = EosModel()
    out = generate(m, [[5, 6]], GenerationConfig(gen_length=32, steps=32, block_length=8))
    assert out.sequences == [[]]
    assert out.nfe == [1] and m.calls == 1 and out.finished_early == [True]
    assert out.canvases[0][2:] == [EOS] * 32
    full = generate(EosModel(), [[5, 6]], GenerationConfig(gen_length=32, steps=32, block_length=8, stop_at_eos=False))
    assert full.nfe == [32]


def test_cfg_unconditional_pass_hides_the_prompt():
    seen = []

    class Rec(EosModel):
        def forward(self, x, attention_mask=None, logits_index=None, **kw):
            seen.append(x.clone())
            return super().forward(x, attention_mask, logits_index)

    generate(Rec(), [[5, 6, 7]], GenerationConfig(gen_length=4, steps=4, cfg_scale=2.0, stop_at_eos=False))
    x = seen[0]
    assert x.shape[0] == 2
    assert x[0, :3].tolist() == [5, 6, 7] and x[1, :3].tolist() == [MASK] * 3


def test_logits_processor_applies_before_choosing(model):
    cfg = GenerationConfig(gen_length=8, steps=8, stop_at_eos=False)
    base = generate(model, [PROMPTS[0]], cfg).sequences[0]
    banned = sorted(set(base))
    out = generate(model, [PROMPTS[0]], cfg, logits_processors=[SuppressTokens(banned)]).sequences[0]
    assert not set(out) & set(banned)


def test_top_k_one_with_temperature_equals_greedy(model):
    greedy = generate(model, PROMPTS, GenerationConfig(gen_length=8, steps=8)).sequences
    sampled = generate(
        model, PROMPTS, GenerationConfig(gen_length=8, steps=8, temperature=2.0, top_k=1, seed=0)
    ).sequences
    assert greedy == sampled


def test_a_new_policy_is_one_small_class(model):
    @register_policy
    class RightToLeft(UnmaskPolicy):
        name = "test_right_to_left"

        def scores(self, s):
            return torch.arange(s.x0.shape[1], dtype=torch.float32).expand_as(s.x0_prob)

    try:
        st = RecordingStreamer()
        generate(
            model,
            [PROMPTS[0]],
            GenerationConfig(gen_length=4, steps=4, policy="test_right_to_left", stop_at_eos=False),
            streamer=st,
        )
        assert [ev.positions[0][0] for ev in st.events] == [6, 5, 4, 3]
    finally:
        POLICIES.pop("test_right_to_left")


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"policy": "telepathy"}, "policy"),
        ({"steps": 0}, "steps"),
        ({"gen_length": 10, "block_length": 4}, "block_length"),
        ({"gen_length": 16, "block_length": 4, "steps": 6}, "steps"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"gen_length": 0}, "gen_length"),
    ],
)
def test_bad_generation_config_names_the_field(kw, field):
    with pytest.raises(ConfigError, match=field):
        GenerationConfig(**kw)


def test_more_steps_than_tokens_is_the_masked_process_error(model):
    """A masked step commits at least one token, so the masked sampler refuses more steps than tokens; the
    config itself allows them (continuous and uniform processes take as many steps as they like)."""
    cfg = GenerationConfig(steps=64, gen_length=32)
    with pytest.raises(ConfigError, match="steps.*gen_length=32"):
        generate(model, [[5]], cfg)


def test_prompt_beyond_max_length_is_a_clear_error(model):
    with pytest.raises(InputError, match=r"prompts\[1\].*max_seq_len"):
        generate(model, [[5], [6] * 125], GenerationConfig(gen_length=8, steps=8))
    with pytest.raises(InputError, match="prompts"):
        generate(model, [], GenerationConfig(gen_length=8, steps=8))


def test_a_policy_that_commits_nothing_still_finishes_every_block(model):
    @register_policy
    class Lazy(UnmaskPolicy):
        name = "test_lazy"

        def scores(self, s):
            return s.x0_prob

        def select(self, scores, s):
            return torch.zeros_like(s.candidates)

    try:
        st = RecordingStreamer()
        out = generate(
            model,
            PROMPTS[:2],
            GenerationConfig(gen_length=16, steps=8, block_length=8, policy="test_lazy", stop_at_eos=False),
            streamer=st,
        )
        assert all(MASK not in c for c in out.canvases)
        assert all(len(p) >= 1 for ev in st.events for p in ev.positions)
    finally:
        POLICIES.pop("test_lazy")
