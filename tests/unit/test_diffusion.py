import math

import pytest
import torch

from dlm.diffusion import DiffusionConfig, MaskedDiffusion, get_schedule
from dlm.errors import ConfigError, InputError

from ..conftest import MASK


class FixedLogits(torch.nn.Module):
    """A 'model' returning given logits, and recording what it was fed."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.seen = []
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, attention_mask=None, **kw):
        self.seen.append(x.clone())
        return self.logits[: x.shape[0], : x.shape[1]]


def _log_softmax_row(row, mask_id):
    vals = [v for i, v in enumerate(row) if i != mask_id]
    m = max(vals)
    lse = m + math.log(sum(math.exp(v - m) for v in vals))
    return [v - lse for v in row]


@pytest.mark.parametrize("schedule", ["linear", "cosine", "loglinear"])
def test_loss_equals_hand_computed_value(schedule):
    torch.manual_seed(0)
    V, eps = 6, 1e-3
    logits = torch.randn(2, 3, V)
    x0 = torch.tensor([[1, 2, 4], [5, 0, 1]])
    masked = torch.tensor([[True, False, True], [False, False, True]])
    t = torch.tensor([0.3, 0.8])
    diff = MaskedDiffusion(DiffusionConfig(schedule=schedule), mask_token_id=MASK)
    got = float(diff.weighted_loss(logits, x0, masked, t, num_tokens=6))

    def w(tt):
        if schedule == "linear":
            return 1.0 / tt
        if schedule == "cosine":
            return (math.pi / 2) * math.tan(math.pi / 2 * (1 - tt))
        return (1 - eps) / ((1 - eps) * tt)

    expected = 0.0
    for b in range(2):
        for i in range(3):
            if masked[b, i]:
                lp = _log_softmax_row(logits[b, i].tolist(), MASK)
                expected += -lp[int(x0[b, i])] * w(float(t[b]))
    assert got == pytest.approx(expected / 6, rel=1e-5)


@pytest.mark.parametrize("name", ["linear", "cosine", "loglinear"])
def test_schedule_weight_is_minus_alpha_prime_over_one_minus_alpha(name):
    s = get_schedule(name)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64, requires_grad=True)
    a = s.alpha(t)
    (grad,) = torch.autograd.grad(a.sum(), t)
    assert torch.allclose(s.weight(t.detach()), -grad / (1 - a.detach()), rtol=1e-6)
    assert s.alpha(torch.tensor(0.0)) == pytest.approx(1.0, abs=1e-6)
    assert float(s.alpha(torch.tensor(1.0))) < 1e-2


def test_antithetic_times_are_evenly_spread_and_clipped():
    diff = MaskedDiffusion(DiffusionConfig(eps=0.01), mask_token_id=MASK)
    t = diff.sample_t(8, torch.Generator().manual_seed(0))
    assert t.min() >= 0.01 and t.max() <= 1.0
    u = ((t - 0.01) / 0.99).sort().values
    gaps = u[1:] - u[:-1]
    assert torch.allclose(gaps, torch.full_like(gaps, 1 / 8), atol=1e-5)


def test_masking_rate_follows_the_schedule_and_respects_maskable():
    diff = MaskedDiffusion(DiffusionConfig(), mask_token_id=MASK)
    x0 = torch.randint(4, 60, (4, 20000))
    t = torch.tensor([0.1, 0.5, 0.9, 0.3])
    maskable = torch.ones_like(x0, dtype=torch.bool)
    maskable[:, :100] = False
    xt, masked = diff.add_noise(x0, t, torch.Generator().manual_seed(1), maskable)
    rates = masked[:, 100:].float().mean(1)
    assert torch.allclose(rates, t, atol=0.02)
    assert not masked[:, :100].any()
    assert (xt[masked] == MASK).all() and torch.equal(xt[~masked], x0[~masked])


def test_sft_loss_never_masks_the_prompt_and_normalises_per_answer():
    V = 8
    logits = torch.zeros(2, 6, V)  # uniform over the V-1 non-mask tokens
    model = FixedLogits(logits)
    diff = MaskedDiffusion(DiffusionConfig(schedule="linear"), mask_token_id=MASK)
    ids = torch.tensor([[4, 5, 6, 7, 1, 1], [4, 5, 6, 7, 5, 1]])
    prompt_lengths = torch.tensor([2, 4])
    out = diff.sft_loss(model, ids, prompt_lengths, generator=torch.Generator().manual_seed(0))
    seen = model.seen[0]
    assert (seen[0, :2] == ids[0, :2]).all() and (seen[1, :4] == ids[1, :4]).all()
    # hand value: each masked answer token costs log(V-1) * 1/t, divided by the answer length, mean over rows
    g = torch.Generator().manual_seed(0)
    t = diff.sample_t(2, g)
    masked = seen == MASK
    expected = (
        sum(float(masked[b].sum()) * math.log(V - 1) / float(t[b]) / (6 - int(prompt_lengths[b])) for b in range(2)) / 2
    )
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)


def test_suffix_rows_mask_a_nonempty_suffix_of_the_answer_and_cost_its_cross_entropy():
    """diffusion.suffix_mask_prob: a chosen row's masked positions are exactly a non-empty suffix of its answer
    (prompt and the answer before the cut clean), at t = 1: the loss is the suffix's CE (linear w(1) = 1) over the
    answer length, by hand with uniform logits."""
    V = 8
    B, L = 64, 10
    model = FixedLogits(torch.zeros(B, L, V))
    diff = MaskedDiffusion(DiffusionConfig(schedule="linear", suffix_mask_prob=0.999), mask_token_id=MASK)
    ids = torch.randint(4, V, (B, L))
    prompt_lengths = torch.randint(1, 6, (B,))
    out = diff.sft_loss(model, ids, prompt_lengths, generator=torch.Generator().manual_seed(0))
    masked = model.seen[0] == MASK
    cuts = []
    for b in range(B):
        m = masked[b].nonzero()[:, 0]
        assert m.numel() >= 1 and int(m[0]) >= int(prompt_lengths[b])  # never the prompt
        assert torch.equal(m, torch.arange(int(m[0]), L))  # a suffix: from the cut to the end
        cuts.append(int(m[0]) - int(prompt_lengths[b]))
    assert len(set(cuts)) > 3  # the cut is drawn, not fixed
    expected = sum(float(masked[b].sum()) * math.log(V - 1) / (L - int(prompt_lengths[b])) for b in range(B)) / B
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)
    off = MaskedDiffusion(DiffusionConfig(schedule="linear"), mask_token_id=MASK)  # default: unchanged draws
    off.sft_loss(model, ids, prompt_lengths, generator=torch.Generator().manual_seed(0))
    diff_half = MaskedDiffusion(DiffusionConfig(schedule="linear", suffix_mask_prob=0.0), mask_token_id=MASK)
    diff_half.sft_loss(model, ids, prompt_lengths, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.seen[1], model.seen[2])
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="suffix_mask_prob"):
            DiffusionConfig(suffix_mask_prob=bad)
    with pytest.raises(ConfigError, match="the masked process only"):
        DiffusionConfig(process="uniform", suffix_mask_prob=0.5)


def test_random_length_truncation_shortens_the_batch():
    model = FixedLogits(torch.zeros(2, 32, 8))
    diff = MaskedDiffusion(DiffusionConfig(random_length_prob=1.0), mask_token_id=MASK)
    diff.loss(model, torch.randint(4, 8, (2, 32)), generator=torch.Generator().manual_seed(3))
    assert model.seen[0].shape[1] < 32
    diff0 = MaskedDiffusion(DiffusionConfig(random_length_prob=0.0), mask_token_id=MASK)
    diff0.loss(model, torch.randint(4, 8, (2, 32)), generator=torch.Generator().manual_seed(3))
    assert model.seen[1].shape[1] == 32


def test_elbo_of_a_uniform_model_is_length_times_log_vocab():
    V, L = 10, 64
    model = FixedLogits(torch.zeros(64, L, V))
    diff = MaskedDiffusion(DiffusionConfig(), mask_token_id=MASK)
    nll = diff.elbo_nll(model, torch.randint(4, V, (64, L)), num_samples=16, generator=torch.Generator().manual_seed(0))
    expected = L * math.log(V - 1) * (1 - 1e-3)
    assert float(nll.mean()) == pytest.approx(expected, rel=0.03)


def test_log_likelihood_is_exact_for_uniform_model_and_seeded():
    V = 10
    model = FixedLogits(torch.zeros(16, 12, V))
    diff = MaskedDiffusion(DiffusionConfig(), mask_token_id=MASK)
    ll = diff.log_likelihood(
        model, [4, 5, 6], [7, 8, 9, 4], mc_samples=16, batch_size=8, generator=torch.Generator().manual_seed(0)
    )
    assert ll == pytest.approx(-4 * math.log(V - 1), rel=1e-6)
    with pytest.raises(InputError, match="answer_ids"):
        diff.log_likelihood(model, [4], [], mc_samples=4)


def test_log_likelihood_prefers_the_answer_a_trained_model_predicts():
    V = 10
    logits = torch.zeros(8, 5, V)
    logits[:, :, 7] = 5.0  # the model believes every token is 7
    model = FixedLogits(logits)
    diff = MaskedDiffusion(DiffusionConfig(), mask_token_id=MASK)
    good = diff.log_likelihood(model, [4, 5], [7, 7, 7], mc_samples=8, generator=torch.Generator().manual_seed(0))
    bad = diff.log_likelihood(model, [4, 5], [8, 8, 8], mc_samples=8, generator=torch.Generator().manual_seed(0))
    assert good > bad


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"schedule": "quadratic"}, "schedule"),
        ({"eps": 0.0}, "eps"),
        ({"random_length_prob": 2.0}, "random_length_prob"),
        ({"token_reweighting": [0.0, 1.0]}, "token_reweighting"),
        ({"token_reweighting": [0.25, -1.0]}, "token_reweighting"),
        ({"token_reweighting": [0.25]}, "token_reweighting"),
    ],
)
def test_bad_diffusion_config_names_the_field(kw, field):
    with pytest.raises(ConfigError, match=field):
        DiffusionConfig(**kw)


def test_training_learns_to_use_context():
    """Sequences where each token is its left neighbour + 1: unigram perplexity is V, a model that reads
    its context reaches ~1. The masked-diffusion loss must get there."""
    from dlm.model import ModelConfig, Transformer

    torch.manual_seed(0)
    V = 40
    model = Transformer(
        ModelConfig(vocab_size=V + 4, d_model=64, n_layers=2, n_heads=4, max_seq_len=64, mask_token_id=MASK)
    )
    diff = MaskedDiffusion(DiffusionConfig(), mask_token_id=MASK)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def batch(n=32, L=32):
        return 4 + (torch.randint(0, V, (n, 1), generator=g) + torch.arange(L)) % V

    def ppl():
        nll = diff.elbo_nll(model, batch(64), 8, generator=torch.Generator().manual_seed(1)).mean() / 32
        return math.exp(float(nll))

    before = ppl()
    for _ in range(200):
        diff.loss(model, batch(), generator=g).loss.backward()
        opt.step()
        opt.zero_grad()
    after = ppl()
    assert before > 20 and after < 2.0, (before, after)


def test_token_reweighting_by_hand():
    """MGDM's focal reweighting: alpha * (1 - e^-CE)^gamma * CE. At CE = ln 2, 1 - e^-CE = 1/2."""
    from dlm.diffusion.fused_ce import token_reweight

    ce = torch.tensor([math.log(2.0), 0.0])
    assert torch.allclose(token_reweight(ce, 0.25, 1.0), torch.tensor([0.25 * 0.5 * math.log(2.0), 0.0]))
    assert torch.allclose(token_reweight(ce, 0.25, 2.0), torch.tensor([0.25 * 0.25 * math.log(2.0), 0.0]))
    assert torch.allclose(token_reweight(ce, 1.0, 0.0), ce)  # gamma 0, alpha 1: plain CE


