"""Dataclass configs that round-trip through dicts, JSON and YAML, with strict key checking."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _strip_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _coerce(field: str, tp, value):
    """Convert a value read from YAML/JSON/CLI to the declared type; raise ConfigError if impossible."""
    if value is None:
        return None
    tp = _strip_optional(tp)
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(field, f"expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=field + ".")
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(field, f"expected a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        out = [_coerce(f"{field}[{i}]", inner, v) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(field, f"expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(field, f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else int(value)
            except ValueError:
                pass
        raise ConfigError(field, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(field, f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(field, f"expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(field, f"expected a string, got {type(value).__name__}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict, *, prefix: str = "") -> T:
    """Build dataclass `cls` from `data`; unknown keys raise ConfigError naming the key."""
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or cls.__name__, "expected a mapping")
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ConfigError(
            prefix + unknown[0],
            f"unknown key; allowed keys of {cls.__name__}: {', '.join(sorted(types_))}",
        )
    kwargs = {k: _coerce(prefix + k, types_[k], v) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:  # validation inside the dataclass: name the field with its section
        if prefix and not e.field.startswith(prefix):
            raise ConfigError(prefix + e.field, e.message) from None
        raise


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def apply_overrides(data: dict, overrides: list[str], cls) -> dict:
    """Apply `key.sub=value` strings (values parsed as YAML) to a nested dict, checking keys against cls."""
    import yaml

    for item in overrides:
        if "=" not in item:
            raise ConfigError("--set", f"expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node, node_cls = data, cls
        for i, part in enumerate(parts):
            types_ = _field_types(node_cls)
            here = ".".join(parts[: i + 1])
            if part not in types_:
                raise ConfigError(here, f"unknown key; allowed: {', '.join(sorted(types_))}")
            if i == len(parts) - 1:
                node[part] = yaml.safe_load(raw)
            else:
                sub = _strip_optional(types_[part])
                if not _is_dataclass_type(sub):
                    raise ConfigError(here, "is not a section; cannot set a sub-key")
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
                node_cls = sub
    return data


def save_json(obj, path: str | Path) -> None:
    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
