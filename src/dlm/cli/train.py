"""`dlm train`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import InputError
from .common import app, check_at_least_one


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML run config."),
    set_: List[str] = typer.Option([], "--set", help="Override: section.key=value (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in out_dir."),
    nproc: int = typer.Option(
        1, "--nproc", help="Processes on this machine: >1 launches torchrun (data parallel; train.distributed)."
    ),
    export: Optional[Path] = typer.Option(
        None, "--export", help="No training: write the newest checkpoint as a plain dlm folder at this path."
    ),
):
    """Train a model from a YAML config (one process, or N through torchrun with --nproc N)."""
    check_at_least_one("--nproc", nproc)
    if nproc > 1:
        import subprocess
        import sys

        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        cmd += ["-m", "dlm.train", str(config)] + [a for s in set_ for a in ("--set", s)]
        cmd += (["--resume"] if resume else []) + (["--export", str(export)] if export else [])
        raise typer.Exit(subprocess.call(cmd))
    from ..train import no_checkpoint_to_export
    from ..training import Trainer, load_run_config

    cfg = load_run_config(config, set_)
    trainer = Trainer(cfg)
    resumed = trainer.resume(continuing=not export) if (resume or export) else False
    if export and not resumed:
        raise InputError("--export", no_checkpoint_to_export(cfg.out_dir))
    if resume and not resumed:
        typer.echo(f"no checkpoint in {cfg.out_dir}/checkpoints; starting from scratch", err=True)
    if export:
        typer.echo(f"exported step {trainer.step} to {trainer.export(export)}")
        return
    trainer.train()
    last = trainer.history[-1] if trainer.history else {}
    typer.echo(
        f"done: step {trainer.step}, tokens {trainer.tokens_seen}, "
        f"eval_ppl {last.get('eval_ppl', float('nan')):.2f}; model in {Path(cfg.out_dir) / 'final'}"
    )
