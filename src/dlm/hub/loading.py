"""Load any supported checkpoint into dlm's Transformer without executing anything from it.

`open_checkpoint(path)` reads config.json (or a GGUF's metadata), picks the family and builds the ModelConfig.
`load_model(checkpoint, device=, dtype=)` builds the network on the meta device, checks every tensor's name,
shape and dtype against the config from the safetensors headers alone (nothing is read before the whole
folder checks out), then fills the parameters one tensor at a time: each tensor is allocated once in the
target dtype on the target device and copied in row chunks of at most CHUNK_BYTES from a safetensors slice
(mmap), so peak memory is the model in the target dtype plus about two chunks. A LoRA adapter folder
(`adapters.py`) opens as its base's Checkpoint plus the adapter, and loads merged.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..model import ModelConfig, Transformer, build_network
from .adapters import is_adapter_folder, open_adapter, resolve_location
from .families import Family, family_for
from .hf_tokenizer import has_tokenizer, load_tokenizer

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CHUNK_BYTES = 16 << 20
FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError("dtype", f"got {dtype!r}; allowed: {', '.join(sorted(DTYPES))}")
    return DTYPES[dtype]


def resolve_device(device) -> torch.device:
    """cpu, cuda, cuda:N or mps; refuses a device this machine does not have."""
    try:
        dev = torch.device(device or "cpu")
    except (RuntimeError, TypeError):
        raise ConfigError("device", f"got {device!r}; allowed: cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", f"got {device!r} but CUDA is not available on this machine; use cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device", f"got {device!r} but MPS is not available on this machine; use cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError("device", f"got {device!r}; allowed: cpu, cuda, cuda:N, mps")
    return dev


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing file (a checkpoint folder needs {path.name})")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: corrupt JSON (expected an object)")
    return raw


@dataclass
class Checkpoint:
    """A recognised checkpoint: where it is, its family, its raw config and the dlm ModelConfig."""

    folder: Path
    family: Family
    raw: dict
    config: ModelConfig
    config_file: Path  # config.json, or the GGUF file
    gguf_file: Path | None = None
    base: "Checkpoint | None" = None  # a LoRA adapter folder's base model (the adapter is merged at load)

    @property
    def is_dlm(self) -> bool:
        return self.family.name == "dlm"

    @property
    def tokenizer_location(self) -> tuple[Path, Path | None]:
        """(folder, GGUF file) holding the tokenizer: an adapter folder's own, else its base's."""
        if self.base is not None and not has_tokenizer(self.folder):
            return self.base.tokenizer_location
        return self.folder, self.gguf_file


def open_tokenizer(ck: Checkpoint):
    """The checkpoint's tokenizer, with the special ids of its (possibly adapted) network config."""
    folder, gguf = ck.tokenizer_location
    return load_tokenizer(folder, ck.config, gguf)


def _gguf_path(p: Path, gguf_file: str | None) -> Path | None:
    if gguf_file:
        g = Path(gguf_file)
        g = g if g.is_absolute() or not p.is_dir() else p / g
        if not g.is_file():
            raise CheckpointError(f"{g}: no such GGUF file")
        return g
    if p.is_file() and p.suffix == ".gguf":
        return p
    if p.is_dir() and not (p / CONFIG_NAME).exists():
        found = sorted(p.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
        if found:
            names = ", ".join(f.name for f in found)
            raise CheckpointError(f"{p}: several GGUF files ({names}); pick one with --gguf-file / gguf_file=")
    return None


def gguf_config(gguf: Path) -> dict:
    """The model config stored in a GGUF file, as transformers' GGUF reader maps it to HF config keys."""
    try:
        from transformers import AutoConfig
    except ImportError:
        raise CheckpointError(
            f"{gguf}: reading GGUF needs transformers and gguf (pip install transformers gguf)"
        ) from None
    try:
        return AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name).to_dict()
    except (ValueError, OSError, KeyError, NotImplementedError) as e:
        raise CheckpointError(f"{gguf}: unreadable GGUF file ({e})") from None


