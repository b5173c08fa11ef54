"""One exception family for dlm. Every message names the bad field and what is allowed."""

from __future__ import annotations


class DLMError(Exception):
    """Base class of every error dlm raises on purpose."""


class ConfigError(DLMError, ValueError):
    """A configuration field is unknown or holds a value outside what is allowed."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class CheckpointError(DLMError, OSError):
    """A checkpoint folder is missing files, or a file in it is unreadable or corrupt."""


class InputError(DLMError, ValueError):
    """A caller's input (prompt, token ids, data file) cannot be used."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def check_choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(field, f"got {value!r}; allowed: {', '.join(map(repr, sorted(allowed)))}")


def check_positive(field: str, value, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else ">= 1" if isinstance(value, int) else "> 0"
        raise ConfigError(field, f"got {value!r}; must be {bound}")
