"""Weight quantisation of any loadable model with torchao, written as a dlm folder that `dlm.load` reads back.

torchao does the quantisation (scales, rounding, the quantised tensor types and their matmuls); this module picks
its configurations, stores the result as safetensors (torchao's own flattening: each quantised weight becomes
plain tensors `<module>._weight_qdata`, `_scale`, `_zero_point` plus JSON metadata naming an allow-listed tensor
class; no pickle) and rebuilds the network from them. Schemes:

- `--bits 8` (`weight_only`): int8 weights, one scale per output row (torchao `Int8WeightOnlyConfig`);
- `--bits 8 --scheme dynamic`: int8 weights and int8 activations quantised per token at run time
  (`Int8DynamicActivationInt8WeightConfig`);
- `--bits 4`: int4 weights with one scale per group of `group_size` inputs (`IntxWeightOnlyConfig`, int4,
  `PerGroup`). torchao keeps int4 values unpacked in int8 for the CPU matmul; on disk they are packed two per byte
  with torchao's bit packing, so the file holds 4 bits per weight.

Every Linear (attention, MLP, LM head) and Embedding is quantised (embeddings weight-only: int8 rows with one
scale each, or int4 groups); norms stay floating point. A tied head is untied and both copies are quantised.
config.json records the scheme under `"quantization"`; the folder has the tokenizer and generation settings of the
source model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..model import Transformer
from ..model.layout import row_major
from .loading import Checkpoint, resolve_device, resolve_dtype

BITS = (8, 4)
SCHEMES = ("weight_only", "dynamic")
QUANT_KEY = "quantization"
WEIGHTS_NAME = "model.safetensors"
PACKED = "int4_packed"  # metadata: qdata tensors stored two int4 values per byte


def _torchao():
    """torchao, imported quietly: its CUDA-only extensions log load failures on a CPU machine."""
    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.CRITICAL)
        import torchao.quantization as q
        from torchao.prototype.dtypes.uintx import bitpacking
        from torchao.prototype.safetensors import safetensors_support as st
        from torchao.quantization.granularity import PerGroup
    except ImportError:
        raise CheckpointError('quantised models need torchao: pip install "dlm[edge]"') from None
    finally:
        root.setLevel(level)
    return q, st, bitpacking, PerGroup


def check_spec(bits, scheme: str = "weight_only", group_size: int = 32, config=None) -> dict:
    """The `"quantization"` section for these settings, validated (each bad field named with what is allowed)."""
    if bits not in BITS:
        raise ConfigError("bits", f"got {bits!r}; allowed: {', '.join(map(str, BITS))}")
    if scheme not in SCHEMES:
        raise ConfigError("scheme", f"got {scheme!r}; allowed: {', '.join(SCHEMES)}")
    if scheme == "dynamic" and bits != 8:
        raise ConfigError("scheme", "dynamic (int8 activations) needs --bits 8; int4 is weight-only")
    spec = {"method": "torchao", "bits": int(bits), "scheme": scheme}
    if bits == 4:
        if not isinstance(group_size, int) or group_size < 8 or group_size & (group_size - 1):
            raise ConfigError("group_size", f"got {group_size!r}; allowed: a power of two >= 8 (e.g. 32, 64, 128)")
        if config is not None:
            widths = {config.d_model, config.ff_dim, config.n_heads * config.dim_head}
            bad = sorted(w for w in widths if w % group_size)
            if bad:
                raise ConfigError("group_size", f"got {group_size}; it must divide every layer's input width {bad}")
        spec["group_size"] = group_size
    return spec


def _ao_config(spec: dict, embedding: bool = False):
    q, _, _, PerGroup = _torchao()
    if spec["bits"] == 4:
        return q.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(spec["group_size"]))
    if embedding:  # a table lookup: int8 rows with one scale each
        from torchao.quantization.granularity import PerAxis

        return q.IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    if spec["scheme"] == "dynamic":
        return q.Int8DynamicActivationInt8WeightConfig(version=2)
    return q.Int8WeightOnlyConfig(version=2)


def quantize_model(model: Transformer, spec: dict) -> Transformer:
    """Quantise every Linear and Embedding of `model` in place (float32 first, so scales are computed from
    full-precision weights); a tied LM head is untied first (both copies are quantised)."""
    q = _torchao()[0]
    model = model.float()
    if model.config.tie_embeddings:
        model.lm_head.weight = nn.Parameter(model.embed_tokens.weight.detach().clone())
        model.config.tie_embeddings = False
    q.quantize_(model, _ao_config(spec), filter_fn=lambda m, _: isinstance(m, nn.Linear))
    q.quantize_(model, _ao_config(spec, embedding=True), filter_fn=lambda m, _: isinstance(m, nn.Embedding))
    return model


def _pack(tensors: dict, bitpacking) -> dict:
    out = {}
    for k, t in tensors.items():
        if k.endswith("_qdata"):  # int4 in [-8, 7] -> [0, 15] -> two per byte
            t = bitpacking.pack((t.to(torch.int16) + 8).to(torch.uint8), 4, dim=-1)[0]
        out[k] = t.contiguous()
    return out


def _unpack(tensors: dict, bitpacking) -> dict:
    out = {}
    for k, t in tensors.items():
        if k.endswith("_qdata"):
            t = (bitpacking.unpack([t], 4, dim=-1).to(torch.int16) - 8).to(torch.int8)
        out[k] = t
    return out


def save_quantized(lm, out_dir, spec: dict, *, embed_dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write `lm` (a DiffusionLM whose model `quantize_model` has quantised) as a dlm folder."""
    from .checkpoint import CONFIG_NAME, GENERATION_CONFIG_NAME, _atomic_dir, config_dict
    from ..configs import to_dict

    _, st, bitpacking, _ = _torchao()
    state = {}
    for k, v in lm.model.state_dict().items():
        v = v.detach().cpu()
        state[k] = v.to(embed_dtype) if type(v) is torch.Tensor and v.is_floating_point() else v
    tensors, metadata = st.flatten_tensor_state_dict(state)
    if spec["bits"] == 4:
        tensors = _pack(tensors, bitpacking)
        metadata[PACKED] = "1"
    out_dir = Path(out_dir)
    with _atomic_dir(out_dir) as tmp:
        cfg = config_dict(lm.model.config, lm.diffusion_config, torch_dtype=str(embed_dtype).replace("torch.", ""))
        cfg[QUANT_KEY] = spec
        (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
        save_file({k: t.contiguous() for k, t in tensors.items()}, str(tmp / WEIGHTS_NAME), metadata=metadata)
        (tmp / GENERATION_CONFIG_NAME).write_text(json.dumps(to_dict(lm.generation_config), indent=2) + "\n")
        lm.tokenizer.save(tmp)
    return out_dir


def quantize(model, out_dir, bits: int, *, scheme: str = "weight_only", group_size: int = 32, **load_kw) -> Path:
    """Load `model` (anything `dlm.load` takes), quantise it and write a dlm folder at `out_dir`."""
    from .pipeline import DiffusionLM

    spec = check_spec(bits, scheme, group_size)  # fail before loading anything
    lm = DiffusionLM.from_pretrained(model, dtype="fp32", **load_kw)
    if getattr(lm.model, "is_quantized", False) or not isinstance(lm.model, Transformer):
        raise ConfigError(
            "model",
            f"{model}: not a floating-point dlm network (already quantised, or ONNX); quantise the original model",
        )
    spec = check_spec(bits, scheme, group_size, lm.model.config)
    row_major(lm.model)  # torchao quantises contiguous (out, in) weights
    quantize_model(lm.model, spec)
    return save_quantized(lm, out_dir, spec)


def is_quantized(ck: Checkpoint) -> bool:
    return ck.is_dlm and isinstance(ck.raw.get(QUANT_KEY), dict)


def load_quantized(ck: Checkpoint, *, device="cpu", dtype=None) -> Transformer:
    """The network of a quantised dlm folder: torchao tensors rebuilt from safetensors (names and shapes checked
    against the config before any weight is used); float tensors in `dtype` (None: float32)."""
    _, st, bitpacking, _ = _torchao()
    spec = ck.raw[QUANT_KEY]
    check_spec(spec.get("bits"), spec.get("scheme", "weight_only"), spec.get("group_size", 32), ck.config)
    device, dtype = resolve_device(device), resolve_dtype(dtype) or torch.float32
    f = ck.folder / WEIGHTS_NAME
    if not f.is_file():
        raise CheckpointError(f"{ck.folder}: missing weights ({WEIGHTS_NAME}); a quantised folder has one file")
    try:
        with safe_open(str(f), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        if metadata.get(PACKED) == "1":
            tensors = _unpack(tensors, bitpacking)
        state, left = st.unflatten_tensor_state_dict(tensors, metadata)
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{f}: corrupt or unreadable quantised safetensors file ({e})") from None
    with torch.device("meta"):
        model = Transformer(ck.config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected)) + sorted(left)
    if missing or unexpected:
        raise CheckpointError(
            f"{f}: weights do not match config.json; missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(
                f"{f}: tensor {k} has shape {tuple(v.shape)}, config.json implies {tuple(expected[k].shape)}"
            )
        if type(v) is torch.Tensor and v.is_floating_point():
            state[k] = v.to(dtype)
    model.load_state_dict(state, assign=True, strict=True)
    model.is_quantized = True
    return model.to(device).eval()
