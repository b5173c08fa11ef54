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
def by_hand(net, proc, ids, plen, seed, beta, complementary):
    g = torch.Generator().manual_seed(seed)
    answer = torch.arange(ids.shape[1])[None] >= plen[:, None]
    t = proc.sample_t(ids.shape[0], g)
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


@pytest.mark.parametrize("beta, complementary", [(0.0, False), (1.0, False), (0.5, True)])
def test_certainty_loss_by_hand(beta, complementary):
    obj, net = _setup(f"distill.certainty_weight={beta}", f"distill.complementary={str(complementary).lower()}")
    ids = torch.randint(0, 23, (3, 10), generator=torch.Generator().manual_seed(1))
    plen = torch.tensor([3, 4, 6])
    got = obj.loss(net, {"input_ids": ids, "prompt_lengths": plen}, generator=torch.Generator().manual_seed(7))
    want = by_hand(net, obj.process, ids, plen, 7, beta, complementary)
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
