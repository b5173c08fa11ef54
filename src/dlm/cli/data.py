"""`dlm data prepare` and `dlm tokenizer train`: corpora and tokenizers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import InputError
from .common import data_app, tok_app

CORPORA = ("python", "multimodal")


@data_app.command("prepare")
def data_prepare(
    name: str = typer.Argument(
        ..., help="Corpus to build: python (stdlib source + Python docs) | multimodal (rendered scenes, digits)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: data/NAME)."),
    no_docs: bool = typer.Option(False, "--no-docs", help="Skip the Debian python3.11-doc sources."),
    cache_dir: Path = typer.Option(Path("~/.cache/dlm/debian"), "--cache-dir", help="Download cache."),
    draw_copies: Optional[int] = typer.Option(
        None,
        "--draw-copies",
        help="multimodal: how many times each draw chat (caption -> picture) is in the train split "
        "(default: dlm.multimodal.data.DRAW_COPIES).",
    ),
):
    """Build a training corpus as JSONL splits plus manifest.json."""
    from ..corpus import prepare_python_corpus

    if name not in CORPORA:
        raise InputError("NAME", f"got {name!r}; allowed: {', '.join(CORPORA)}")
    out = out or Path("data") / name
    t0 = time.perf_counter()
    if name == "multimodal":
        from ..multimodal.data import prepare

        if draw_copies is not None and draw_copies < 1:
            raise InputError("--draw-copies", f"got {draw_copies}; allowed: an integer >= 1")
        copies = {} if draw_copies is None else {"draw_copies": draw_copies}
        m = prepare(out, **copies, log=lambda msg: typer.echo(msg, err=True))
        typer.echo(f"corpus {name!r} in {out} ({time.perf_counter() - t0:.1f} s): rows {m['rows']}")
        return
    m = prepare_python_corpus(
        out, include_docs=not no_docs, cache_dir=cache_dir, log=lambda msg: typer.echo(msg, err=True)
    )
    typer.echo(f"corpus {name!r} in {out} ({time.perf_counter() - t0:.1f} s)")
    for label, group in (("split", m["splits"]), ("source", m["sources"])):
        for k, v in group.items():
            size = v.get("text_bytes", v.get("bytes", 0)) / 1e6
            why = "" if v.get("available", True) else f"  unavailable: {v.get('reason')}"
            typer.echo(f"  {label} {k:<7} {v['documents']:>6} documents {size:8.2f} MB{why}")


@tok_app.command("train")
def tokenizer_train(
    files: List[str] = typer.Argument(..., help="Text files, folders or globs."),
    vocab_size: int = typer.Option(..., "--vocab-size"),
    out: Path = typer.Option(..., "--out"),
):
    """Train a byte-level BPE tokenizer with dlm's special tokens and chat template."""
    from ..tokenizer import train_tokenizer
    from ..training.data import document_texts, expand_sources

    tok = train_tokenizer([], vocab_size, out_dir=out, texts=document_texts(expand_sources(files, "FILES")))
    typer.echo(f"saved {tok.vocab_size}-token tokenizer to {out}")
