"""The continuous (Gaussian, on embeddings) process: its loss and bound by hand on tiny cases, its noise, its
time warping, and the network inputs it needs (dlm.diffusion.continuous)."""

import math

import pytest
import torch
from torch import nn

from dlm.diffusion import DiffusionConfig, build_process
from dlm.diffusion.continuous import embedding_table, noise_input
from dlm.errors import ConfigError, InputError
from dlm.model import Transformer

from ..conftest import tiny_config


class Nearest(nn.Module):
    """A network for hand computations: logits = scale * <input, e(w)> over the normalised embedding table."""

    def __init__(self, weight, scale=1.0):
        super().__init__()
        self.embed_tokens = nn.Embedding.from_pretrained(torch.tensor(weight, dtype=torch.float32))
        self.scale = scale

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, noise_level=None, self_condition=None,
                return_hidden=False):  # fmt: skip
        assert input_ids is None and noise_level is not None
        return self.scale * inputs_embeds @ embedding_table(self).t()


E = [[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]  # normalised x sqrt(2): (0.6, 0.8) r2, (1, 0) r2, (0, 1) r2


def _process(**kw):
    ids = dict(mask_token_id=None, eos_token_id=None, pad_token_id=None, bos_token_id=None)  # 3 tokens: no specials
    return build_process(DiffusionConfig(process="continuous", **kw), tiny_config(vocab_size=3, **ids))


def test_the_loss_is_the_clean_tokens_cross_entropy_worked_by_hand():
    # noise ~1e-6: the network reads each token's own point; <e_i, e_j> = 2 (i = j), 1.2 (0,1), 1.6 (0,2), 0 (1,2)
    process = _process(sigma_range=[1e-6, 2e-6])
    net = Nearest(E)
    ce = [
        math.log(math.exp(2) + math.exp(1.2) + math.exp(1.6)) - 2,  # token 0
        math.log(math.exp(1.2) + math.exp(2) + math.exp(0)) - 2,  # token 1
        math.log(math.exp(1.6) + math.exp(0) + math.exp(2)) - 2,  # token 2
    ]
    x = torch.tensor([[0, 1, 2]])
    out = process.loss(net, x, generator=torch.Generator().manual_seed(0))
    assert out.loss.item() == pytest.approx(sum(ce) / 3, rel=1e-5) and out.num_tokens == 3
    # SFT: the prompt (first token) is clean and not scored; the answer's CE is averaged per row
    sft = process.sft_loss(net, x, torch.tensor([1]), generator=torch.Generator().manual_seed(0))
    assert sft.loss.item() == pytest.approx((ce[1] + ce[2]) / 2, rel=1e-5) and sft.num_tokens == 2


def test_noise_is_gaussian_at_the_scale_of_t_and_leaves_the_prompt_clean():
    process = _process(sigma_range=[0.1, 100.0])
    table = torch.randn(50, 64)
    x0 = torch.randint(0, 50, (4, 400), generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    keep = torch.ones_like(x0, dtype=torch.bool)
    keep[:, :10] = False  # a prompt
    z, sigma = process.add_noise(x0, t, torch.Generator().manual_seed(0), keep, table=table)
    want = [0.1 * 1000**tt for tt in t.tolist()]  # sigma_min (sigma_max / sigma_min)^t
    for b in range(4):
        noise = z[b, 10:] - table[x0[b, 10:]]
        assert noise.std().item() == pytest.approx(want[b], rel=0.03)
        assert torch.equal(z[b, :10], table[x0[b, :10]]) and (sigma[b, :10] == 0).all()
        assert sigma[b, 10:].unique().tolist() == pytest.approx([want[b]], rel=1e-5)
    assert noise_input(torch.tensor([0.0])).item() == pytest.approx(math.log(1e-3) / 4)  # clean reads its own level


def test_the_bound_of_a_network_that_knows_nothing_is_the_closed_form():
    """Uniform logits: x0_hat is the mean point m, so the bound per token is log V (decoder) +
    |e(x) - m|^2 (sigma_min^-2 - sigma_max^-2) / 2 (the integral of sigma^-3) + |e(x)|^2 / (2 sigma_max^2)."""
    process = _process(sigma_range=[0.5, 50.0])
    net = Nearest(E, scale=0.0)
    table = embedding_table(net)
    x = torch.tensor([[0, 1, 2, 2]])
    err = ((table[x[0]] - table.mean(0)) ** 2).sum(-1)
    want = sum(math.log(3) + e * (0.5**-2 - 50.0**-2) / 2 + 2 / (2 * 50.0**2) for e in err.tolist())
    got = process.elbo_nll(net, x, num_samples=4000, generator=torch.Generator().manual_seed(0))
    assert got.item() == pytest.approx(want, rel=0.01)


def test_time_warping_puts_the_draws_where_the_loss_rises():
    process = _process(time_warp=4)
    u = torch.linspace(0, 0.999, 1000)
    assert torch.equal(process.warp(u), u)  # not learned yet: t is uniform
    for t, loss in [(0.1, 0.0), (0.4, 0.1), (0.6, 3.0), (0.9, 3.1)]:  # the loss jumps in the third bin
        process.observe(torch.tensor([t]), torch.tensor([loss]))
    t = process.warp(u)
    share = [((t >= k / 4) & (t < (k + 1) / 4)).float().mean().item() for k in range(4)]
    # mass: 0.9 * rise / 3.1 + 0.1 / 4 per bin: rises 0, 0.1, 2.9, 0.1
    want = [0.025, 0.9 * 0.1 / 3.1 + 0.025, 0.9 * 2.9 / 3.1 + 0.025, 0.9 * 0.1 / 3.1 + 0.025]
    assert share == pytest.approx(want, abs=0.002)
    assert bool((t[1:] >= t[:-1]).all())  # monotone: antithetic draws stay spread
    again = _process(time_warp=4)
    again.load_state_dict(process.state_dict())
    assert torch.equal(again.warp(u), t)


def test_the_network_reads_noise_levels_only_when_built_for_them():
    cfg = tiny_config(vocab_size=40)
    plain = Transformer(cfg)
    with pytest.raises(InputError, match="noise_level"):
        plain(torch.zeros(1, 3, dtype=torch.long), noise_level=torch.zeros(1))
    cfg = _fitted(cfg)
    net = Transformer(cfg)
    assert net.num_parameters() == cfg.num_parameters()
    x = torch.randn(2, 5, cfg.d_model)
    with pytest.raises(InputError, match="noise_level"):
        net(inputs_embeds=x)
    a = net(inputs_embeds=x, noise_level=torch.zeros(2))
    b = net(inputs_embeds=x, noise_level=torch.ones(2))
    assert not torch.allclose(a, b)  # the level changes the output
    # self-conditioning starts switched off (zero projection), so a fresh network gives the same output with it
    assert torch.allclose(a, net(inputs_embeds=x, noise_level=torch.zeros(2), self_condition=torch.randn_like(x)))


def _fitted(cfg):
    from dlm.diffusion import PROCESSES

    return PROCESSES["continuous"].resolve(DiffusionConfig(process="continuous"), cfg)[1]


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(sigma_range=[2.0, 1.0]), "diffusion.sigma_range"),
        (dict(self_condition=1.5), "diffusion.self_condition"),
        (dict(time_warp=1), "diffusion.time_warp"),
        (dict(train_t=[0.3, 1.0]), "diffusion.train_t"),
    ],
)
def test_bad_settings_name_their_field(kw, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        _process(**kw)
