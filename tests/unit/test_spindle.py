"""The spindle process (DiffusionBERT's token-dependent schedule): its loss against a hand computation, its schedule's
shape, its token statistics, and the plain masked bound it reports."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from dlm.diffusion import DiffusionConfig, MaskedDiffusion, SpindleDiffusion, build_process
from dlm.errors import ConfigError, InputError

V, MASK = 6, 5
# token counts 7, 3, 1, 0, 0, 0 over N = 11 tokens: add-one smoothed p = 8/17, 4/17, 2/17, 1/17, 1/17, 1/17, so
# the surprisals above the smallest are 0, log 2, log 4, log 8, log 8, log 8 -> informativeness 0, 1/3, 2/3, 1, 1, 1
COUNTS = [7, 3, 1, 0, 0, 0]


class FixedLogits(nn.Module):
    """Every position gets logits [0, 1, 2, 3, 4, 0] (the last is the mask token, never predicted)."""

    def forward(self, input_ids, attention_mask=None, return_hidden=False):
        row = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 0.0])
        return row.expand(*input_ids.shape, V).clone()


def spindle(lam=0.3, counts=COUNTS):
    p = build_process(DiffusionConfig(process="spindle", spindle_lambda=lam), None, mask_token_id=MASK)
    p.vocab_size = V
    if counts is not None:
        p.set_counts(counts)
    return p


def test_informativeness_and_the_per_token_schedule_match_the_hand_computation():
    p = spindle()
    assert isinstance(p, SpindleDiffusion) and isinstance(p, MaskedDiffusion)
    assert torch.allclose(p.info, torch.tensor([0.0, 1 / 3, 2 / 3, 1.0, 1.0, 1.0]), atol=1e-6)
    x0 = torch.tensor([[0, 1, 2, 3]])
    # mean informativeness 0.5, so c = -1/2, -1/6, 1/6, 1/2; at t = 1/2 sin = 1, cos = 0:
    # alpha_i = 1/2 - 0.3 c_i and w_i = 1 / (1 - alpha_i)
    alpha = torch.tensor([[0.65, 0.55, 0.45, 0.35]])
    t = torch.tensor([0.5])
    assert torch.allclose(p.centred(x0), torch.tensor([[-0.5, -1 / 6, 1 / 6, 0.5]]), atol=1e-6)
    assert torch.allclose(p.mask_prob(x0, t), 1 - alpha, atol=1e-6)
    assert torch.allclose(p.loss_weight(x0, t), 1 / (1 - alpha), atol=1e-5)
    # the rarest token (3) is the likeliest to be masked, the most frequent (0) the least
    assert p.mask_prob(x0, t).argmax() == 3 and p.mask_prob(x0, t).argmin() == 0


def test_spindle_loss_on_a_fixed_mask_matches_the_hand_computation():
    p = spindle()
    x0 = torch.tensor([[0, 1, 2, 3]])
    masked = torch.tensor([[False, True, False, True]])
    xt = x0.masked_fill(masked, MASK)
    total, n = p.weighted_masked_ce(FixedLogits(), xt, x0, masked, p.loss_weight(x0, torch.tensor([0.5])))
    # CE over the five non-mask tokens: logsumexp(0..4) - logit; LSE = log(1 + e + e^2 + e^3 + e^4) = 4.451914
    lse = math.log(sum(math.exp(k) for k in range(5)))
    assert abs(lse - 4.451914) < 1e-6
    ce1, ce3 = lse - 1.0, lse - 3.0  # targets 1 and 3 at the masked positions
    w1, w3 = 1 / 0.45, 1 / 0.65  # their weights from the test above
    hand = (w1 * ce1 + w3 * ce3) / 4  # normalised by the 4 tokens of the row
    assert n == 2
    assert abs(hand - 2.476159) < 1e-6  # (3.451914 / 0.45 + 1.451914 / 0.65) / 4
    assert abs(float(total) / 4 - hand) < 1e-5


def test_loss_is_that_weighted_ce_on_the_drawn_levels_and_masks():
    p = spindle()
    x0 = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2], [3, 3, 2, 1, 0, 0, 0, 4]])
    out = p.loss(FixedLogits(), x0, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    t = p.sample_t(2, g)
    xt, masked = p.add_noise(x0, t, g)
    total, n = p.weighted_masked_ce(FixedLogits(), xt, x0, masked, p.loss_weight(x0, t))
    assert out.num_masked == n and out.num_tokens == 16
    assert torch.allclose(out.loss, total / 16)


def test_lambda_zero_is_the_linear_masked_process_and_every_allowed_lambda_is_a_schedule():
    p0 = spindle(lam=0.0)
    x0 = torch.tensor([[0, 1, 2, 3, 4]])
    t = torch.tensor([0.3])
    assert torch.allclose(p0.mask_prob(x0, t), torch.full((1, 5), 0.3))
    assert torch.allclose(p0.loss_weight(x0, t), torch.full((1, 5), 1 / 0.3))
    # at lambda = 1/pi, one rare token among frequent ones (c = 0.9 against -0.1): alpha still falls from 1 to 0
    p = spindle(lam=1 / math.pi, counts=[1000, 0, 0, 0, 0, 0])
    grid = torch.linspace(0, 1, 201)
    x = torch.tensor([[0] * 9 + [1]]).expand(201, 10)
    alpha, _ = p.alpha(x, grid)
    assert torch.allclose(p.centred(x[:1]), torch.tensor([[-0.1] * 9 + [0.9]]), atol=1e-6)
    assert (alpha >= -1e-6).all() and (alpha <= 1 + 1e-6).all()
    assert (alpha[1:] <= alpha[:-1] + 1e-6).all()
    assert torch.allclose(alpha[0], torch.ones(10)) and torch.allclose(alpha[-1], torch.zeros(10), atol=1e-6)


def test_rare_tokens_are_masked_earlier_in_samples():
    p = spindle()
    x0 = torch.tensor([[0, 3] * 8]).expand(4000, 16)
    _, masked = p.add_noise(x0, torch.full((4000,), 0.3), torch.Generator().manual_seed(0))
    frequent, rare = masked[:, 0::2].float().mean(), masked[:, 1::2].float().mean()
    # alpha = 0.7 -/+ 0.3 sin(0.3 pi) * 0.5: masked with 0.1787 (token 0) and 0.4213 (token 3)
    assert abs(float(frequent) - 0.1787) < 0.01 and abs(float(rare) - 0.4213) < 0.01


def test_token_counts_come_from_the_training_split_and_travel_in_the_state():
    p = spindle(counts=None)
    with pytest.raises(InputError, match="token_counts"):
        p.loss(FixedLogits(), torch.tensor([[0, 1]]))

    class Split:
        tokens = np.array([0] * 7 + [1] * 3 + [2], dtype=np.uint16)

    p.fit(Split())
    assert p.counts.tolist() == COUNTS
    q = spindle(counts=None)
    q.load_state_dict(p.state_dict())
    assert torch.equal(q.info, p.info) and q.state_dict() == {"token_counts": COUNTS}


def test_heldout_bound_is_the_plain_masked_elbo():
    p = spindle()
    plain = MaskedDiffusion(p.config, MASK, vocab_size=V)
    x0 = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]])
    a = p.elbo_nll(FixedLogits(), x0, 4, generator=torch.Generator().manual_seed(3))
    b = plain.elbo_nll(FixedLogits(), x0, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and float(a[0]) > 0


@pytest.mark.parametrize(
    "changes, field",
    [({"spindle_lambda": 0.4}, "diffusion.spindle_lambda"), ({"schedule": "cosine"}, "diffusion.schedule")],
)
def test_bad_spindle_settings_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        build_process(DiffusionConfig(process="spindle", **changes), None, mask_token_id=MASK)
