"""`dlm bench`: forwards its arguments to dlm.bench (argparse, `dlm bench --help`)."""

from __future__ import annotations

import typer

from .common import app


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def bench(ctx: typer.Context):
    """Sampling speed and quality: reference (LLaDA-style), +cache, +parallel, +both, AR twin. `dlm bench --help`."""
    from .. import bench as bench_module

    raise typer.Exit(bench_module.main(list(ctx.args)))
