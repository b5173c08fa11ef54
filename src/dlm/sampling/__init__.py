"""The reverse loop: GenerationConfig, generate(), unmask policies, logits processors, streamers."""

from .config import GenerationConfig
from .generate import GenerationOutput, generate
from ..diffusion.policies import POLICIES, StepInputs, UnmaskPolicy, get_policy, register_policy
from .processors import AllowTokens, LogitsProcessor, NoRepeatNGram, SuppressTokens, top_k_top_p_filter
from .streamer import CallbackStreamer, RecordingStreamer, StepEvent, Streamer

__all__ = [
    "POLICIES",
    "AllowTokens",
    "CallbackStreamer",
    "GenerationConfig",
    "GenerationOutput",
    "LogitsProcessor",
    "NoRepeatNGram",
    "RecordingStreamer",
    "StepEvent",
    "StepInputs",
    "Streamer",
    "SuppressTokens",
    "UnmaskPolicy",
    "generate",
    "get_policy",
    "register_policy",
    "top_k_top_p_filter",
]
