"""`dlm tasks list|make` (`dlm eval task` scores a model on them)."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from ..errors import InputError
from .common import echo_json, tasks_app

TASK_HELP = "sudoku | countdown | arithmetic | facts"
TASK_OPTION_HELP = (
    "Task setting key=value, repeatable: sudoku givens=36 locked=false; countdown numbers=4 max_number=20; "
    "arithmetic digits=4 ops=+* layout=plain|padded; facts people=400 seed=0."
)


def task_option():
    return typer.Option([], "--option", help=TASK_OPTION_HELP)


def make_task(name: str, options: List[str]):
    """The task NAME built with --option key=value pairs (ints and true/false where they parse)."""
    from ..tasks import get_task

    kwargs = {}
    for o in options:
        key, sep, value = o.partition("=")
        if not sep or not key:
            raise InputError("--option", f"got {o!r}; expected key=value (e.g. givens=36)")
        if value.lower() in ("true", "false"):
            kwargs[key] = value.lower() == "true"
            continue
        try:
            kwargs[key] = int(value)
        except ValueError:
            kwargs[key] = value
    return get_task(name, **kwargs)


@tasks_app.command("list")
def tasks_list():
    """The task suites and their settings."""
    import inspect

    from ..tasks import TASKS

    for name, cls in TASKS.items():
        sig = inspect.signature(cls.__init__)
        opts = ", ".join(f"{p.name}={p.default}" for p in list(sig.parameters.values())[1:])
        typer.echo(f"{name:<11} {opts}")


@tasks_app.command("make")
def tasks_make(
    task: str = typer.Argument(..., help=TASK_HELP),
    out: Path = typer.Option(..., "--out", help="JSONL file to write ({'messages': [...]} per line)."),
    split: str = typer.Option("train", "--split", help="train | test"),
    n: int = typer.Option(1000, "-n", help="Number of examples."),
    option: List[str] = task_option(),
):
    """Write a task split as chat JSONL, the SFT format of `dlm train` (facts: also its training prose)."""
    from ..tasks import write_sft

    echo_json(write_sft(make_task(task, option), split, n, out))
