"""`dlm distill data`: a causal teacher's greedy completions of corpus prompts, as an SFT dataset."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from .common import device_option, distill_app


@distill_app.command("data")
def distill_data(
    teacher: str = typer.Option("builtin-ar", "--teacher", help="A causal model: folder, .gguf or built-in name."),
    data: List[str] = typer.Option(..., "--data", help="Corpus sources to cut prompts from (files, folders, globs)."),
    out: Path = typer.Option(Path("data/distill"), "--out", help="Folder for part-*.jsonl and manifest.json."),
    prompts: int = typer.Option(1000, "--prompts", help="Number of prompts (completions)."),
    prompt_tokens: int = typer.Option(64, "--prompt-tokens", help="Tokens per prompt window."),
    gen_length: int = typer.Option(128, "--gen-length", help="Teacher tokens per completion (greedy; ends at EOS)."),
    batch_size: int = typer.Option(16, "--batch-size"),
    shard_size: int = typer.Option(256, "--shard-size", help="Prompts per shard file (the unit of resuming)."),
    seed: int = typer.Option(0, "--seed", help="Where the prompts are cut."),
    max_bytes: int = typer.Option(20_000_000, "--max-bytes", help="Corpus text read (0 = all)."),
    dtype: str = typer.Option("float32", "--autocast", help="float32 | bfloat16 for the teacher's forwards."),
    no_repeat_ngram_size: int = typer.Option(
        0, "--no-repeat-ngram-size", help="The teacher never repeats an n-gram of this size (0 = plain greedy)."
    ),
    corpus_continuations: bool = typer.Option(
        False, "--corpus-continuations", help="Store the corpus's own next tokens, not the teacher's (real text)."
    ),
    device: str = device_option(),
):
    """Generate (or resume) a distillation dataset: train a student on it with data.task: sft."""
    from ..training.distill import TeacherDataConfig, make_teacher_data

    cfg = TeacherDataConfig(teacher=teacher, data=list(data), out=str(out), prompts=prompts,
                            prompt_tokens=prompt_tokens, gen_length=gen_length, batch_size=batch_size,
                            shard_size=shard_size, seed=seed, max_bytes=max_bytes, dtype=dtype,
                            no_repeat_ngram_size=no_repeat_ngram_size,
                            corpus_continuations=corpus_continuations)  # fmt: skip
    m = make_teacher_data(cfg, device=device or "cpu", log=lambda msg: typer.echo(msg, err=True))
    typer.echo(f"{m['completions']} completions in {out} ({'complete' if m['complete'] else 'incomplete'})")
