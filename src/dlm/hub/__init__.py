"""Checkpoint folders: save_pretrained / from_pretrained (safetensors + JSON), foreign checkpoint families
(LLaDA, Dream, LLaMA/Qwen2/Mistral, GGUF), conversion, and the loaded-model object."""

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
from .convert import convert, save_in_family_layout
from .families import FAMILIES, family_for, get_family
from .hf_tokenizer import HFTokenizer, load_tokenizer
from .loading import Checkpoint, count_parameters, load_model, open_checkpoint
from .pipeline import Completion, DiffusionLM, load

__all__ = [
    "CONFIG_NAME",
    "Checkpoint",
    "Completion",
    "DiffusionLM",
    "FAMILIES",
    "GENERATION_CONFIG_NAME",
    "HFTokenizer",
    "INDEX_NAME",
    "WEIGHTS_NAME",
    "convert",
    "count_parameters",
    "family_for",
    "from_pretrained",
    "get_family",
    "load",
    "load_model",
    "load_model_config",
    "load_state_dict",
    "load_tokenizer",
    "open_checkpoint",
    "save_in_family_layout",
    "save_pretrained",
]
