"""Noise processes and their losses."""

from .masked import DiffusionConfig, LossOutput, MaskedDiffusion, align_logits, masked_cross_entropy, perplexity
from .schedules import SCHEDULES, CosineSchedule, LinearSchedule, LogLinearSchedule, Schedule, get_schedule

__all__ = [
    "SCHEDULES",
    "CosineSchedule",
    "DiffusionConfig",
    "LinearSchedule",
    "LogLinearSchedule",
    "LossOutput",
    "MaskedDiffusion",
    "Schedule",
    "align_logits",
    "get_schedule",
    "masked_cross_entropy",
    "perplexity",
]
