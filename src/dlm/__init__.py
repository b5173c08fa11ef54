"""dlm: diffusion language models — train, sample, evaluate, serve."""

__version__ = "0.1.0"

from .errors import CheckpointError, ConfigError, DLMError, InputError  # noqa: E402
from .model import ModelConfig, Transformer  # noqa: E402
from .sampling import GenerationConfig, generate  # noqa: E402


def load(path, **kw):
    """Load a checkpoint as a DiffusionLM (model + tokenizer + generation config): a dlm folder, a LLaDA, Dream
    or LLaMA/Qwen2/Mistral folder, a GGUF file, a quantised folder (`dlm quantize`) or an ONNX export (`dlm export
    onnx`). Keywords: device=, dtype=, gguf_file=, backend= ("torch" | "onnxruntime")."""
    from .hub import load as _load

    return _load(path, **kw)


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DLMError",
    "GenerationConfig",
    "InputError",
    "ModelConfig",
    "Transformer",
    "generate",
    "load",
    "__version__",
]
