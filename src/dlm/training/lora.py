"""LoRA (and QLoRA) through PEFT on dlm's Transformer: inject adapters, and merge them back for export.

PEFT wraps the plain network (`get_peft_model`); only the adapter weights train. The export rebuilds the
full-precision base on CPU, loads the trained adapters into it and merges them (`merge_and_unload`), so
a QLoRA run never merges into dequantised 4-bit weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from .config import LoraSection


def _peft():
    try:
        import peft
    except ImportError:  # pragma: no cover - peft is in the `train` extra that setup installs
        raise ConfigError("lora.r", "LoRA needs PEFT: pip install 'dlm[train]' (or set lora.r: 0)") from None
    return peft


def peft_config(section: LoraSection):
    return _peft().LoraConfig(
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=list(section.target_modules),
        bias="none",
    )


def quantize_nf4(model: nn.Module, targets: list[str], device: torch.device) -> None:
    """QLoRA's base: replace the targeted linears with bitsandbytes 4-bit NF4 layers (CUDA only)."""
    if device.type != "cuda":
        raise ConfigError("lora.quantize", "nf4 (QLoRA) needs a CUDA GPU; on this machine use lora.quantize: none")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ConfigError("lora.quantize", "nf4 needs bitsandbytes: pip install bitsandbytes") from None
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                q = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    compute_dtype=torch.bfloat16,
                    quant_type="nf4",
                )
                q.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4")
                if child.bias is not None:
                    q.bias = nn.Parameter(child.bias.data.cpu(), requires_grad=False)
                setattr(parent, name, q.to(device))


def apply_lora(model: nn.Module, section: LoraSection, device: torch.device) -> nn.Module:
    """The PEFT model around `model`: base weights frozen, adapters trainable."""
    if section.quantize == "nf4":
        quantize_nf4(model, list(section.target_modules), device)
    return _peft().get_peft_model(model, peft_config(section))


def is_adapter_key(name: str) -> bool:
    return "lora_" in name


def merge_adapters(
    base: nn.Module,
    section: LoraSection,
    adapter_state: dict[str, torch.Tensor],
    adapter_dir: Path,
    base_name: str | None = None,
):
    """Load trained adapter tensors (PEFT-model names) into a fresh PEFT wrap of `base`, save the adapter
    folder (adapter_model.safetensors + adapter_config.json, whose base_model_name_or_path is `base_name` when
    given) and return the merged plain network."""
    pm = _peft().get_peft_model(base, peft_config(section))
    missing = [k for k in adapter_state if k not in dict(pm.named_parameters())]
    if missing:
        raise ConfigError("lora", f"adapter tensors {missing[:3]} do not fit the model; was the run's config changed?")
    pm.load_state_dict(adapter_state, strict=False)
    pm.save_pretrained(str(adapter_dir), safe_serialization=True, save_embedding_layers=False)
    if base_name is not None:
        from ..hub.adapters import record_base

        record_base(Path(adapter_dir), base_name)
    return pm.merge_and_unload()
