"""The exact negative log-likelihood of a causal (AR) model: one function, used by training's held-out eval,
`dlm.eval.perplexity` and the lm-eval adapter."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError


def next_token_nll(model, input_ids: torch.Tensor, *, greedy: bool = False):
    """(B, L-1) float32: -log p(x[i+1] | x[..i]) in nats, for every next-token target of each row, from one
    forward of `model` (any callable ids -> logits (B, L, V)). With greedy=True also (B, L-1) bool: whether
    the target is the argmax prediction."""
    logits = model(input_ids)[:, :-1].float()
    B, T, V = logits.shape
    nll = F.cross_entropy(logits.reshape(-1, V), input_ids[:, 1:].reshape(-1), reduction="none").view(B, T)
    if greedy:
        return nll, logits.argmax(-1) == input_ids[:, 1:]
    return nll


def rolling_windows(ids: list[int], prefix: int, window: int) -> list[list[int]]:
    """Windows of at most `window` tokens over [prefix] + ids whose next-token targets cover every token of
    `ids` exactly once: each window starts at the last token of the one before (its one token of context)."""
    if window < 2:
        raise InputError("max_seq_len", f"a scoring window needs at least 2 tokens, got {window}")
    seq = [prefix, *ids]
    return [seq[a : a + window] for a in range(0, len(seq) - 1, window - 1)]
