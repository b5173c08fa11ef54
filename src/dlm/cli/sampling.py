"""The sampling options of every command that generates, made once from GenerationConfig's fields.

Each field `name` becomes `--name` (underscores as dashes; a bool `--name/--no-name`) with default None, which
means "the model's setting" (its generation_config.json or family defaults). Help text is the field's comment in
dlm/sampling/config.py unless HELP has a CLI wording. A new GenerationConfig field is thus an option of every
sampling command, and reaches the library as an override (`lm.make_config(None, **sampling)`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import typing
from typing import Optional

import typer

from ..sampling import GenerationConfig

RENAMED = {"dtype": "autocast"}  # --dtype is the weights dtype of every command that loads a model
HELP = {
    "dtype": "Compute dtype: float32 | bfloat16 (autocast).",
    "cache": "none | prefix | dual | block (block-causal models: exact).",
    "cache_refresh": "Also refresh the cache every N steps (0: at block starts only).",
    "compile": "torch.compile the forward.",
    "remask": "Revision (ReMDM-style): per step, up to N committed tokens of the block below --remask-below go back "
    "to mask (0: off).",
    "remask_below": "Revision: only committed tokens whose probability under the step's forward is below this.",
}
INFILL_FIXED = ("gen_length", "stop_at_eos", "trim_at_eos")  # infilling sets these itself
SCALARS = (bool, int, float, str)


def _field_comments() -> dict[str, str]:
    try:
        source = inspect.getsource(GenerationConfig)
    except (OSError, TypeError):  # pragma: no cover - no source shipped
        return {}
    return dict(re.findall(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+?)\s*$", source, flags=re.M))


def _fields() -> list[tuple[str, type, object, str]]:
    """(name, scalar type, library default, help) of each field a command line can set."""
    hints, comments, out = typing.get_type_hints(GenerationConfig), _field_comments(), []
    for f in dataclasses.fields(GenerationConfig):
        kind = next((t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t in SCALARS), None)
        if kind is None:  # a list or mapping field has no flag spelling; set it in generation_config.json
            continue
        text = HELP.get(f.name) or comments.get(f.name, "")
        out.append((f.name, kind, f.default, text.rstrip(".")))
    return out


FIELDS = _fields()


def arg(name: str) -> str:
    """The command-line name of field `name` (its Python parameter; --flag spelling with dashes)."""
    return RENAMED.get(name, name)


def flag(name: str) -> str:
    return "--" + arg(name).replace("_", "-")


def _parameter(name, kind, library_default, text, default, help_text) -> inspect.Parameter:
    decl = f"{flag(name)}/--no-{flag(name)[2:]}" if kind is bool else flag(name)
    if help_text is None:
        help_text = f"{text}. Default: the model's (dlm's own: {library_default})." if default is None else f"{text}."
    option = typer.Option(default, decl, help=help_text.lstrip(". "))
    kind_ = Optional[kind]  # noqa: UP007 - typer reads this annotation
    return inspect.Parameter(arg(name), inspect.Parameter.POSITIONAL_OR_KEYWORD, default=option, annotation=kind_)


def sampling_options(*, exclude=(), defaults: Optional[dict] = None, help: Optional[dict] = None):
    """Replace the command's `sampling` parameter by one option per GenerationConfig field (less `exclude`);
    the command receives `sampling`: {field: value or None}. `defaults` / `help` override per command."""
    defaults, help = defaults or {}, help or {}

    def decorate(fn):
        sig = inspect.signature(fn)
        fields = [f for f in FIELDS if f[0] not in exclude]
        clash = {arg(f[0]) for f in fields} & set(sig.parameters)
        if clash or "sampling" not in sig.parameters:
            raise TypeError(f"{fn.__name__}: needs a `sampling` parameter and none named {sorted(clash)}")
        params = []
        for p in sig.parameters.values():
            if p.name != "sampling":
                params.append(p)
                continue
            params += [_parameter(*f, defaults.get(f[0]), help.get(f[0])) for f in fields]

        @functools.wraps(fn)
        def command(*args, **kwargs):
            return fn(*args, sampling={f[0]: kwargs.pop(arg(f[0])) for f in fields}, **kwargs)

        command.__signature__ = sig.replace(parameters=params)
        return command

    return decorate


def given(sampling: dict, drop=()) -> dict:
    """The settings set on the command line (not None), less `drop`."""
    return {k: v for k, v in sampling.items() if v is not None and k not in drop}
