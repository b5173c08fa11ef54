"""Export a dlm model to ONNX: a folder that `dlm.load(DIR)` opens with the onnxruntime backend.

The folder: config.json (a normal dlm config, as `save_pretrained` writes it, float32), generation_config.json,
the tokenizer files, onnx_config.json (how it was exported: opset, graphs with their inputs and outputs, torch
version, exporter) and two graphs of the float32 network:

- model.onnx: the plain forward. input_ids, attention_mask (B, L) int64 -> logits (B, L, V).
- decoder.onnx: the stepping graph the samplers use (`dlm.hub.onnx_runtime.OnnxDenoiser`). input_ids,
  position_ids (B, L) int64; mask (B, 1, L, K) bool, True = may attend; logits_index (B, A) int64; write_slots
  (B, L) int64; per layer past_key_i, past_value_i (B, H_kv, K, D) float32: the buffers the queries attend to,
  into which this forward's K/V are scattered at write_slots (dim 2). -> logits (B, A, V) and per layer key_i,
  value_i (B, H_kv, L, D): this forward's K/V. The mask is an input, so the graph holds no attention kind.

Both are traced from `Transformer.forward` itself (the decoder with an export-only cache object in its KV hook);
nothing of the network is written twice. Batch, length, key and logit counts are dynamic.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..configs import to_dict
from ..errors import CheckpointError, ConfigError, check_choice
from ..model import Transformer
from .checkpoint import CONFIG_NAME, GENERATION_CONFIG_NAME, _atomic_dir, config_dict
from .onnx_runtime import DECODER_INPUTS, DECODER_ONNX, MODEL_ONNX, ONNX_CONFIG_NAME, kv_names, require

OPSET = 18  # the lowest opset the dynamo exporter writes: the widest choice of runtimes
GRAPHS = (MODEL_ONNX, DECODER_ONNX)
EXTERNAL_DATA_BYTES = 1 << 30  # larger networks keep their weights beside the graph (protobuf's 2 GB limit)


class _ExportCache:
    """The KV hook while tracing decoder.onnx: scatters a layer's fresh K/V into its past buffer at the write slots
    (the graph's inputs) and records them (its outputs)."""

    def __init__(self, past: list[torch.Tensor], write_slots: torch.Tensor):
        self.past, self.write_slots, self.fresh = past, write_slots, []

    def slots(self, batch: int, q_len: int, device):
        return self.write_slots, self.past[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        self.fresh += [k, v]
        idx = self.write_slots[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        return self.past[2 * layer].scatter(2, idx, k), self.past[2 * layer + 1].scatter(2, idx, v)


class _Decoder(nn.Module):
    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, mask, logits_index, write_slots, *past):
        cache = _ExportCache(list(past), write_slots)
        logits = self.model(
            input_ids, attention_mask=mask, position_ids=position_ids, cache=cache, logits_index=logits_index
        )
        return (logits, *cache.fresh)


class _Forward(nn.Module):
    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask=attention_mask)


def _graphs(model: Transformer):
    """(file, module, example args, input names, output names, dynamic shapes) of each graph. Example sizes are
    distinct and >= 2, so the tracer keeps every dimension symbolic."""
    cfg = model.config
    B, L, K, A = 2, 3, 5, 2
    kv = tuple(torch.zeros(B, cfg.kv_heads, K, cfg.dim_head) for _ in range(2 * cfg.n_layers))
    ids = torch.zeros(B, L, dtype=torch.long)  # every example a tensor of its own: the tracer ties aliased inputs
    decoder_args = (ids, torch.zeros_like(ids), torch.ones(B, 1, L, K, dtype=torch.bool),
                    torch.zeros(B, A, dtype=torch.long), torch.arange(L).expand(B, L).contiguous(), *kv)  # fmt: skip
    b, n, k, a = (torch.export.Dim(name) for name in ("batch", "length", "keys", "n_logits"))
    decoder_shapes = ({0: b, 1: n}, {0: b, 1: n}, {0: b, 2: n, 3: k}, {0: b, 1: a}, {0: b, 1: n},
                      tuple({0: b, 2: k} for _ in kv))  # fmt: skip
    return [
        (MODEL_ONNX, _Forward(model), (ids, torch.ones(B, L, dtype=torch.long)), ["input_ids", "attention_mask"],
         ["logits"], ({0: b, 1: n}, {0: b, 1: n})),
        (DECODER_ONNX, _Decoder(model), decoder_args, [*DECODER_INPUTS, *kv_names(cfg.n_layers, "past_")],
         ["logits", *kv_names(cfg.n_layers)], decoder_shapes),
    ]  # fmt: skip


def _axes(shapes, names) -> dict:
    """The TorchScript exporter's dynamic_axes from the dynamo exporter's dynamic shapes."""
    flat = [*shapes[:-1], *shapes[-1]] if isinstance(shapes[-1], tuple) else list(shapes)
    return {n: {d: dim.__name__ for d, dim in s.items()} for n, s in zip(names, flat)}


def _export_graph(module, args, path: Path, inputs, outputs, shapes, opset: int, external: bool) -> str:
    """Write one graph; returns the exporter that wrote it."""
    try:
        torch.onnx.export(module, args, str(path), dynamo=True, dynamic_shapes=shapes, input_names=inputs,
                          output_names=outputs, opset_version=opset, external_data=external, verbose=False)  # fmt: skip
        return "dynamo"
    except Exception as e:  # noqa: BLE001  (any failure of torch.export / onnxscript: the TorchScript exporter next)
        dynamo_error = e
    # Fallback: the legacy TorchScript exporter traces the same module, should the dynamo exporter refuse it.
    axes = {**_axes(shapes, inputs), **{n: {} for n in outputs}}
    axes["logits"] = {0: "batch", 1: "n_logits" if "logits_index" in inputs else "length"}
    for n in outputs[1:]:
        axes[n] = {0: "batch", 2: "length"}
    torch.onnx.register_custom_op_symbolic("aten::rms_norm", _rms_norm, opset)  # it has no translation of its own
    try:
        torch.onnx.export(module, args, str(path), dynamo=False, input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=opset)  # fmt: skip
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(
            f"{path.name}: ONNX export failed (dynamo exporter: {dynamo_error}; TorchScript exporter: {e})"
        ) from None
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::rms_norm", opset)
    return "torchscript"


def _rms_norm(g, x, normalized_shape, weight, eps):
    """aten::rms_norm over the last dimension (`RMSNorm`'s only use) for the TorchScript exporter:
    x * weight / sqrt(mean(x * x) + eps)."""
    from torch.onnx import symbolic_helper

    eps = symbolic_helper._maybe_get_const(eps, "f")
    axes = g.op("Constant", value_t=torch.tensor([-1], dtype=torch.long))
    mean = g.op("ReduceMean", g.op("Mul", x, x), axes, keepdims_i=1)
    rms = g.op("Sqrt", g.op("Add", mean, g.op("Constant", value_t=torch.tensor(float(eps)))))
    return g.op("Mul", g.op("Div", x, rms), weight)


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' deprecation, axis-naming and missing-torchvision notes while exporting."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _as_parts(lm_or_path):
    """(float32 CPU Transformer, tokenizer, generation config, diffusion config) of a DiffusionLM, a Transformer or
    anything `DiffusionLM.from_pretrained` opens."""
    from .pipeline import DiffusionLM

    if isinstance(lm_or_path, Transformer):
        model, tok, gen, diff = lm_or_path, None, None, None
    else:
        lm = lm_or_path
        if not isinstance(lm, DiffusionLM):
            lm = DiffusionLM.from_pretrained(lm_or_path, dtype="fp32")
        if not isinstance(lm.model, Transformer):
            kind = type(lm.model).__name__
            raise CheckpointError(f"{lm.path}: only a torch model exports to ONNX (this one is a {kind})")
        model, tok, gen, diff = lm.model, lm.tokenizer, lm.generation_config, lm.diffusion_config
    p = next(model.parameters())
    if p.dtype != torch.float32 or p.device.type != "cpu":
        model = copy.deepcopy(model).to("cpu", torch.float32)
    return model.eval(), tok, gen, diff


ORT_BITS = (8, 4)


def _quantize_graph(path: Path, bits: int, block_size: int) -> dict:
    """Quantise a graph's MatMul weights in place with ONNX Runtime's own tools: 8 bits: `quantize_dynamic` (int8
    weights per output channel, activations quantised per call: MatMulInteger); 4 bits: `MatMulNBitsQuantizer`
    (int4 weights in blocks of `block_size`, symmetric: the MatMulNBits and GatherBlockQuantized contrib ops).
    Returns what was done."""
    onnx = require("onnx", "ONNX quantisation")
    require("onnxruntime", "ONNX quantisation")
    tmp = path.with_suffix(".q.onnx")
    with _quiet(), contextlib.ExitStack() as stack:
        # the quantisers log advice and every node they visit, on the root logger and their own
        for name in ["", "onnxruntime.quantization.matmul_nbits_quantizer"]:
            log = logging.getLogger(name)
            stack.callback(log.setLevel, log.level)
            log.setLevel(logging.ERROR)
        if bits == 8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(path, tmp, weight_type=QuantType.QInt8, per_channel=True)
            how = {"method": "onnxruntime.quantize_dynamic", "bits": 8, "weights": "int8 per channel",
                   "activations": "uint8, per call"}  # fmt: skip
        else:
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            ops = {"op_types_to_quantize": ("MatMul", "Gather"), "quant_axes": (("Gather", 1),)}
            q = MatMulNBitsQuantizer(onnx.load(str(path)), block_size=block_size, is_symmetric=True, **ops)
            q.process()
            q.model.save_model_to_file(str(tmp), use_external_data_format=False)
            how = {"method": "onnxruntime.MatMulNBitsQuantizer", "bits": 4, "block_size": block_size,
                   "weights": "int4, symmetric (MatMul and the embedding Gather)"}  # fmt: skip
    tmp.replace(path)
    return how


def export_onnx(
    lm_or_path,
    out_dir: str | Path,
    *,
    opset: int | None = None,
    graphs: Sequence[str] = GRAPHS,
    bits: int | None = None,
    block_size: int = 32,
) -> Path:
    """Export a model (a DiffusionLM, a Transformer, or a folder / built-in name) to the ONNX folder `out_dir`
    (written atomically; an existing folder is replaced). opset: default OPSET. graphs: which of model.onnx and
    decoder.onnx to write (the samplers need decoder.onnx). bits: 8 or 4 quantises every graph's MatMul weights
    with ONNX Runtime's quantisers (`_quantize_graph`; recorded in onnx_config.json); None keeps float32.
    Returns out_dir."""
    for g in graphs:
        check_choice("graphs", g, GRAPHS)
    if bits is not None and bits not in ORT_BITS:
        raise ConfigError("bits", f"got {bits!r}; allowed: 8, 4 (or none for float32)")
    if bits == 4 and (not isinstance(block_size, int) or block_size < 16 or block_size & (block_size - 1)):
        raise ConfigError("block_size", f"got {block_size!r}; allowed: a power of two >= 16 (e.g. 32, 64, 128)")
    onnx = require("onnx", "ONNX export")
    require("onnxscript", "ONNX export")
    opset = OPSET if opset is None else opset
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not OPSET <= opset <= newest:
        raise ConfigError("opset", f"got {opset!r}; allowed: {OPSET} to {newest} (the installed onnx's newest)")
    model, tok, gen, diff = _as_parts(lm_or_path)
    if bits is not None and model.config.tie_embeddings:  # a tied head is a transposed lookup table, which the
        model = copy.deepcopy(model)  # quantisers skip (no constant weight): untie it so it is quantised too
        model.lm_head.weight = nn.Parameter(model.embed_tokens.weight.detach().clone())
        model.config.tie_embeddings = False
    out_dir = Path(out_dir)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    record = {"format": 1, "opset": opset, "torch_version": torch.__version__, "dtype": "float32", "graphs": {}}
    with _atomic_dir(out_dir) as tmp:
        cfg = config_dict(model.config, diff, torch_dtype="float32")
        (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
        if gen is not None:
            (tmp / GENERATION_CONFIG_NAME).write_text(json.dumps(to_dict(gen), indent=2) + "\n")
        if tok is not None:
            tok.save(tmp)
        for name, module, args, inputs, outputs, shapes in _graphs(model):
            if name not in graphs:
                continue
            with _quiet(), torch.no_grad():
                exporter = _export_graph(module.eval(), args, tmp / name, inputs, outputs, shapes, opset,
                                         nbytes > EXTERNAL_DATA_BYTES)  # fmt: skip
            record["graphs"][name] = {"exporter": exporter, "inputs": inputs, "outputs": outputs}
            if bits is not None:
                record["graphs"][name]["quantization"] = _quantize_graph(tmp / name, bits, block_size)
        (tmp / ONNX_CONFIG_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return out_dir
