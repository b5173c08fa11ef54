"""Unmask policies: which masked positions to commit at a step. One small class each, registered by name.

A policy scores candidate positions (higher = commit sooner) and selects which to commit given the
schedule's count `k` per row. The default `select` commits the top-k; parallel-decoding policies
(threshold, factor, ...) override `select`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

POLICIES: dict[str, type["UnmaskPolicy"]] = {}


def register_policy(cls):
    POLICIES[cls.name] = cls
    return cls


@dataclass
class StepInputs:
    logits: torch.Tensor  # (R, A, V) processed logits at active positions (float32)
    probs: torch.Tensor  # (R, A, V) softmax of logits
    x0: torch.Tensor  # (R, A) proposed tokens
    x0_prob: torch.Tensor  # (R, A) probability of the proposed token
    candidates: torch.Tensor  # (R, A) bool: still masked and in the active block
    num_to_commit: torch.Tensor  # (R,) long: count from the schedule
    uniform: Callable[[], torch.Tensor]  # per-row uniforms (R, A) from each row's own generator


class UnmaskPolicy:
    name = "base"

    def scores(self, s: StepInputs) -> torch.Tensor:
        raise NotImplementedError

    def select(self, scores: torch.Tensor, s: StepInputs) -> torch.Tensor:
        """Commit the num_to_commit best-scoring candidates of each row (stable on ties)."""
        scores = scores.masked_fill(~s.candidates, float("-inf"))
        order = torch.argsort(scores, dim=1, descending=True, stable=True)
        ranks = torch.argsort(order, dim=1, stable=True)
        return (ranks < s.num_to_commit[:, None]) & s.candidates

    def __call__(self, s: StepInputs) -> torch.Tensor:
        return self.select(self.scores(s), s)


@register_policy
class LowConfidence(UnmaskPolicy):
    """LLaDA's default: commit the positions whose proposed token is most probable."""

    name = "low_confidence"

    def scores(self, s):
        return s.x0_prob


@register_policy
class RandomPolicy(UnmaskPolicy):
    """Commit uniformly random masked positions (MDLM/LLaDA 'random' remasking)."""

    name = "random"

    def scores(self, s):
        return s.uniform()


@register_policy
class Margin(UnmaskPolicy):
    """Commit where the top-1 probability beats the top-2 by the widest margin."""

    name = "margin"

    def scores(self, s):
        top2 = s.probs.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]


@register_policy
class Entropy(UnmaskPolicy):
    """Commit where the predictive distribution has the lowest entropy."""

    name = "entropy"

    def scores(self, s):
        p = s.probs
        return (p * torch.log(p.clamp_min(1e-30))).sum(-1)  # = -entropy


def get_policy(name: str) -> UnmaskPolicy:
    from ..errors import ConfigError

    if name not in POLICIES:
        raise ConfigError("policy", f"unknown policy {name!r}; allowed: {', '.join(sorted(POLICIES))}")
    return POLICIES[name]()
