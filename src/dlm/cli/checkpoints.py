"""`dlm info`, `dlm convert` and `dlm quantize`: reading and rewriting checkpoint folders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..builtin import DEFAULT_MODEL
from .common import MODEL_HELP, app, dtype_option, echo_json, gguf_option, json_option


@app.command()
def info(
    path: str = typer.Argument(DEFAULT_MODEL, help=MODEL_HELP),
    as_json: bool = json_option(),
    gguf_file: Optional[str] = gguf_option(),
):
    """Show a checkpoint's family, config, parameter count, tokenizer and special ids (reads no weights)."""
    from ..configs import to_dict
    from ..hub import count_parameters, open_checkpoint
    from ..hub.hf_tokenizer import has_tokenizer
    from ..hub.loading import open_tokenizer

    ck = open_checkpoint(path, gguf_file)
    cfg, raw = ck.config, ck.raw
    n_params = count_parameters(ck)
    tok_info = {}
    if has_tokenizer(*ck.tokenizer_location):
        tok = open_tokenizer(ck)
        tok_info = {"vocab_size": tok.vocab_size, "special_ids": tok.special_ids}
    dtype = raw.get("torch_dtype") or raw.get("dtype")
    if ck.base is not None:  # a LoRA adapter folder: the merged network is stored as its base is
        dtype = ck.base.raw.get("torch_dtype") or ck.base.raw.get("dtype")
    out = {
        "path": str(path),
        "family": ck.family.name,
        "parameters": n_params,
        "dtype": dtype,
        "config": to_dict(cfg),
        "diffusion": raw.get("diffusion") if ck.is_dlm else None,
        "tokenizer": tok_info,
    }
    if ck.base is not None:
        out["base"] = str(ck.base.gguf_file or ck.base.folder)
    if as_json:
        echo_json(out)
        return
    typer.echo(
        f"{path}: {ck.family.name} checkpoint, {n_params / 1e6:.2f}M parameters ({dtype}), attention {cfg.attention}"
    )
    for k, v in to_dict(cfg).items():
        typer.echo(f"  {k}: {v}")
    if ck.base is not None:
        typer.echo(f"  LoRA adapter over {out['base']} (merged at load)")
    if out["diffusion"]:
        typer.echo(f"  diffusion: {raw['diffusion']}")
    if tok_info:
        typer.echo(f"  tokenizer: {tok_info['vocab_size']} tokens; special ids {tok_info['special_ids']}")


@app.command()
def convert(
    src: str = typer.Argument(..., help="Any supported checkpoint folder or .gguf file."),
    dst: Path = typer.Argument(..., help="Output folder (written atomically)."),
    to: str = typer.Option("dlm", "--to", help="Output layout: dlm | llada."),
    dtype: Optional[str] = dtype_option(),
    max_shard_size: str = typer.Option("2GB", "--max-shard-size", help="Shard the weights above this size."),
    gguf_file: Optional[str] = gguf_option(),
):
    """Write SRC as a dlm folder, or (--to llada) in LLaDA's layout for the LLaDA ecosystem."""
    from ..hub import convert as convert_checkpoint

    out = convert_checkpoint(src, dst, to=to, dtype=dtype, max_shard_size=max_shard_size, gguf_file=gguf_file)
    typer.echo(f"wrote {to} folder {out}")


@app.command()
def quantize(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", help="Output folder (written atomically); every command reads it."),
    bits: int = typer.Option(8, "--bits", help="8 | 4 (weights; int4 in groups of --group-size inputs)."),
    scheme: str = typer.Option(
        "weight_only", "--scheme", help="weight_only | dynamic (int8 activations per token at run time; --bits 8)."
    ),
    group_size: int = typer.Option(32, "--group-size", help="--bits 4: inputs sharing one scale (a power of two)."),
    gguf_file: Optional[str] = gguf_option(),
):
    """Quantise MODEL's weights with torchao and write a dlm folder (safetensors, no pickle)."""
    from ..hub.quantize import quantize as quantize_checkpoint

    dst = quantize_checkpoint(model, out, bits, scheme=scheme, group_size=group_size, gguf_file=gguf_file)
    size = sum(f.stat().st_size for f in dst.glob("*.safetensors"))
    typer.echo(f"wrote {bits}-bit ({scheme}) folder {dst} ({size / 1e6:.1f} MB of weights)")
