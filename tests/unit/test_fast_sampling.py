"""Fast sampling: parallel-decoding policies, prefix/dual caches, early exit, batching."""

import pytest
import torch

from dlm.errors import ConfigError
from dlm.model import CanvasCache, Transformer
from dlm.sampling import GenerationConfig, RecordingStreamer, StepInputs, generate, get_policy

from ..conftest import EOS, MASK, tiny_config

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16], [20], [30, 31, 32, 33, 34]]


def _sharp(**kw):
    torch.manual_seed(0)
    m = Transformer(tiny_config(vocab_size=96, d_model=48, n_heads=4, n_kv_heads=2, **kw)).eval()
    for p in m.parameters():  # confidences far apart, like a trained model
        if p.dim() > 1:
            p.data.mul_(3.0)
    m.norm.weight.data.mul_(10.0)  # sharp enough for parallel decoding to commit several tokens per step
    return m


@pytest.fixture(scope="module")
def model():
    return _sharp()


@pytest.fixture(scope="module")
def block_causal_model():
    return _sharp(attention="block_causal", block_size=4)


def _inputs(x0_prob, candidates=None, probs=None, x0=None, rows=None, positions=None):
    x0_prob = torch.tensor(x0_prob, dtype=torch.float32)
    R, A = x0_prob.shape
    cand = torch.ones(R, A, dtype=torch.bool) if candidates is None else torch.tensor(candidates)
    if probs is None:
        probs = torch.full((R, A, 4), 0.0)
        probs[..., 0] = x0_prob
        probs[..., 1] = 1 - x0_prob
    return StepInputs(
        logits=probs.clamp_min(1e-9).log(),
        probs=probs,
        x0=torch.zeros(R, A, dtype=torch.long) if x0 is None else torch.tensor(x0),
        x0_prob=x0_prob,
        candidates=cand,
        num_to_commit=torch.ones(R, dtype=torch.long),
        uniform=lambda: torch.rand(R, A),
        rows=torch.arange(R) if rows is None else torch.tensor(rows),
        positions=torch.arange(A).expand(R, A) if positions is None else torch.tensor(positions),
        step=torch.zeros(R, dtype=torch.long),
    )


def _policy(name, **kw):
    return get_policy(name, GenerationConfig(gen_length=8, steps=8, policy=name, **kw))


# ---- commit rules ---------------------------------------------------------------------------------------------


def test_threshold_commits_exactly_the_confident_candidates_and_at_least_one():
    s = _inputs(
        [[0.95, 0.5, 0.91, 0.2, 0.99], [0.1, 0.3, 0.2, 0.05, 0.01]],
        candidates=[[True, True, True, True, False], [True, True, True, True, True]],
    )
    commit = _policy("threshold", threshold=0.9)(s)
    assert commit[0].tolist() == [True, False, True, False, False]  # 0.99 is not a candidate
    assert commit[1].tolist() == [False, True, False, False, False]  # nothing >= 0.9: the single most confident
    assert _policy("threshold", threshold=0.05)(s)[1].tolist() == [True, True, True, True, False]


def test_left_to_right_commits_the_leftmost_candidates():
    s = _inputs([[0.2, 0.9, 0.99, 0.5], [0.9, 0.1, 0.3, 0.2]], candidates=[[False, True, True, True], [True] * 4])
    s.num_to_commit = torch.tensor([2, 1])
    assert _policy("left_to_right")(s).tolist() == [[False, True, True, False], [True, False, False, False]]
    s.positions = torch.tensor([[3, 2, 1, 0], [0, 1, 2, 3]])  # order by canvas slot, not by column
    assert _policy("left_to_right")(s)[0].tolist() == [False, False, True, True]


def test_threshold_prefix_commits_the_leading_run_of_confident_candidates():
    s = _inputs(
        [[0.95, 0.92, 0.5, 0.99], [0.3, 0.99, 0.99, 0.99], [0.1, 0.95, 0.97, 0.2]],
        candidates=[[True] * 4, [True] * 4, [False, True, True, True]],
    )
    commit = _policy("threshold_prefix", threshold=0.9)(s)
    assert commit[0].tolist() == [True, True, False, False]  # the run stops at 0.5, 0.99 after it waits
    assert commit[1].tolist() == [True, False, False, False]  # the leftmost always, even unsure; no run after it
    assert commit[2].tolist() == [False, True, True, False]  # slot 0 is not a candidate: the run starts at 1
    assert _policy("threshold_prefix", threshold=0.05)(s).sum(1).tolist() == [4, 4, 3]


