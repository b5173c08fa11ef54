"""Logits processors (HF-style): callables that reshape logits at the active positions before sampling."""

from __future__ import annotations

import torch


class LogitsProcessor:
    """`__call__(input_ids (R, L), scores (R, A, V), positions (R, A)) -> scores`."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SuppressTokens(LogitsProcessor):
    """Never propose these token ids (applied before argmax, not after)."""

    def __init__(self, token_ids):
        self.token_ids = sorted(set(int(t) for t in token_ids))

    def __call__(self, input_ids, scores, positions):
        scores = scores.clone()
        scores[..., self.token_ids] = float("-inf")
        return scores


def top_k_top_p_filter(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus top-p to -inf (the most likely token always stays)."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove_sorted = (cum - sorted_logits.softmax(-1)) >= top_p  # keep the token that crosses p
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits
