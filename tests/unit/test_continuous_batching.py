"""Continuous batching (Denoiser): rows that join a running batch between steps, and rows that are cancelled,
leave every other row's tokens exactly as if each had run alone."""

import pytest
import torch

from dlm.sampling import GenerationConfig, generate
from dlm.sampling.generate import Denoiser

from .test_fast_sampling import _sharp

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16], [20], [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41]]
SETTINGS = [
    dict(),
    dict(policy="threshold", threshold=0.5, cache="dual"),
    dict(policy="credit", threshold=0.6, cache="prefix"),
    dict(temperature=1.0, seed=3, cache="dual"),
    dict(policy="random", seed=1, cfg_scale=1.0, cache="dual"),
    dict(policy="entropy_bound", entropy_bound=4.0, cache="none", temperature=0.7, seed=5),
]


@pytest.fixture(scope="module")
def model():
    return _sharp()


def _cfg(**kw):
    base = dict(gen_length=12, steps=12, block_length=4)
    return GenerationConfig(**{**base, **kw})


def _alone(model, cfg, prompt):
    out = generate(model, [prompt], cfg)
    return out.sequences[0], out.nfe[0]


@pytest.mark.parametrize("kw", SETTINGS, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()) or "default")
def test_rows_joining_mid_flight_match_running_alone(model, kw):
    cfg = _cfg(**kw)
    d = Denoiser(model, cfg)
    h0 = d.add(PROMPTS[:2])  # two rows start
    d.step()
    d.step()
    h1 = d.add([PROMPTS[2]])  # a shorter prompt joins after 2 steps
    d.step()
    h2 = d.add([PROMPTS[3]])  # a longer one joins later: the canvas grows on the left for everyone
    while d.live:
        d.step()
    got = {h: d.pop_result(h) for h in h0 + h1 + h2}
    for h, p in zip(h0 + h1 + h2, PROMPTS):
        seq, nfe = _alone(model, cfg, p)
        assert got[h]["sequence"] == seq, (h, p)
        assert got[h]["nfe"] == nfe


def test_cancelled_rows_leave_and_the_rest_is_unchanged(model):
    cfg = _cfg(policy="threshold", threshold=0.5, cache="dual")
    d = Denoiser(model, cfg)
    hs = d.add(PROMPTS)
    d.step()
    d.cancel([hs[1], hs[3]])
    assert d.live == 2
    while d.live:
        d.step()
    for h in (hs[1], hs[3]):
        with pytest.raises(KeyError):
            d.pop_result(h)
    for h in (hs[0], hs[2]):
        assert d.pop_result(h)["sequence"] == _alone(model, cfg, PROMPTS[h])[0]


def test_a_denoiser_is_reusable_after_it_drains(model):
    cfg = _cfg()
    d = Denoiser(model, cfg)
    (a,) = d.add([PROMPTS[0]])
    while d.live:
        d.step()
    (b,) = d.add([PROMPTS[1]])
    while d.live:
        d.step()
    assert d.pop_result(a)["sequence"] == _alone(model, cfg, PROMPTS[0])[0]
    assert d.pop_result(b)["sequence"] == _alone(model, cfg, PROMPTS[1])[0]
    assert torch.is_tensor(d.rows.tokens) and d.live == 0
