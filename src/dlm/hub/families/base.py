"""What a checkpoint family is: detect(config) + ModelConfig from the foreign config + key-name mapping (both
ways) + special-id defaults + sampling defaults. Families never touch the network or the sampler loop: anything
family-specific the sampler needs (mask id, `shift_logits`, attention kind) is a ModelConfig field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ...errors import CheckpointError, ConfigError
from ...model import ModelConfig, build_network

_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_MISSING = object()


class Family:
    """Base class. Subclasses set `name`, `model_types`, `templates` and implement `model_config`."""

    name: str = "base"
    model_types: tuple[str, ...] = ()
    # dlm key (layer index written {i}) -> checkpoint key. Covers every tensor the family can hold.
    templates: dict[str, str] = {}
    # Checkpoint tensors that are not weights (e.g. cached RoPE frequencies); skipped when loading.
    ignored: tuple[str, ...] = ()
    # Special ids used when config.json does not name them (the family's published vocabulary).
    special_defaults: dict[str, int | None] = {}
    diffusion: bool = True  # a masked-diffusion family (else an autoregressive one)

    # ---- detection and config ---------------------------------------------------------------
    def detect(self, raw: dict) -> bool:
        return raw.get("model_type") in self.model_types

    def model_config(self, raw: dict, where: Path) -> ModelConfig:
        """ModelConfig from the foreign config.json `raw` (read from `where`); refuses what dlm does not implement."""
        raise NotImplementedError

    def export_config(self, config: ModelConfig) -> dict:
        """The foreign config.json for a dlm ModelConfig (only families dlm can write)."""
        raise CheckpointError(f"writing the {self.name} layout is not supported")

    def generation_defaults(self) -> dict:
        """GenerationConfig fields this family's models are usually sampled with."""
        return {}

    # ---- key mapping ----------------------------------------------------------------------------
    def checkpoint_key(self, key: str) -> str:
        """Checkpoint name of the dlm tensor `key`."""
        m = _LAYER.match(key)
        tmpl = self.templates.get(f"layers.{{i}}.{m.group(2)}" if m else key)
        if tmpl is None:
            raise CheckpointError(f"the {self.name} layout has no tensor for dlm's {key}")
        return tmpl.format(i=m.group(1)) if m else tmpl

    def key_map(self, config: ModelConfig) -> dict[str, str]:
        """dlm key -> checkpoint key for every tensor a model with `config` stores (a tied head is not stored)."""
        return {k: self.checkpoint_key(k) for k in stored_keys(config)}

    def fresh_keys(self, config: ModelConfig) -> list[str]:
        """dlm tensors this layout does not store: initialised fresh at load (a pretrained BERT body's MLM head)."""
        return []

    def is_ignored(self, checkpoint_key: str) -> bool:
        return any(re.search(p, checkpoint_key) for p in self.ignored)

    def __repr__(self) -> str:
        return f"<family {self.name}: model_type {', '.join(self.model_types)}>"


def stored_keys(config: ModelConfig) -> list[str]:
    """Names of the tensors a dlm network with `config` stores (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = build_network(config)
    return [k for k in model.state_dict() if not (k == "lm_head.weight" and config.tie_embeddings)]


# ---- helpers for reading foreign config.json files -------------------------------------------------
class RawConfig:
    """Typed access to a foreign config.json; every error names the file and the key."""

    def __init__(self, raw: dict, where: Path, family: str):
        self.raw, self.where, self.family = raw, where, family

    def error(self, key: str, message: str) -> CheckpointError:
        return CheckpointError(f"{self.where}: {key}: {message}")

    def get(self, key: str, default: Any = _MISSING) -> Any:
        if key in self.raw:
            return self.raw[key]
        if default is _MISSING:
            raise self.error(key, f"missing (a {self.family} config.json needs it)")
        return default

    def int(self, key: str, default: Any = _MISSING) -> int | None:
        v = self.get(key, default)
        if v is None and default is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise self.error(key, f"got {v!r}; expected a positive integer")
        return v

    def float(self, key: str, default: Any = _MISSING) -> float:
        v = self.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise self.error(key, f"got {v!r}; expected a positive number")
        return float(v)

    def bool(self, key: str, default: Any = _MISSING) -> bool:
        v = self.get(key, default)
        if not isinstance(v, bool):
            raise self.error(key, f"got {v!r}; expected true or false")
        return v

    def require(self, key: str, allowed: tuple, default: Any = _MISSING, why: str = "") -> Any:
        """The value must be one of `allowed`, else a refusal that says what dlm implements."""
        v = self.get(key, default)
        if v not in allowed:
            shown = ", ".join(repr(a) for a in allowed)
            raise self.error(key, f"got {v!r}; dlm implements only {shown}{' (' + why + ')' if why else ''}")
        return v

    def special(self, key: str, default: int | None, vocab_size: int | None = None) -> int | None:
        """A special token id: the config's value (a list gives its first id; null stays None) or the family's
        default, which is dropped when it lies outside this checkpoint's vocabulary (a tiny or re-sized one)."""
        if key not in self.raw:
            return default if default is None or vocab_size is None or default < vocab_size else None
        v = self.raw[key]
        if isinstance(v, list):
            v = v[0] if v else None
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise self.error(key, f"got {v!r}; expected a token id")
        return v


def build_model_config(where: Path, **fields) -> ModelConfig:
    """ModelConfig(**fields); an invalid combination becomes a CheckpointError naming config.json."""
    try:
        return ModelConfig(**fields)
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e}") from None


def canonical_d_ff(d_model: int, d_ff: int) -> int | None:
    """None when `d_ff` equals ModelConfig's default for `d_model` (so configs round-trip exactly)."""
    return None if ModelConfig(d_model=d_model, n_heads=1, head_dim=2, vocab_size=1).ff_dim == d_ff else d_ff
