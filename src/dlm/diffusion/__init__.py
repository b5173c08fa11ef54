"""Noise processes: forward corruption, losses, likelihood bounds and the reverse step (one file per process,
registered by name; `build_process` is the one factory)."""

from .base import (
    PROCESSES,
    DiffusionConfig,
    LossOutput,
    NoiseProcess,
    ReverseProcess,
    StepContext,
    StepResult,
    build_process,
    register_process,
)
from .block import BlockDiffusion
from .continuous import ContinuousDiffusion
from .masked import MaskedDiffusion, align_logits, masked_cross_entropy, perplexity
from .policies import POLICIES, StepInputs, UnmaskPolicy, get_policy, register_policy
from .schedules import SCHEDULES, CosineSchedule, LinearSchedule, LogLinearSchedule, Schedule, get_schedule
from .spindle import SpindleDiffusion
from .uniform import UniformDiffusion

__all__ = [
    "BlockDiffusion",
    "ContinuousDiffusion",
    "POLICIES",
    "PROCESSES",
    "SCHEDULES",
    "CosineSchedule",
    "DiffusionConfig",
    "LinearSchedule",
    "LogLinearSchedule",
    "LossOutput",
    "MaskedDiffusion",
    "NoiseProcess",
    "ReverseProcess",
    "Schedule",
    "SpindleDiffusion",
    "StepContext",
    "StepInputs",
    "StepResult",
    "UniformDiffusion",
    "UnmaskPolicy",
    "align_logits",
    "build_process",
    "get_policy",
    "get_schedule",
    "masked_cross_entropy",
    "perplexity",
    "register_policy",
    "register_process",
]