def test_factor_rule_commits_the_ranks_above_one_minus_f_over_r_plus_one():
    # f = 1: rank r needs conf >= 1 - 1/(r+1): 0.5, 0.667, 0.75, 0.8
    s = _inputs([[0.7, 0.9, 0.6, 0.8], [0.3, 0.2, 0.1, 0.05], [0.99, 0.95, 0.9, 0.85]])
    commit = _policy("factor", factor=1.0)(s)
    assert commit[0].tolist() == [False, True, False, True]  # 0.9 >= .5, 0.8 >= .667, 0.7 < .75
    assert commit[1].tolist() == [True, False, False, False]  # none pass: at least the best
    assert commit.sum(1).tolist()[2] == 4
    assert _policy("factor", factor=3.0)(s)[0].sum() == 4  # 1 - 3/5 = 0.4 <= 0.6


def test_entropy_bound_commits_lowest_entropy_first_under_the_bound():
    onehot, two, four = [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.25] * 4  # entropies 0, ln 2, ln 4
    probs = torch.tensor([[four, two, onehot], [four, four, four]])
    s = _inputs([[0.25, 0.5, 1.0], [0.25, 0.25, 0.25]], probs=probs)
    assert _policy("entropy_bound", entropy_bound=0.8)(s)[0].tolist() == [False, True, True]
    assert _policy("entropy_bound", entropy_bound=0.5)(s)[0].tolist() == [False, False, True]
    assert _policy("entropy_bound", entropy_bound=2.1)(s)[0].tolist() == [True, True, True]
    assert _policy("entropy_bound", entropy_bound=0.5)(s)[1].sum() == 1  # all above the bound: at least one


def test_credit_accumulates_while_the_proposal_stays_and_restarts_when_it_changes():
    pol = _policy("credit", threshold=0.8)
    pol.reset(1, 3, "cpu")
    s = _inputs([[0.6, 0.6, 0.6]], x0=[[4, 4, 4]])
    first = pol.scores(s)
    assert (first > 0.6).all()  # the credit of one step already boosts p
    second = pol.scores(s)
    assert (second > first).all()
    changed = pol.scores(_inputs([[0.6, 0.6, 0.6]], x0=[[4, 5, 4]]))
    assert changed[0, 1] == pytest.approx(first[0, 1]) and changed[0, 0] > second[0, 0]
    assert pol(_inputs([[0.6, 0.6, 0.6]], x0=[[4, 4, 4]])).sum() >= 1


def test_first_hitting_commits_one_random_position_per_step(model):
    st = RecordingStreamer()
    cfg = GenerationConfig(gen_length=16, steps=16, block_length=8, policy="first_hitting", seed=3, stop_at_eos=False)
    out = generate(model, PROMPTS[:2], cfg, streamer=st)
    assert out.nfe == [16, 16] and all(len(p) == 1 for ev in st.events for p in ev.positions)
    order = [ev.positions[0][0] - len(PROMPTS[0]) for ev in st.events[:8]]
    assert sorted(order) == list(range(8)) and order != list(range(8))  # a random order of the block
    assert generate(model, PROMPTS[:2], cfg).canvases == out.canvases


PARALLEL = [
    dict(policy="threshold", threshold=0.5),
    dict(policy="factor", factor=2.0),
    dict(policy="entropy_bound", entropy_bound=4.0),
    dict(policy="credit", threshold=0.6),
]


@pytest.mark.parametrize("kw", PARALLEL, ids=lambda k: k["policy"])
def test_parallel_policies_save_forward_passes_and_steps_is_an_upper_bound(model, kw):
    cfg = GenerationConfig(gen_length=32, steps=32, block_length=8, stop_at_eos=False, **kw)
    out = generate(model, PROMPTS, cfg)
    assert all(n <= 32 for n in out.nfe) and sum(out.nfe) < 4 * 32
    assert all(MASK not in c for c in out.canvases)
    capped = generate(model, PROMPTS, GenerationConfig(**{**cfg.__dict__, "steps": 8}))  # 2 steps per block
    assert all(n <= 8 for n in capped.nfe) and all(MASK not in c for c in capped.canvases)


