"""The AR twin's loss: the fused chunked head + cross-entropy equals the plain one, value and gradients."""

import torch
import torch.nn.functional as F

from dlm.training.trainer import ar_loss

from ..conftest import tiny_config


def test_fused_ar_loss_matches_plain_cross_entropy():
    from dlm.model import Transformer

    torch.manual_seed(0)
    model = Transformer(tiny_config(attention="causal", vocab_size=200))
    ids = torch.randint(0, 200, (3, 70))  # 3 * 69 targets: not a multiple of the chunk size

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    fused = ar_loss(model, ids)
    g_fused = grads(fused)
    logits = model(ids)
    plain = F.cross_entropy(logits[:, :-1].reshape(-1, 200), ids[:, 1:].reshape(-1))
    g_plain = grads(plain)
    assert torch.allclose(fused, plain, atol=1e-5)
    for a, b in zip(g_fused, g_plain):
        assert torch.allclose(a, b, atol=1e-5)
    # the mask token is an ordinary target for the AR loss (no SUBS exclusion)
    ids[0, 5] = model.config.mask_token_id
    assert torch.isfinite(ar_loss(model, ids))


def test_sft_ar_loss_predicts_only_the_answer():
    """With prompt lengths, the AR twin's SFT loss is the mean CE over answer positions only (fused or not)."""
    from dlm.model import Transformer

    torch.manual_seed(0)
    model = Transformer(tiny_config(attention="causal", vocab_size=200))
    ids = torch.randint(0, 200, (3, 40))
    plen = torch.tensor([5, 17, 39])
    logits = model(ids)
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, 200), ids[:, 1:].reshape(-1), reduction="none").view(3, 39)
    keep = torch.arange(1, 40)[None] >= plen[:, None]  # target token t+1 is part of the answer
    want = ce[keep].mean()
    assert torch.allclose(ar_loss(model, ids, prompt_lengths=plen), want, atol=1e-5)
    plain = type("Plain", (), {"__call__": lambda self, x, attention_mask=None: model(x)})()  # no fused head
    assert torch.allclose(ar_loss(plain, ids, prompt_lengths=plen), want, atol=1e-5)
    # without prompt lengths every target counts, prompt tokens included: a different loss
    assert not torch.allclose(ar_loss(model, ids), want)
