"""The ONNX Runtime backend: `OnnxDenoiser` runs an export's decoder.onnx (`dlm.hub.onnx_export`) behind the
same call as `dlm.model.Transformer`, so the samplers drive it unchanged (`generate`, `generate_autoregressive`,
every sampling cache).

Everything but the network stays in torch and is the torch path's own code: positions and the 4-D attention
mask come from `dlm.model.transformer.attention_inputs`; the cache says which K/V buffers the queries attend to
and where this forward's K/V go (`KVCache.kv_buffers`); the graph scatters its fresh K/V there, attends, and
returns them; `cache.update` then stores them as after a torch forward. The graph knows no attention kind (the
mask is an input), so one export serves bidirectional, causal and block-causal configs alike.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError, InputError
from ..model import KVCache, ModelConfig
from ..model.transformer import attention_inputs

MODEL_ONNX = "model.onnx"
DECODER_ONNX = "decoder.onnx"
ONNX_CONFIG_NAME = "onnx_config.json"  # how the folder was exported (dlm.hub.onnx_export)
DECODER_INPUTS = ("input_ids", "position_ids", "mask", "logits_index", "write_slots")


def require(package: str, why: str):
    """Import an optional package of the `edge` extra, or a CheckpointError naming it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise CheckpointError(f'{why} needs the {package} package: pip install "dlm[edge]"') from None


def kv_names(n_layers: int, prefix: str = "") -> list[str]:
    """past_key_0, past_value_0, ... (prefix "past_": the graph's inputs) or key_0, value_0, ... (its outputs)."""
    return [f"{prefix}{kind}_{i}" for i in range(n_layers) for kind in ("key", "value")]


def has_onnx_graphs(folder: Path) -> bool:
    return (folder / DECODER_ONNX).is_file() or (folder / MODEL_ONNX).is_file()


def _numpy(t: torch.Tensor, dtype: torch.dtype):
    return t.detach().to("cpu", dtype).contiguous().numpy()


class OnnxDenoiser:
    """decoder.onnx behind `Transformer`'s call: float32 logits (B, L, V), or (B, A, V) at `logits_index`."""

    supports_canvas_cache = True  # the canvas caches work through `kv_buffers` / `update`

    def __init__(self, folder: str | Path, config: ModelConfig | None = None, *, threads: int | None = None):
        """folder: an export (config.json + decoder.onnx). config: the network's ModelConfig (default: the
        folder's config.json). threads: ONNX Runtime's intra-op threads (default: torch's)."""
        ort = require("onnxruntime", "the onnxruntime backend")
        folder = Path(folder)
        path = folder / DECODER_ONNX
        if config is None:
            from .checkpoint import load_model_config

            config = load_model_config(folder)[0]
        self.config, self.path = config, path
        if not path.is_file():
            raise CheckpointError(f"{path}: missing file (an ONNX export needs {DECODER_ONNX})")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types, not exported under a common base
            raise CheckpointError(f"{path}: unreadable ONNX graph ({e})") from None
        want = [*DECODER_INPUTS, *kv_names(config.n_layers, "past_")]
        got = [i.name for i in self.session.get_inputs()]
        if got != want:
            raise CheckpointError(
                f"{path}: inputs {got[:7]} do not match config.json ({config.n_layers} layers: {want[:7]} ...)"
            )
        self._outputs = ["logits", *kv_names(config.n_layers)]
        self._device_tensor = torch.zeros(0)  # what `parameters()` yields: the sampler reads the device off it

    def parameters(self):
        yield self._device_tensor

    def eval(self) -> "OnnxDenoiser":
        return self

    def __repr__(self) -> str:
        return f"OnnxDenoiser({str(self.path)!r})"

    @torch.no_grad()
    def __call__(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        logits_index: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """As `Transformer.forward`; `inputs_embeds` and `return_hidden` are not supported (the graph takes
        token ids and returns logits)."""
        if inputs_embeds is not None:
            raise InputError("inputs_embeds", "not supported by the onnxruntime backend; pass input_ids")
        if return_hidden:
            raise InputError("return_hidden", "not supported by the onnxruntime backend (its graph returns logits)")
        if input_ids is None:
            raise InputError("input_ids", "the onnxruntime backend needs input_ids")
        cfg, device = self.config, torch.device("cpu")
        B, L = input_ids.shape
        position_ids, mask = attention_inputs(cfg, attention_mask, position_ids, cache, B, L, device)
        # no cache: the forward attends to its own K/V only (an empty append cache says so: zeros, slots 0..L-1)
        store = cache if cache is not None else KVCache()
        shape = (B, cfg.kv_heads, L, cfg.dim_head)
        buffers = [store.kv_buffers(i, shape, torch.float32, device) for i in range(cfg.n_layers)]
        K = buffers[0][0].shape[2]
        mask = torch.ones((1, 1, L, K), dtype=torch.bool) if mask is None else mask
        if logits_index is None:
            logits_index = torch.arange(L)[None]
        feed = {
            "input_ids": _numpy(input_ids, torch.long),
            "position_ids": _numpy(position_ids.expand(B, L), torch.long),
            "mask": _numpy(mask.expand(B, 1, L, K), torch.bool),
            "logits_index": _numpy(logits_index.expand(B, -1), torch.long),
            "write_slots": _numpy(buffers[0][2].expand(B, L), torch.long),
        }
        for i, (k, v, _) in enumerate(buffers):
            feed[f"past_key_{i}"], feed[f"past_value_{i}"] = _numpy(k, torch.float32), _numpy(v, torch.float32)
        logits, *fresh = self.session.run(self._outputs, feed)
        if cache is not None:
            for i in range(cfg.n_layers):
                cache.update(i, torch.from_numpy(fresh[2 * i]), torch.from_numpy(fresh[2 * i + 1]))
        return torch.from_numpy(logits)


def check_decoder(folder: Path) -> None:
    """ConfigError("backend", ...) unless `folder` holds decoder.onnx."""
    if not (folder / DECODER_ONNX).is_file():
        raise ConfigError("backend", f"{folder} has no {DECODER_ONNX}; export it first: dlm export onnx MODEL DIR")


def is_onnx_export(ck) -> bool:
    """A checkpoint folder holding ONNX graphs and no safetensors weights: it opens with onnxruntime."""
    from .loading import INDEX_NAME, WEIGHTS_NAME

    folder = ck.folder
    return (
        ck.gguf_file is None
        and ck.base is None
        and has_onnx_graphs(folder)
        and not (folder / WEIGHTS_NAME).is_file()
        and not (folder / INDEX_NAME).is_file()
    )


def load_onnx_model(ck, *, device="cpu", dtype=None) -> OnnxDenoiser:
    """The OnnxDenoiser of an export folder's `Checkpoint` (float32 on the CPU: other dtypes and devices are
    refused by name)."""
    from .loading import resolve_device, resolve_dtype

    if resolve_dtype(dtype) not in (None, torch.float32):
        raise ConfigError("dtype", f"got {dtype!r}; the onnxruntime backend runs the float32 export: use fp32 or none")
    if resolve_device(device).type != "cpu":
        raise ConfigError("device", f"got {device!r}; the onnxruntime backend runs on cpu")
    if ck.gguf_file is not None or ck.base is not None:
        raise ConfigError("backend", f"onnxruntime loads an ONNX export folder (dlm export onnx), not {ck.config_file}")
    check_decoder(ck.folder)
    return OnnxDenoiser(ck.folder, ck.config)