@pytest.mark.parametrize("name", ["threshold", "factor", "entropy_bound", "credit", "first_hitting", "random"])
def test_every_policy_is_deterministic_under_a_seed(model, name):
    cfg = GenerationConfig(gen_length=16, steps=16, block_length=8, temperature=1.0, seed=5, policy=name)
    a, b = generate(model, PROMPTS, cfg), generate(model, PROMPTS, cfg)
    c = generate(model, PROMPTS, GenerationConfig(**{**cfg.__dict__, "seed": 6}))
    assert a.canvases == b.canvases and a.nfe == b.nfe
    assert a.canvases != c.canvases


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"factor": 0.0}, "factor"),
        ({"entropy_bound": -1.0}, "entropy_bound"),
        ({"credit_decay": 1.5}, "credit_decay"),
        ({"credit_gamma": 0.0}, "credit_gamma"),
        ({"credit_alpha": -0.1}, "credit_alpha"),
        ({"cache": "triple"}, "cache"),
        ({"cache_refresh": -1}, "cache_refresh"),
        ({"dtype": "float8"}, "dtype"),
    ],
)
def test_bad_fast_sampling_settings_name_the_field(kw, field):
    with pytest.raises(ConfigError, match=field):
        GenerationConfig(gen_length=8, steps=8, **kw)


# ---- batching: every row is what it is alone, for every policy and cache --------------------------------------

POLICY_CONFIGS = [
    dict(policy="low_confidence", steps=8),
    dict(policy="margin"),
    dict(policy="random"),
    *PARALLEL,
    dict(policy="first_hitting"),
]


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("kw", POLICY_CONFIGS, ids=lambda k: k["policy"])
def test_batch_equals_alone_for_every_policy_and_cache(model, kw, cache):
    for sampling in ({"seed": 0}, {"temperature": 1.0, "seed": 9}):  # greedy (random orders still need a seed)
        cfg = GenerationConfig(**{"gen_length": 16, "steps": 16, "block_length": 4, "cache": cache, **kw, **sampling})
        batch = generate(model, PROMPTS, cfg)
        for i, p in enumerate(PROMPTS):
            alone = generate(model, [p], cfg)
            assert batch.canvases[i] == alone.canvases[0], (i, sampling)
            assert batch.nfe[i] == alone.nfe[0]


def test_rows_progress_independently_through_blocks(model):
    st = RecordingStreamer()
    cfg = GenerationConfig(
        gen_length=32, steps=32, block_length=8, policy="threshold", threshold=0.5, cache="dual", stop_at_eos=False
    )
    out = generate(model, PROMPTS, cfg, streamer=st)
    assert len(set(out.nfe)) > 1  # rows commit different numbers of tokens per step
    assert any(len(set(ev.blocks)) > 1 for ev in st.events)  # ... and sit in different blocks at the same step
    assert len(st.events) == max(out.nfe)  # nobody waits for a slower row


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cfg_and_in_text_masks_with_caches_are_batch_invariant(model, cache):
    prompts = [[5, MASK, 7, MASK], [8, 9], [20, 21, 22, 23, 24, 25, MASK]]
    for kw in ({"cfg_scale": 1.5}, {"policy": "threshold", "threshold": 0.5}):
        cfg = GenerationConfig(gen_length=8, steps=8, block_length=4, cache=cache, stop_at_eos=False, **kw)
        batch = generate(model, prompts, cfg, suffixes=[[40], [], [41, 42]])
        for i, p in enumerate(prompts):
            alone = generate(model, [p], cfg, suffixes=[[[40], [], [41, 42]][i]])
            assert batch.canvases[i] == alone.canvases[0] and MASK not in batch.canvases[i]