FOCAL = [None, (0.25, 1.0), (0.5, 2.0), (1.0, 0.5)]


@pytest.mark.parametrize("autocast,focal", [(False, f) for f in FOCAL] + [(True, None), (True, (0.25, 1.0))])
def test_fused_head_cross_entropy_matches_plain_logits(autocast, focal):
    from dlm.diffusion.fused_ce import chunked_cross_entropy, token_reweight, weighted_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(37, 16, requires_grad=True)
    w = (torch.randn(50, 16) * 0.3).requires_grad_()
    t = torch.randint(4, 50, (37,))
    rw = torch.rand(37)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        fused = weighted_cross_entropy(h, w, t, rw, MASK, chunk=8, focal=focal)
    (gh, gw) = torch.autograd.grad(fused * 2.0, (h, w))
    with ctx:
        logits = (h @ w.t()).float()
    ce = torch.nn.functional.cross_entropy(
        logits.masked_fill(torch.arange(50) == MASK, float("-inf")), t, reduction="none"
    )  # autograd differentiates the reweighting; the fused kernel applies its derivative by hand
    ref = ((token_reweight(ce, *focal) if focal else ce) * rw).sum()
    (rh, rw_) = torch.autograd.grad(ref * 2.0, (h, w))
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
    assert torch.allclose(fused, ref, **tol)
    assert torch.allclose(gh, rh, **tol) and torch.allclose(gw, rw_, **tol)
    with torch.no_grad(), ctx:
        per_row = chunked_cross_entropy(h, w, t, MASK, chunk=5)
    assert torch.allclose(((token_reweight(per_row, *focal) if focal else per_row) * rw).sum(), ref, **tol)


