"""Checkpoint families: one module per family, one registry. `family_for(config)` picks the family of a
config.json; a new family is a new module registered here (it never touches the network or the sampler)."""

from __future__ import annotations

from pathlib import Path

from ...errors import CheckpointError
from .base import Family, RawConfig, stored_keys
from .bert import BertFamily
from .dlm import DLMFamily
from .dream import DreamFamily
from .hf_causal import LlamaFamily, MistralFamily, Qwen2Family
from .llada import LLaDAFamily

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        DLMFamily(), LLaDAFamily(), DreamFamily(), LlamaFamily(), Qwen2Family(), MistralFamily(), BertFamily()
    )
}


def supported_model_types() -> list[str]:
    return [t for f in FAMILIES.values() for t in f.model_types]


def family_for(raw: dict, where: Path | str) -> Family:
    """The family whose detect() claims this config.json, else a CheckpointError listing what is supported."""
    for family in FAMILIES.values():
        if family.detect(raw):
            return family
    raise CheckpointError(
        f"{where}: model_type {raw.get('model_type')!r} is not supported; "
        f"supported model_type values: {', '.join(repr(t) for t in supported_model_types())}"
    )


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise CheckpointError(f"unknown checkpoint family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


__all__ = ["FAMILIES", "Family", "RawConfig", "family_for", "get_family", "stored_keys", "supported_model_types"]