# ---- caches -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("kw", [{}, {"policy": "threshold", "threshold": 0.5}, {"temperature": 1.0, "seed": 2}])
def test_a_cache_refreshed_every_step_equals_no_cache(model, cache, kw):
    cfg = GenerationConfig(gen_length=16, steps=16, block_length=4, stop_at_eos=False, **kw)
    ref = generate(model, PROMPTS, cfg)
    cached = generate(model, PROMPTS, GenerationConfig(**{**cfg.__dict__, "cache": cache, "cache_refresh": 1}))
    assert cached.canvases == ref.canvases and cached.nfe == ref.nfe


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("block_length", [4, 8, 6])
def test_block_causal_caches_are_exact(block_causal_model, cache, block_length):
    # model blocks of 4 never line up with the prompts; sampler blocks of 4, 8 or 6
    for kw in ({}, {"policy": "threshold", "threshold": 0.5}, {"temperature": 1.0, "seed": 1}):
        cfg = GenerationConfig(gen_length=24, steps=24, block_length=block_length, stop_at_eos=False, **kw)
        ref = generate(block_causal_model, PROMPTS, cfg)
        cached = generate(block_causal_model, PROMPTS, GenerationConfig(**{**cfg.__dict__, "cache": cache}))
        assert cached.canvases == ref.canvases and cached.nfe == ref.nfe


def test_block_causal_positions_do_not_depend_on_left_padding(block_causal_model):
    x = torch.tensor([[2, 2, 2, 5, 6, 7, 8, 9, 10]])
    am = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    padded = block_causal_model(x, attention_mask=am)[:, 3:]
    alone = block_causal_model(x[:, 3:])
    assert torch.allclose(padded, alone, atol=1e-5)


def test_canvas_cache_window_attends_to_cached_keys_in_place(model):
    x = torch.randint(4, 96, (2, 12))
    full = model(x)
    cache = CanvasCache(12)
    model(x, cache=cache.refresh())
    keys = cache.keys[0]
    slots = torch.tensor([[4, 5, 6], [0, 1, 2]])
    win = model(x.gather(1, slots), position_ids=slots, cache=cache.window(slots))
    assert cache.keys[0] is keys  # written in place, never copied
    assert torch.allclose(win, full.gather(1, slots[..., None].expand(-1, -1, 96)), atol=1e-4)


def test_a_model_without_the_cache_hook_is_refused_with_the_field():
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = tiny_config()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, attention_mask=None, logits_index=None):
            return torch.zeros(x.shape[0], logits_index.shape[1], 64)

    with pytest.raises(ConfigError, match="cache"):
        generate(Plain(), [[5]], GenerationConfig(gen_length=4, steps=4, cache="dual"))


# ---- early exit ---------------------------------------------------------------------------------------------------


def test_eos_in_an_early_block_stops_the_row_and_it_leaves_the_batch(model):
    G = 32

    def eos_for_prompt_20(x, logits, positions):  # only the row holding token 20 writes EOS, at generated position 10
        target = x.shape[1] - G + 10
        hit = (x == 20).any(1)[:, None] & (positions == target)
        is_eos = torch.arange(logits.shape[-1]) == EOS
        logits = logits.masked_fill(is_eos, float("-inf"))
        return logits.masked_fill(hit[..., None] & is_eos, 1e4)

    sizes = []

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, x, **kw):
            sizes.append(x.shape[0])
            return self.inner(x, **kw)

    for cache in ("none", "dual"):
        sizes.clear()
        cfg = GenerationConfig(gen_length=G, steps=G, block_length=8, cache=cache)
        spy = Spy(model)
        spy.supports_canvas_cache = True
        out = generate(spy, PROMPTS, cfg, logits_processors=[eos_for_prompt_20])
        assert out.finished_early[2] and 8 < out.nfe[2] <= 16  # stops within block 1 (2 x 8 steps), not after 32
        gen = out.canvases[2][1:]
        assert out.sequences[2] == gen[:10] and gen[10] == EOS and gen[16:] == [EOS] * 16 and MASK not in gen
        assert out.nfe[0] == out.nfe[1] == out.nfe[3] == G
        assert 3 in sizes[sizes.index(4) :]  # the finished row left the batch
        for i in (0, 1, 3):
            alone = generate(model, [PROMPTS[i]], cfg, logits_processors=[eos_for_prompt_20])
            assert out.canvases[i] == alone.canvases[0] and out.nfe[i] == alone.nfe[0]


def test_bf16_autocast_runs_and_stays_close(model):
    cfg = GenerationConfig(gen_length=16, steps=16, block_length=4, stop_at_eos=False, dtype="bfloat16", cache="dual")
    out = generate(model, PROMPTS, cfg)
    assert all(MASK not in c for c in out.canvases)
    batch_alone = generate(model, [PROMPTS[1]], cfg)
    assert batch_alone.canvases[0] == out.canvases[1]
