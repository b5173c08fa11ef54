"""What every `dlm` command shares: the apps, the one DLMError handler, the model options, loading."""

from __future__ import annotations

import contextlib
import json
from typing import Optional

import typer
from typer.core import TyperGroup

from ..builtin import BUILTIN_MODELS, DEFAULT_MODEL
from ..errors import DLMError, InputError

ERROR_EXIT_CODE = 2


@contextlib.contextmanager
def dlm_errors():
    """The one error handler: a DLMError (it names the bad field) becomes `error: ...` on stderr and exit 2."""
    try:
        yield
    except DLMError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(ERROR_EXIT_CODE) from None


class _DLMGroup(TyperGroup):
    """The root group: every subcommand (nested groups included) runs inside dlm_errors()."""

    def invoke(self, ctx):
        with dlm_errors():
            return super().invoke(ctx)


app = typer.Typer(cls=_DLMGroup, add_completion=False, no_args_is_help=True, help="dlm: diffusion language models.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate models.")
tok_app = typer.Typer(no_args_is_help=True, help="Tokenizers.")
tasks_app = typer.Typer(no_args_is_help=True, help="Task suites: sudoku, countdown, arithmetic, facts.")
data_app = typer.Typer(no_args_is_help=True, help="Training corpora.")
distill_app = typer.Typer(no_args_is_help=True, help="Distillation data from a causal teacher.")
export_app = typer.Typer(no_args_is_help=True, help="Export models to other runtimes (ONNX).")
app.add_typer(eval_app, name="eval")
app.add_typer(tok_app, name="tokenizer")
app.add_typer(tasks_app, name="tasks")
app.add_typer(data_app, name="data")
app.add_typer(distill_app, name="distill")
app.add_typer(export_app, name="export")

MODEL_HELP = (
    "A checkpoint folder (dlm, LLaDA, Dream, LLaMA/Qwen2/Mistral safetensors), a .gguf file, a LoRA adapter folder "
    "(merged into the base it names), pkg:PACKAGE/PATH inside an installed package, or a built-in model: "
    "builtin-draft (the AR twin drafting for itself, several tokens per forward; the default writer), builtin "
    "(diffusion; the default where a diffusion model is needed: infill, rl), builtin-ar (the AR twin), "
    "builtin-block (block diffusion) or smollm2-diffusion (SmolLM2-135M as block diffusion, an adapter)."
)


def model_option(default: str = DEFAULT_MODEL):
    return typer.Option(default, "--model", help=MODEL_HELP)


def dtype_option():
    return typer.Option(None, "--dtype", help="Weights dtype: fp32 | bf16 | fp16 (default: as stored).")


def device_option():
    return typer.Option("cpu", "--device", help="cpu | cuda | cuda:N | mps.")


def gguf_option():
    return typer.Option(
        None, "--gguf-file", help="GGUF file in the --model folder (dequantized row by row with gguf-py)."
    )


def json_option(help: Optional[str] = None):
    return typer.Option(False, "--json", help=help)


def backend_option():
    return typer.Option(
        "torch", "--backend", help="torch | onnxruntime (an ONNX export folder, from `dlm export onnx`; CPU, fp32)."
    )


def load_model(
    model: str,
    dtype: Optional[str] = None,
    device: str = "cpu",
    gguf_file: Optional[str] = None,
    backend: str = "torch",
):
    from ..hub import load

    if not model:
        raise InputError("--model", f"empty; pass a checkpoint folder or one of {', '.join(BUILTIN_MODELS)}")
    return load(model, dtype=dtype, device=device, gguf_file=gguf_file, backend=backend)


def check_at_least_one(flag: str, value: int) -> None:
    if value < 1:
        raise InputError(flag, f"got {value}; must be >= 1")


def echo_json(obj) -> None:
    typer.echo(json.dumps(obj))


def read_texts(sources, field: str = "--data") -> list[str]:
    """The text documents of files, folders or globs (JSONL rows with a text field included)."""
    from ..training.data import expand_sources, iter_documents

    return [d for _, d in iter_documents(expand_sources(sources, field)) if isinstance(d, str)]
