"""The `dlm` command. Thin: parse, call the library, print.

One module per command group; common.py holds the apps, the one DLMError handler and the model options;
sampling.py makes the sampling options of every generating command from GenerationConfig's fields.
"""

from __future__ import annotations

from . import bench, checkpoints, data, distill, evaluate, export, generate, rl, serve, tasks, train  # noqa: F401 (registers commands)
from .common import app, data_app, eval_app, tasks_app, tok_app

__all__ = ["app", "data_app", "eval_app", "main", "tasks_app", "tok_app"]


def main() -> None:  # console-script entry point
    app()
