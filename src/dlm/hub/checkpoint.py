"""dlm's own folder format: config.json + model.safetensors (sharded with an index above a size) +
tokenizer files + generation_config.json. Safetensors only; folders are written atomically."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..configs import from_dict, to_dict
from ..errors import CheckpointError, ConfigError
from ..model import ModelConfig, Transformer
from .adapters import resolve_location
from .families.dlm import META_KEYS
from .loading import DTYPES, resolve_dtype  # noqa: F401  (re-exported: dlm.hub.checkpoint.resolve_dtype)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
GENERATION_CONFIG_NAME = "generation_config.json"
MODEL_TYPE = "dlm"
_META_KEYS = META_KEYS


def parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", str(size).upper())
    if not m:
        raise ConfigError("max_shard_size", f"got {size!r}; use bytes or a size like '500MB', '2GB'")
    mult = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9}[m.group(2)]
    return int(float(m.group(1)) * mult)


def _atomic_dir(out_dir: Path):
    """Context: yields a temp dir beside out_dir; on success it replaces out_dir in (nearly) one rename.
    An interruption leaves the previous out_dir intact."""

    class _Ctx:
        def __enter__(self):
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
            return self.tmp

        def __exit__(self, exc_type, exc, tb):
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return False
            for f in self.tmp.iterdir():  # make the files durable before the rename publishes them
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            old = None
            if out_dir.exists():
                old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
                os.replace(out_dir, old)
            os.replace(self.tmp, out_dir)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            return False

    return _Ctx()


def write_weights(state: dict[str, torch.Tensor], folder: Path, max_shard_size: int | str = "2GB") -> list[str]:
    """Write tensors as one safetensors file or as shards with an HF-style index. Returns file names."""
    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t.contiguous()
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(folder / WEIGHTS_NAME), metadata=meta)
        return [WEIGHTS_NAME]
    names, weight_map = [], {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata=meta)
        names.append(fname)
        weight_map.update({k: fname for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / INDEX_NAME).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    return names + [INDEX_NAME]


def config_dict(model_config: ModelConfig, diffusion_config=None, *, torch_dtype: str | None = None) -> dict:
    """A dlm folder's config.json: the network's ModelConfig (+ the stored dtype and the diffusion section)."""
    cfg = {"model_type": MODEL_TYPE, "architectures": ["DLMTransformer"], **to_dict(model_config)}
    if torch_dtype is not None:
        cfg["torch_dtype"] = torch_dtype
    if diffusion_config is not None:
        cfg["diffusion"] = to_dict(diffusion_config)
    return cfg


def save_pretrained(
    model: Transformer,
    out_dir: str | Path,
    *,
    tokenizer=None,
    generation_config=None,
    diffusion_config=None,
    max_shard_size: int | str = "2GB",
    dtype=None,
) -> Path:
    out_dir = Path(out_dir)
    dtype = resolve_dtype(dtype)
    state = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight" and model.config.tie_embeddings:
            continue
        v = v.detach().cpu()
        state[k] = v.to(dtype) if dtype is not None and v.is_floating_point() else v
    with _atomic_dir(out_dir) as tmp:
        any_t = next(iter(state.values()))
        cfg = config_dict(model.config, diffusion_config, torch_dtype=str(any_t.dtype).replace("torch.", ""))
        (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
        write_weights(state, tmp, max_shard_size)
        if generation_config is not None:
            (tmp / GENERATION_CONFIG_NAME).write_text(json.dumps(to_dict(generation_config), indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp)
    return out_dir


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing file (a dlm checkpoint folder needs {path.name})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt JSON ({e})") from None


def load_model_config(path: str | Path) -> tuple[ModelConfig, dict]:
    path = resolve_location(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    raw = _read_json(path / CONFIG_NAME)
    mt = raw.get("model_type", MODEL_TYPE)
    if mt != MODEL_TYPE:
        raise CheckpointError(f"{path / CONFIG_NAME}: model_type {mt!r} is not a dlm folder (expected {MODEL_TYPE!r})")
    fields = {k: v for k, v in raw.items() if k not in _META_KEYS}
    try:
        return from_dict(ModelConfig, fields, prefix="config."), raw
    except ConfigError as e:
        raise CheckpointError(f"{path / CONFIG_NAME}: {e}") from None


def weight_files(path: Path) -> list[Path]:
    if (path / INDEX_NAME).is_file():
        index = _read_json(path / INDEX_NAME)
        files = sorted(set(index.get("weight_map", {}).values()))
        if not files:
            raise CheckpointError(f"{path / INDEX_NAME}: empty weight_map")
        return [path / f for f in files]
    if (path / WEIGHTS_NAME).is_file():
        return [path / WEIGHTS_NAME]
    raise CheckpointError(f"{path}: missing weights ({WEIGHTS_NAME} or {INDEX_NAME})")


def load_state_dict(path: str | Path, device="cpu", dtype=None) -> dict[str, torch.Tensor]:
    """Read every tensor of a folder (mmap through safetensors). Corrupt files raise CheckpointError."""
    dtype = resolve_dtype(dtype)
    state = {}
    for f in weight_files(resolve_location(path)):
        if not f.is_file():
            raise CheckpointError(f"{f}: missing weight shard listed in the index")
        try:
            with safe_open(str(f), framework="pt", device=str(device)) as fh:
                for k in fh.keys():
                    t = fh.get_tensor(k)
                    state[k] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{f}: corrupt or unreadable safetensors file ({e})") from None
    return state


def from_pretrained(path: str | Path, *, device="cpu", dtype=None, gguf_file: str | None = None) -> Transformer:
    """Build the Transformer from any supported folder (dlm, LLaDA, Dream, LLaMA/Qwen2/Mistral safetensors, or a
    GGUF file): the family comes from config.json, tensors are checked (every missing, unexpected, misshapen
    or non-float tensor is named with its file) and then read one at a time into the meta-built network."""
    from .loading import load_model, open_checkpoint

    return load_model(open_checkpoint(path, gguf_file), device=device, dtype=dtype)
