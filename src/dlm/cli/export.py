"""`dlm export onnx`: a model as an ONNX folder that `--backend onnxruntime` (or `dlm.load`) runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import MODEL_HELP, echo_json, export_app, gguf_option, json_option, load_model


@export_app.command("onnx")
def onnx(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out_dir: Path = typer.Argument(..., help="The folder to write (replaced if it exists)."),
    opset: Optional[int] = typer.Option(
        None, "--opset", help="ONNX opset of the graphs (default 18, the lowest the dynamo exporter writes)."
    ),
    bits: Optional[int] = typer.Option(
        None, "--bits", help="8 | 4: quantise the graphs' weights with ONNX Runtime's tools (default: float32)."
    ),
    block_size: int = typer.Option(32, "--block-size", help="--bits 4: weights sharing one scale."),
    as_json: bool = json_option("One JSON object: the folder and its files."),
    gguf_file: Optional[str] = gguf_option(),
):
    """Export MODEL's float32 network to ONNX in DIR (then: dlm generate --model DIR --backend onnxruntime).

    DIR gets model.onnx (the plain forward), decoder.onnx (the samplers' stepping graph, with KV-cache inputs),
    config.json, generation_config.json, the tokenizer and onnx_config.json (how it was exported)."""
    from ..hub.onnx_export import export_onnx

    lm = load_model(model, "fp32", "cpu", gguf_file)
    out = export_onnx(lm, out_dir, opset=opset, bits=bits, block_size=block_size)
    files = sorted(p.name for p in out.iterdir())
    if as_json:
        echo_json({"path": str(out), "files": files})
    else:
        typer.echo(f"wrote {out}: {', '.join(files)}")
