"""Logits processors (HF-style): callables that reshape logits at the active positions before sampling."""

from __future__ import annotations

import torch

from ..diffusion.policies import top_k_top_p_filter  # noqa: F401  (re-exported: the filter lives with the proposals)


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
