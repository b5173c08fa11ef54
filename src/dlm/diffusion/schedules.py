"""Noise schedules for the masked (absorbing-state) process.

Each schedule gives alpha(t) (probability a token is still clean at time t) and the ELBO weight
w(t) = -alpha'(t) / (1 - alpha(t)). One tiny interface, swapped by name (diffusers-style).
"""

from __future__ import annotations

import math

import torch

from ..errors import check_choice


class Schedule:
    name = "base"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def alpha_prime(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - self.alpha(t)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        return -self.alpha_prime(t) / (1.0 - self.alpha(t))

    def unmask_fraction(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Probability that a position masked at time t is clean at time s < t: (alpha_s - alpha_t) / (1 - alpha_t)
        (the masked posterior; the reverse step's commit fraction)."""
        a_t, a_s = self.alpha(t), self.alpha(s)
        return (a_s - a_t) / (1.0 - a_t)


class LinearSchedule(Schedule):
    """alpha = 1 - t; w = 1/t (LLaDA)."""

    name = "linear"

    def alpha(self, t):
        return 1.0 - t

    def alpha_prime(self, t):
        return -torch.ones_like(t)

    def unmask_fraction(self, t, s):
        return 1 - s / t  # Dream's expression, written as Dream writes it (float rounding included)


class CosineSchedule(Schedule):
    """alpha = 1 - cos(pi/2 (1 - t)); w = (pi/2) tan(pi/2 (1 - t))."""

    name = "cosine"

    def alpha(self, t):
        return 1.0 - torch.cos(0.5 * math.pi * (1.0 - t))

    def alpha_prime(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * (1.0 - t))


class LogLinearSchedule(Schedule):
    """MDLM's log-linear noise: sigma(t) = -log(1 - (1-eps) t), alpha = exp(-sigma) = 1 - (1-eps) t."""

    name = "loglinear"

    def __init__(self, eps: float = 1e-3):
        self.eps = eps

    def alpha(self, t):
        return 1.0 - (1.0 - self.eps) * t

    def alpha_prime(self, t):
        return torch.full_like(t, -(1.0 - self.eps))


SCHEDULES = {"linear": LinearSchedule, "cosine": CosineSchedule, "loglinear": LogLinearSchedule}


def get_schedule(name: str, eps: float = 1e-3) -> Schedule:
    check_choice("diffusion.schedule", name, SCHEDULES)
    return LogLinearSchedule(eps) if name == "loglinear" else SCHEDULES[name]()
