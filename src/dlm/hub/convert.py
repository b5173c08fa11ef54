"""`dlm convert`: write any supported checkpoint as a dlm folder, or a dlm model in a foreign layout (LLaDA)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import check_choice
from ..model import Transformer
from .checkpoint import CONFIG_NAME, GENERATION_CONFIG_NAME, _atomic_dir, save_pretrained, write_weights
from .families import Family, get_family
from .hf_tokenizer import has_tokenizer
from .loading import load_model, open_checkpoint, open_tokenizer, resolve_dtype

TARGETS = ("dlm", "llada")


def save_in_family_layout(
    model: Transformer,
    out_dir: str | Path,
    family: Family,
    *,
    tokenizer=None,
    max_shard_size: int | str = "2GB",
    dtype=None,
) -> Path:
    """Write `model` with the family's config.json and tensor names (sharded safetensors + index), its
    tokenizer files and an HF-style generation_config.json with the special ids. Atomic like save_pretrained."""
    out_dir = Path(out_dir)
    dtype = resolve_dtype(dtype)
    raw = family.export_config(model.config)  # refuses what the family cannot express, before writing anything
    params = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for key, ckey in family.key_map(model.config).items():
        t = params[key].detach().cpu()
        state[ckey] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    raw["torch_dtype"] = str(next(iter(state.values())).dtype).replace("torch.", "")
    c = model.config
    gen = {"bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id}
    with _atomic_dir(out_dir) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(raw, indent=2) + "\n")
        (tmp / GENERATION_CONFIG_NAME).write_text(json.dumps(gen, indent=2) + "\n")
        write_weights(state, tmp, max_shard_size)
        if tokenizer is not None:
            tokenizer.save(tmp)
    return out_dir


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    to: str = "dlm",
    dtype=None,
    max_shard_size: int | str = "2GB",
    gguf_file: str | None = None,
) -> Path:
    """Load `src` (any supported folder or GGUF) and write it to `dst` as a dlm folder (`to="dlm"`, with the
    family's sampling defaults as generation_config.json) or in LLaDA's layout (`to="llada"`). The tokenizer
    files travel along when `src` has them."""
    from .pipeline import checkpoint_settings

    check_choice("--to", to, TARGETS)
    ck = open_checkpoint(src, gguf_file)
    target = get_family(to)
    target.export_config(ck.config)  # refuse what the target cannot express before reading any weight
    model = load_model(ck, dtype=dtype)
    tok_folder, tok_gguf = ck.tokenizer_location
    tokenizer = open_tokenizer(ck) if has_tokenizer(tok_folder, tok_gguf) else None
    if to == "dlm":
        gen, diff = checkpoint_settings(ck)
        return save_pretrained(
            model,
            dst,
            tokenizer=tokenizer,
            generation_config=gen,
            diffusion_config=None if model.config.attention == "causal" else diff,
            max_shard_size=max_shard_size,
            dtype=dtype,
        )
    return save_in_family_layout(model, dst, target, tokenizer=tokenizer, max_shard_size=max_shard_size, dtype=dtype)
