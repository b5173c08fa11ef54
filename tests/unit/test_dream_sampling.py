"""Dream's shifted prediction through dlm's sampler equals Dream's own published sampling loop.

The reference below is Dream's `diffusion_generate` (generation_utils.py, `_sample`) with alg="maskgit_plus",
temperature 0, alg_temp None, batch 1 and no padding, written out here, driving the independent float64
forward of tests/foreign.py. Settings where the two loops are defined the same way:
- Dream commits int(n_masked * (1 - s/t)) tokens at step i on the time grid linspace(1, eps, steps + 1), all the
  rest at the last step; dlm commits gen_length / steps per step. With eps = 0 and exact arithmetic Dream's count
  is n_masked / (steps - i), i.e. the same even split whenever steps divides gen_length. (With Dream's default
  eps = 1e-3, or its float32 grid, int() moves single tokens between steps: 8 tokens over 4 steps become
  [1, 2, 2, 3].) The reference therefore computes the grid with fractions.Fraction and eps = 0.
- Dream does not remove the mask token from the distribution; dlm never proposes it. The reference passes
  Dream's `generation_logits_hook_func` that sets the mask logit to -inf, which makes the two the same.
- temperature 0: Dream's confidence is max softmax prob and x0 its argmax = dlm's low_confidence policy.
- One block over the whole answer (Dream has no semi-AR blocks); no early stop at EOS (Dream never stops).
"""

from fractions import Fraction

import pytest
import torch

from dlm.hub import from_pretrained
from dlm.sampling import GenerationConfig, generate

from ..foreign import dream_config, qwen2_reference, write_dream

MASK = 95


def dream_maskgit_plus(state, cfg, prompt, *, max_new_tokens, steps, eps=Fraction(0)):
    x = torch.tensor([list(prompt) + [MASK] * max_new_tokens])
    grid = [1 - (1 - eps) * Fraction(i, steps) for i in range(steps + 1)]  # linspace(1, eps, steps + 1)

    def logits_hook(step, x, logits):  # Dream's generation_logits_hook_func: never propose the mask token
        logits[..., MASK] = float("-inf")
        return logits

    for i in range(steps):
        mask_index = x == MASK
        logits = qwen2_reference(state, cfg, x, causal=False)
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # position j is predicted at j - 1
        logits = logits_hook(i, x, logits)
        confidence, x0 = torch.softmax(logits[mask_index], dim=-1).max(dim=-1)
        t, s = grid[i], grid[i + 1]
        n_masked = int(mask_index.sum())
        k = int(n_masked * (1 - s / t)) if i < steps - 1 else n_masked
        full_confidence = torch.full(x.shape, float("-inf"), dtype=confidence.dtype)
        full_confidence[mask_index] = confidence
        if k > 0:
            _, transfer = torch.topk(full_confidence, k)
            proposal = torch.full_like(x, MASK)
            proposal[mask_index] = x0
            x[0, transfer[0]] = proposal[0, transfer[0]]
    return x[0].tolist()


@pytest.mark.parametrize("gen_length, steps", [(12, 4), (8, 8)])
def test_dlm_sampler_reproduces_dreams_maskgit_plus_loop(tmp_path, gen_length, steps):
    state = write_dream(tmp_path / "dream", seed=3)
    model = from_pretrained(tmp_path / "dream")
    assert model.config.shift_logits and model.config.mask_token_id == MASK
    prompt = [7, 41, 13, 66, 29]
    want = dream_maskgit_plus(state, dream_config(), prompt, max_new_tokens=gen_length, steps=steps)
    cfg = GenerationConfig(
        gen_length=gen_length, steps=steps, temperature=0.0, policy="low_confidence", stop_at_eos=False,
        trim_at_eos=False,
    )  # fmt: skip
    got = generate(model, [prompt], cfg).canvases[0]
    assert got == want
    assert MASK not in got

    model.config.shift_logits = False  # the same network read without the shift fills different tokens
    assert generate(model, [prompt], cfg).canvases[0] != want


def test_the_reference_schedule_is_dreams_float_schedule_where_they_agree():
    """Sanity for the comment above: Dream's float32 grid with eps=1e-3 differs from the even split, the exact
    eps=0 grid does not."""

    def counts(grid_fn, n, steps):
        out, left = [], n
        for i in range(steps):
            t, s = grid_fn(i), grid_fn(i + 1)
            k = int(left * (1 - s / t)) if i < steps - 1 else left
            out.append(k)
            left -= k
        return out

    grid32 = torch.linspace(1, 1e-3, 5)
    assert counts(lambda i: float(grid32[i]), 8, 4) == [1, 2, 2, 3]
    assert counts(lambda i: 1 - Fraction(i, 4), 8, 4) == [2, 2, 2, 2]