@pytest.mark.parametrize("focal", [None, [0.25, 1.0]])
def test_fused_and_plain_training_losses_agree(focal):
    from dlm.model import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=44, d_model=32, n_layers=2, n_heads=4, mask_token_id=MASK))
    diff = MaskedDiffusion(DiffusionConfig(token_reweighting=focal), mask_token_id=MASK)
    x = torch.randint(4, 44, (4, 24))
    a = diff.loss(model, x, generator=torch.Generator().manual_seed(0)).loss
    diff.fused = False
    b = diff.loss(model, x, generator=torch.Generator().manual_seed(0)).loss
    assert torch.allclose(a, b, rtol=1e-5)
    ga = torch.autograd.grad(a, model.embed_tokens.weight)[0]
    gb = torch.autograd.grad(b, model.embed_tokens.weight)[0]
    assert torch.allclose(ga, gb, atol=1e-6)
    if focal:  # and the reweighting changed the loss: the same batch without it
        plain = MaskedDiffusion(DiffusionConfig(), mask_token_id=MASK)
        c = plain.loss(model, x, generator=torch.Generator().manual_seed(0)).loss
        assert not torch.allclose(a, c, rtol=1e-2)


def test_sft_diffusion_learns_to_use_its_prompt():
    """The smallest prompt-conditioned task: copy one prompt token (rows `n x n n SEP | x EOS EOS EOS`). dlm's
    masked-diffusion SFT loss (ELBO weights, the trainer's gradient clipping at 1.0) must teach a 2-layer network
    to write x with the whole answer masked, as a diffusion model's first step must. Measured at writing: 100 %
    of 512 held-out rows after 400 steps (chance 1/30)."""
    from dlm.diffusion import DiffusionConfig, build_process
    from dlm.model import ModelConfig, Transformer

    V, MASK, EOS, SEP = 40, 39, 38, 35
    g = torch.Generator().manual_seed(1)

    def rows(size):
        x = torch.randint(0, 30, (size,), generator=g)
        n = torch.randint(0, 30, (size, 3), generator=g)
        ids = torch.cat([n[:, :1], x[:, None], n[:, 1:], torch.full((size, 1), SEP), x[:, None],
                         torch.full((size, 3), EOS)], 1)  # fmt: skip
        return ids, torch.full((size,), 5)

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, d_model=64, n_layers=2, n_heads=4, max_seq_len=16, mask_token_id=MASK,
                      eos_token_id=EOS, pad_token_id=EOS, attention="bidirectional")  # fmt: skip
    net = Transformer(cfg)
    proc = build_process(DiffusionConfig(), cfg, mask_token_id=MASK)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for _ in range(400):
        ids, prompt_lengths = rows(64)
        loss = proc.sft_loss(net, ids, prompt_lengths, generator=g).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    ids, _ = rows(512)
    masked = ids.clone()
    masked[:, 5:] = MASK
    with torch.no_grad():
        accuracy = (net(masked)[:, 5].argmax(-1) == ids[:, 5]).float().mean()
    assert accuracy > 0.9
