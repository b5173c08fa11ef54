"""The certainty objective (dParallel's certainty forcing) checked by hand on a tiny case: the drawn mask and its
complement, w · CE per answer length per row, plus the entropy at masked positions the student gets right."""

import pytest
import torch
import torch.nn.functional as F

from dlm.errors import ConfigError
from dlm.model import ModelConfig, Transformer
from dlm.training.config import load_run_config
from dlm.training.objectives import build_objective


def _setup(*overrides):
    torch.manual_seed(0)
    mc = ModelConfig(vocab_size=24, d_model=32, n_layers=2, n_heads=4, mask_token_id=23)
    run = load_run_config(None, ["train.objective=certainty", *overrides])
    obj = build_objective(run, mc)
    return obj, Transformer(obj.model_config)


@torch.no_grad()
def by_hand(net, proc, ids, plen, seed, beta, complementary, ordered=False, cap=1.0):
    g = torch.Generator().manual_seed(seed)
    answer = torch.arange(ids.shape[1])[None] >= plen[:, None]
    t = (proc.sample_t(ids.shape[0], g) * cap).clamp(min=1e-3)
    if ordered:  # the answer's last round(n t + 1 - v) tokens, v the draw at slot 0 (suffix_uniforms)
        u = torch.rand(ids.shape, generator=g)
        n = answer.sum(1)
        k = torch.arange(ids.shape[1])[None] - plen[:, None]
        masked = answer & ((n[:, None] - 1 - k + u[:, :1]) / n[:, None] < t[:, None])
        xt = ids.masked_fill(masked, 23)
    else:
        xt, masked = proc.add_noise(ids, t, g, answer)
    n = answer.sum(1).float()
    views = [(xt, masked, (1 / t)[:, None] / n[:, None])]
    if complementary:
        kept = answer & ~masked
        views.append((ids.masked_fill(kept, 23), kept, (1 / (1 - t))[:, None] / n[:, None]))
    total = 0.0
    for x, m, w in views:
        logits = net(x).float()
        logits[..., 23] = float("-inf")
        logp = F.log_softmax(logits, -1)
        ce = -logp.gather(-1, ids[..., None]).squeeze(-1)
        total += float((ce * w * m).sum() / ids.shape[0])
        right = (logits.argmax(-1) == ids) & m
        ent = -(logp.exp() * logp.clamp(min=-1e4)).sum(-1)
        total += beta * float((ent * right).sum() / max(int(right.sum()), 1))
    return total / len(views)


@pytest.mark.parametrize("beta, complementary, ordered", [(0, False, 0), (1, False, 0), (0.5, True, 0), (0.5, True, 1)])
def test_certainty_loss_by_hand(beta, complementary, ordered):
    order = "left_to_right" if ordered else "random"
    obj, net = _setup(f"distill.certainty_weight={beta}", f"distill.complementary={str(complementary).lower()}",
                      f"distill.mask_order={order}")  # fmt: skip
    ids = torch.randint(0, 23, (3, 10), generator=torch.Generator().manual_seed(1))
    plen = torch.tensor([3, 4, 6])
    got = obj.loss(net, {"input_ids": ids, "prompt_lengths": plen}, generator=torch.Generator().manual_seed(7))
    want = by_hand(net, obj.process, ids, plen, 7, beta, complementary, ordered)
    assert float(got.detach()) == pytest.approx(want, rel=1e-5)
    got.backward()
    assert net.lm_head.weight.grad is not None


def test_certainty_needs_sft_batches_and_a_masked_student():
    obj, net = _setup()
    with pytest.raises(ConfigError, match="data.task"):
        obj.loss(net, {"input_ids": torch.zeros(1, 4, dtype=torch.long)})
    with pytest.raises(ConfigError, match="diffusion.process"):
        _setup("diffusion.process=uniform")
    with pytest.raises(ConfigError, match="distill.certainty_weight"):
        _setup("distill.certainty_weight=-1")
    with pytest.raises(ConfigError, match="distill.mask_order"):
        _setup("distill.mask_order=right_to_left")
    with pytest.raises(ConfigError, match="distill.curriculum_start"):
        _setup("distill.curriculum_start=0")


def test_noise_curriculum_caps_the_levels_then_lets_go():
    """d3LLM's curriculum: at step s of N the drawn levels are scaled by start + (1 - start) s / N; the loss is the
    by-hand one at those levels; from step N on it is the plain objective's."""
    obj, net = _setup("distill.curriculum_steps=10", "distill.curriculum_start=0.4")
    ids = torch.randint(0, 23, (3, 10), generator=torch.Generator().manual_seed(1))
    plen = torch.tensor([3, 4, 6])
    batch = {"input_ids": ids, "prompt_lengths": plen}
    for step, cap in [(0, 0.4), (5, 0.7), (10, 1.0), (30, 1.0)]:
        obj.at_step(step)
        assert obj.cap == pytest.approx(cap)
        got = float(obj.loss(net, batch, generator=torch.Generator().manual_seed(7)).detach())
        assert got == pytest.approx(by_hand(net, obj.process, ids, plen, 7, 1.0, True, cap=cap), rel=1e-5)
    obj.at_step(0)
    low = float(obj.loss(net, batch, generator=torch.Generator().manual_seed(7)).detach())
    assert low != pytest.approx(by_hand(net, obj.process, ids, plen, 7, 1.0, True), rel=1e-3)


@pytest.mark.parametrize("process", ["masked", "block"])
def test_left_to_right_order_masks_a_suffix_of_each_unit_at_the_drawn_rate(process):
    """Trajectory-ordered masking: inside each unit (the answer; a block of 4) the masked answer tokens are always
    a suffix of its answer tokens, and as many are masked on average as independent masking would mask."""
    obj, net = _setup(f"diffusion.process={process}", "diffusion.block_size=4", "distill.mask_order=left_to_right")
    p, g = obj.process, torch.Generator().manual_seed(3)
    ids = torch.randint(0, 23, (4000, 11), generator=g)
    plen = torch.randint(1, 6, (4000,), generator=g)
    answer = p.answer_positions(ids, plen)
    units = p.noise_units(net, ids)
    assert units.tolist() == [[0] * 11] if process == "masked" else units.tolist() == [[0] * 4 + [1] * 4 + [2] * 3]
    t = p.training_t(net, ids, None, g)
    _, masked = p.add_noise(ids, t, g, answer, units=units)
    for u in range(int(units.max()) + 1):
        inside = answer & (units == u)
        m = masked & inside
        # a suffix: no answer token of the unit is kept after a masked one
        after_masked = m.long().cumsum(1) > 0
        assert not (inside & after_masked & ~m).any()
    want = float((p.mask_prob(ids, t, answer).expand(ids.shape) * answer).sum())
    got = float(masked.sum())
    assert abs(got - want) < 0.02 * want, (got, want)  # the count's sd is below 0.5 % of it here
    _, independent = p.add_noise(ids, t, g, answer)
    # independent masking of the same levels leaves holes: kept tokens after masked ones
    assert (answer & (independent.long().cumsum(1) > 0) & ~independent).any()
