"""Sampling a block-causal (block-diffusion) network: the loop's blocks sit on the network's block boundaries,
the exact block cache (cache="block") gives the uncached logits at every step for every unmask policy, rows are
batch-invariant and may join or leave mid-flight, and the cache refuses networks it is not exact for."""

import pytest
import torch

from dlm.diffusion import POLICIES
from dlm.errors import ConfigError
from dlm.sampling import GenerationConfig, generate
from dlm.sampling.generate import Denoiser

from .test_fast_sampling import _sharp

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16], [20], [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41]]


@pytest.fixture(scope="module")
def model():
    return _sharp(attention="block_causal", block_size=4)


def _cfg(**kw):
    return GenerationConfig(**{**dict(gen_length=12, steps=12, block_length=4), **kw})


def run_recording(model, prompts, cfg):
    """generate() step by step, keeping what each step's reverse transition reads: the query slots and the
    logits at the real candidates (the rest of a row's query slots is right-alignment filler, never read)."""
    d, steps = Denoiser(model, cfg), []
    transition = d.reverse.step

    def recorded(ctx):
        steps.append((ctx.positions.clone(), ctx.logits[ctx.candidates].clone()))
        return transition(ctx)

    d.reverse.step = recorded
    handles = d.add(prompts)
    while d.live:
        d.step()
    return [d.pop_result(h) for h in handles], steps


@pytest.fixture(scope="module")
def shifted():
    return _sharp(attention="block_causal", block_size=4, shift_logits=True)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_block_cache_gives_the_uncached_logits_at_every_step(model, policy):
    check_cache_exact(model, policy)


@pytest.mark.parametrize("policy", ["low_confidence", "threshold"])
def test_block_cache_is_exact_for_shifted_families(shifted, policy):
    """Logits at i-1 predict token i: a block's first token is read from the last slot of the clean block before
    it, which the window recomputes as a query without recomputing its block."""
    check_cache_exact(shifted, policy)


def check_cache_exact(model, policy):
    kw = dict(policy=policy, threshold=0.5, seed=3, temperature=0.0 if policy != "random" else 1.0)
    ref, ref_steps = run_recording(model, PROMPTS, _cfg(cache="none", **kw))
    got, got_steps = run_recording(model, PROMPTS, _cfg(cache="block", **kw))
    assert got == ref
    assert len(got_steps) == len(ref_steps) > 0
    for (s_ref, l_ref), (s_got, l_got) in zip(ref_steps, got_steps):
        assert torch.equal(s_ref, s_got)
        torch.testing.assert_close(l_got, l_ref, rtol=0, atol=2e-5)


def test_blocks_sit_on_the_network_block_boundaries(model):
    """A 5-token prompt and block 4: the first block is positions 5..7 (cut short to the boundary at 8), then
    8..11, 12..15, 16 (12 generated tokens over four blocks)."""
    seen = []
    record = lambda e: seen.append((e.blocks[0], e.positions[0]))  # noqa: E731
    generate(model, [[50, 51, 52, 53, 54]], _cfg(steps=12), streamer=record)
    by_block = {}
    for block, positions in seen:
        by_block.setdefault(block, []).extend(positions)
    assert {b: sorted(p) for b, p in by_block.items()} == {
        0: [5, 6, 7],
        1: [8, 9, 10, 11],
        2: [12, 13, 14, 15],
        3: [16],
    }


@pytest.mark.parametrize("kw", [dict(), dict(temperature=1.0, seed=7), dict(policy="threshold", threshold=0.4)])
def test_batch_equals_alone_with_the_block_cache(model, kw):
    cfg = _cfg(cache="block", **kw)
    batch = generate(model, PROMPTS, cfg)
    for i, p in enumerate(PROMPTS):
        alone = generate(model, [p], cfg)
        assert batch.sequences[i] == alone.sequences[0] and batch.nfe[i] == alone.nfe[0]


def test_rows_join_and_leave_mid_flight_with_the_block_cache(model):
    cfg = _cfg(cache="block", policy="threshold", threshold=0.5)
    d = Denoiser(model, cfg)
    h0 = d.add(PROMPTS[:2])
    d.step()
    h1 = d.add([PROMPTS[2]])
    d.step()
    d.cancel([h0[0]])
    h2 = d.add([PROMPTS[3]])  # longer: every canvas grows on the left
    while d.live:
        d.step()
    for h, p in zip([h0[1], *h1, *h2], PROMPTS[1:]):
        assert d.pop_result(h)["sequence"] == generate(model, [p], cfg).sequences[0]


def test_in_prompt_masks_are_filled_exactly_with_the_block_cache(model):
    mask = model.config.mask_token_id
    prompt, suffix = [5, mask, 7, 8, 9], [11, mask, 13]
    ref = generate(model, [prompt], _cfg(), suffixes=[suffix])
    got = generate(model, [prompt], _cfg(cache="block"), suffixes=[suffix])
    assert got.canvases == ref.canvases and mask not in got.canvases[0]


def test_block_cache_refuses_a_bidirectional_network():
    with pytest.raises(ConfigError, match="cache.*block_causal"):
        generate(_sharp(), [[1, 2]], _cfg(cache="block"))


def test_a_block_model_refuses_a_length_that_is_not_whole_blocks():
    from dlm.builtin import builtin_path
    from dlm.tokenizer import DLMTokenizer
    from tests.conftest import tiny_lm

    lm = tiny_lm(DLMTokenizer.from_dir(builtin_path("builtin")), "block_causal", gen=_cfg(cache="block"))
    assert len(lm.generate("x = 1", gen_length=8)[0].tokens) <= 8
    with pytest.raises(ConfigError, match="gen_length.*multiple of 4"):
        lm.generate("x = 1", gen_length=6)
