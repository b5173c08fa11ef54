"""Checkpoint folders: save_pretrained / from_pretrained (safetensors + JSON), and the loaded-model object."""

from .checkpoint import (
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    INDEX_NAME,
    WEIGHTS_NAME,
    from_pretrained,
    load_model_config,
    load_state_dict,
    save_pretrained,
)
from .pipeline import Completion, DiffusionLM, load

__all__ = [
    "CONFIG_NAME",
    "Completion",
    "DiffusionLM",
    "GENERATION_CONFIG_NAME",
    "INDEX_NAME",
    "WEIGHTS_NAME",
    "from_pretrained",
    "load",
    "load_model_config",
    "load_state_dict",
    "save_pretrained",
]