def open_checkpoint(path: str | Path, gguf_file: str | None = None) -> Checkpoint:
    """Recognise the folder (or GGUF file) at `path` and map its config onto a dlm ModelConfig."""
    p = resolve_location(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint folder")
    if gguf_file is None and is_adapter_folder(p):
        return open_adapter(p)
    gguf = _gguf_path(p, gguf_file)
    if gguf is not None:
        raw = gguf_config(gguf)
        family = family_for(raw, gguf)
        if family.name == "dlm":
            raise CheckpointError(f"{gguf}: GGUF files hold foreign models, not the dlm format")
        return Checkpoint(gguf.parent, family, raw, family.model_config(raw, gguf), gguf, gguf)
    if not p.is_dir():
        raise CheckpointError(f"{p}: not a checkpoint folder (nor a .gguf file)")
    cfg_file = p / CONFIG_NAME
    raw = read_json(cfg_file)
    family = family_for(raw, cfg_file)
    return Checkpoint(p, family, raw, family.model_config(raw, cfg_file), cfg_file)


# ---- where the tensors are ---------------------------------------------------------------------------
class SafetensorsSource:
    """Checkpoint key -> (file, shape, dtype) from the headers of a folder's safetensors files (index or single)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.entries: dict[str, tuple[Path, tuple[int, ...], str]] = {}
        index_file = folder / INDEX_NAME
        if index_file.is_file():
            weight_map = read_json(index_file).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index_file}: empty or malformed weight_map")
            self.where = index_file
            by_file: dict[str, list[str]] = {}
            for k, f in weight_map.items():
                by_file.setdefault(f, []).append(k)
            for fname, keys in sorted(by_file.items()):
                f = folder / fname
                if not f.is_file():
                    shown = ", ".join(sorted(keys)[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
                    raise CheckpointError(f"{f}: missing weight shard listed in the index (it holds {shown})")
                found = self._scan(f)
                for k in keys:
                    if k not in found:
                        raise CheckpointError(f"{f}: tensor {k} is listed in {index_file.name} but not in this file")
        elif (folder / WEIGHTS_NAME).is_file():
            self.where = folder / WEIGHTS_NAME
            self._scan(self.where)
        else:
            pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
            why = f"; {', '.join(pickles[:3])} (pickle) is not read, only safetensors" if pickles else ""
            raise CheckpointError(f"{folder}: missing weights ({WEIGHTS_NAME} or {INDEX_NAME}){why}")

    def _scan(self, f: Path) -> set[str]:
        try:
            with safe_open(str(f), framework="pt") as fh:
                keys = set(fh.keys())
                for k in keys:
                    sl = fh.get_slice(k)
                    self.entries.setdefault(k, (f, tuple(sl.get_shape()), sl.get_dtype()))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{f}: corrupt or unreadable safetensors file ({e})") from None
        return keys

    def take(self, key: str, dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
        """Tensor `key`, allocated once in `dtype` (None: as stored) on `device`."""
        _, shape, dt = self.entries[key]
        dest = torch.empty(shape, dtype=dtype or FLOAT_DTYPES[dt], device=device)
        self.read_into(key, dest)
        return dest

    def read_into(self, key: str, dest: torch.Tensor) -> None:
        """Copy tensor `key` into `dest` (converting dtype/device) in row chunks, reopening the file for each
        chunk so that no more than one chunk of it is ever mapped."""
        f, shape, dt = self.entries[key]
        if not shape:
            shape, dest = (1,), dest.view(1)
        row = FLOAT_DTYPES[dt].itemsize * (dest[0].numel() if dest.dim() > 1 else 1)
        step = max(1, CHUNK_BYTES // max(1, row))
        try:
            for a in range(0, shape[0], step):
                with safe_open(str(f), framework="pt") as fh:
                    part = fh.get_slice(key)[a : a + step]
                dest[a : a + step].copy_(part.reshape(dest[a : a + step].shape))
                del part
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{f}: corrupt or unreadable tensor {key} ({e})") from None


# ---- filling the model ---------------------------------------------------------------------------------
def check_tensors(ck: Checkpoint, source, config: ModelConfig | None = None) -> dict[str, str]:
    """Validate names, shapes and dtypes before reading anything; returns dlm key -> checkpoint key."""
    config = config or ck.config
    kmap = ck.family.key_map(config)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in build_network(config).state_dict().items()}
    wanted = set(kmap.values())
    missing = sorted(c for c in kmap.values() if c not in source.entries)
    tied_head = ck.family.checkpoint_key("lm_head.weight") if config.tie_embeddings else None
    unexpected = sorted(k for k in source.entries if k not in wanted and k != tied_head and not ck.family.is_ignored(k))
    if missing or unexpected:
        raise CheckpointError(
            f"{source.where}: weights do not match {ck.config_file.name} ({ck.family.name} layout); "
            f"missing {missing[:5]}{' …' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}"
        )
    for key, ckey in kmap.items():
        f, shape, dt = source.entries[ckey]
        if dt not in FLOAT_DTYPES:
            raise CheckpointError(
                f"{f}: tensor {ckey} is stored as {dt}; expected a floating-point weight ({', '.join(FLOAT_DTYPES)})"
            )
        if shape != shapes[key]:
            raise CheckpointError(f"{f}: tensor {ckey} has shape {shape}, {ck.config_file.name} implies {shapes[key]}")
    return kmap


def _set_parameter(model: nn.Module, key: str, value: torch.Tensor) -> None:
    owner, _, leaf = key.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, leaf, nn.Parameter(value))


def fill_model(ck: Checkpoint, source, *, device, dtype, config: ModelConfig | None = None) -> Transformer:
    """The network (`build_network`) for ck.config with every parameter read from `source` (validated first)."""
    config = config or ck.config
    kmap = check_tensors(ck, source, config)
    with torch.device("meta"):
        model = build_network(config)
    for key, ckey in sorted(kmap.items(), key=lambda kv: str(source.entries[kv[1]][0])):
        _set_parameter(model, key, source.take(ckey, dtype, device))
    fresh = ck.family.fresh_keys(config)
    if fresh:  # tensors the layout does not store (a pretrained body's new head): allocated here, initialised fresh
        shapes = {k: p.shape for k, p in model.named_parameters()}
        for key in fresh:
            _set_parameter(model, key, torch.empty(shapes[key], dtype=dtype or torch.float32, device=device))
        model.reset_parameters(fresh)
    if config.tie_embeddings and isinstance(model, Transformer):
        model.lm_head.weight = model.embed_tokens.weight
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:  # pragma: no cover - check_tensors covers every stored key
        raise CheckpointError(f"{ck.folder}: parameters left unfilled: {left[:5]}")
    return model.eval()


class GGUFSource:
    """The tensors of a GGUF file under the checkpoint family's (Hugging Face) names, dequantized to fp32 row chunk
    by row chunk: GGUF quantizes every row on its own, so rows [a, b) are read from the file (plain reads, no
    mapping kept) and dequantized by gguf-py alone. Names come from gguf-py's tensor-name map (the table
    llama.cpp's converter writes with); the q/k row permutation llama.cpp applies to `llama` models is undone
    head by head, as transformers' GGUF loader does."""

    def __init__(self, path: Path, wanted: list[str], config: ModelConfig):
        try:
            from gguf import MODEL_ARCH_NAMES, GGUFReader, get_tensor_name_map
        except ImportError:
            raise CheckpointError(f"{path}: reading GGUF needs gguf (pip install gguf)") from None
        self.where, self.config = path, config
        try:
            reader = GGUFReader(path)
            field = reader.fields["general.architecture"]
            self.arch = bytes(field.parts[field.data[0]]).decode()
            tensors = list(reader.tensors)
        except (KeyError, ValueError, OSError, IndexError) as e:
            raise CheckpointError(f"{path}: unreadable GGUF file ({e})") from None
        arch = next((k for k, v in MODEL_ARCH_NAMES.items() if v == self.arch), None)
        if arch is None:
            raise CheckpointError(f"{path}: GGUF architecture {self.arch!r} is not known to gguf-py")
        names = get_tensor_name_map(arch, config.n_layers)
        to_hf = {}
        for hf in wanted:
            base, _, suffix = hf.rpartition(".")
            g = names.get_name(base)
            if g is not None:
                to_hf[f"{g}.{suffix}"] = hf
        self.entries: dict[str, tuple[Path, tuple[int, ...], str]] = {}
        self.tensors: dict[str, tuple[str, object, int, int]] = {}  # key -> (GGUF name, type, bytes, file offset)
        for t in tensors:
            key = to_hf.get(t.name, t.name)
            shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # GGUF lists dims innermost first
            self.entries[key] = (path, shape, "F32")  # every type dequantizes to fp32
            self.tensors[key] = (t.name, t.tensor_type, int(t.n_bytes), int(t.data_offset))
        del reader, tensors, field  # the parsed metadata (a whole tokenizer's worth of small arrays) goes now
        gc.collect()  # the reader's fields hold reference cycles: free them before the weights are allocated

    @staticmethod
    def _rows(fh, tensor: tuple, a: int, b: int, row_bytes: int) -> torch.Tensor:
        from gguf import dequantize

        name, qtype, _, offset = tensor
        fh.seek(offset + a * row_bytes)
        raw = np.empty((b - a, row_bytes), dtype=np.uint8)
        if fh.readinto(memoryview(raw).cast("B")) != raw.nbytes:
            raise ValueError(f"file ends inside tensor {name}")
        return torch.from_numpy(np.ascontiguousarray(dequantize(raw, qtype), dtype=np.float32))

    def take(self, key: str, dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
        _, shape, _ = self.entries[key]
        t = self.tensors[key]
        dest = torch.empty(shape, dtype=dtype or torch.float32, device=device)
        flat = dest.view(-1, shape[-1]) if len(shape) > 1 else dest.view(1, -1)
        rows = flat.shape[0]
        row_bytes = t[2] // rows
        heads = self._permuted_heads(key)
        group = rows // heads if heads else 1  # rows that must be read together (one head's)
        step = max(group, (CHUNK_BYTES // max(1, 4 * flat.shape[1])) // group * group)
        try:
            with open(self.where, "rb") as fh:
                for a in range(0, rows, step):
                    b = min(rows, a + step)
                    part = self._rows(fh, t, a, b, row_bytes)
                    if heads:  # llama.cpp stores each head's rows as (2, dim/2) pairs; put them back as (dim/2, 2)
                        part = part.reshape(-1, group // 2, 2, part.shape[-1]).transpose(1, 2).reshape(part.shape)
                    flat[a:b].copy_(part)
        except (ValueError, OSError, NotImplementedError) as e:
            raise CheckpointError(f"{self.where}: unreadable GGUF tensor {t[0]} ({e})") from None
        return dest

    def _permuted_heads(self, key: str) -> int:
        if self.arch != "llama":
            return 0
        if key.endswith("q_proj.weight"):
            return self.config.n_heads
        if key.endswith("k_proj.weight"):
            return self.config.kv_heads
        return 0


def load_model(ck: Checkpoint, *, device="cpu", dtype=None, config: ModelConfig | None = None) -> Transformer:
    """The checkpoint's weights in dlm's Transformer, on `device`, floating tensors in `dtype` (None: as stored).
    `config`: build the network with this config instead of the checkpoint's (same shapes: e.g. the block-causal
    network a causal checkpoint is adapted into). An adapter folder gives its base with the adapter merged."""
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    from .quantize import is_quantized, load_quantized

    if is_quantized(ck):
        return load_quantized(ck, device=device, dtype=dtype)
    if ck.base is not None:
        from .adapters import load_adapted

        return load_adapted(ck, device=device, dtype=dtype, config=config)
    config = config or ck.config
    if ck.gguf_file is not None:
        source = GGUFSource(ck.gguf_file, list(ck.family.key_map(config).values()), config)
    else:
        source = SafetensorsSource(ck.folder)
    return fill_model(ck, source, device=device, dtype=dtype, config=config)


def count_parameters(ck: Checkpoint) -> int:
    """Parameters stored in the checkpoint, from the headers alone (a GGUF: from the config; an adapter folder:
    its base's, which the merged network has)."""
    if ck.base is not None:
        return count_parameters(ck.base)
    from .onnx_runtime import is_onnx_export
    from .quantize import is_quantized

    if ck.gguf_file is not None or is_quantized(ck) or is_onnx_export(ck):
        return ck.config.num_parameters()
    source = SafetensorsSource(ck.folder)
    total = 0
    for _, shape, _ in source.entries.values():
        n = 1
        for s in shape:
            n *= s
        total += n
    return total
