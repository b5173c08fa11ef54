"""Building a run's parts from its config: device, tokenizer, network config and network, datasets, optimizer
and learning-rate schedule, autocast. Plain functions of the config (and of the process's place in a
torchrun job); the Trainer calls them in order."""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..model import Transformer
from ..model import build_network as fresh_network
from . import distributed as D
from .config import RunConfig
from .data import build_dataset


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device", "cuda requested but torch sees no CUDA device; allowed here: auto, cpu")
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def open_init_checkpoint(cfg: RunConfig):
    """The `train.init_from` model folder, opened (None: a fresh network)."""
    if not cfg.train.init_from:
        return None
    from ..hub.loading import open_checkpoint

    return open_checkpoint(cfg.train.init_from)


def build_tokenizer(cfg: RunConfig, out: Path, env: D.DistEnv, init_checkpoint=None, log=print):
    """tokenizer.path, else the init_from model's tokenizer, else the run's own BPE (trained once, on the
    training sources, into OUT/tokenizer; under torchrun by rank 0 while the others wait)."""
    from ..tokenizer import DLMTokenizer

    tc = cfg.tokenizer
    if tc.image_tokenizer:  # fail now, not at the export after the run
        from ..multimodal.image_tokenizer import ImageTokenizer

        ImageTokenizer.load(tc.image_tokenizer)
    if tc.path:
        return DLMTokenizer.from_dir(tc.path)
    if init_checkpoint is not None:
        from ..hub.loading import open_tokenizer

        return open_tokenizer(init_checkpoint)
    tok_dir = out / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file():
        return DLMTokenizer.from_dir(tok_dir)
    if env.distributed:  # rank 0 trains the BPE, the others read it
        if env.is_main:
            _train_tokenizer(cfg, tok_dir, log)
        D.barrier()
        return DLMTokenizer.from_dir(tok_dir)
    return _train_tokenizer(cfg, tok_dir, log)


def _train_tokenizer(cfg: RunConfig, tok_dir: Path, log):
    from ..tokenizer import train_tokenizer
    from .data import document_texts, expand_sources

    tc = cfg.tokenizer
    files = expand_sources(cfg.data.train, "data.train", cfg.data.exclude)
    log(
        f"training a {tc.vocab_size}-token BPE on {len(files)} files (up to {tc.max_train_bytes / 1e6:.0f} MB "
        "of their text)"
    )
    texts = document_texts(files, cfg.data.text_field, tc.max_train_bytes)
    return train_tokenizer([], tc.vocab_size, out_dir=tok_dir, texts=texts)


def build_datasets(cfg: RunConfig, tokenizer, out: Path, env: D.DistEnv):
    """(train, valid). Rank 0 tokenises into the cache first; the other ranks then memory-map the same files."""
    if env.distributed and not env.is_main:
        D.barrier()
        return build_dataset(cfg.data, tokenizer, out / "data")
    data = build_dataset(cfg.data, tokenizer, out / "data")
    if env.distributed:
        D.barrier()
    return data


def use_mask_token(cfg: RunConfig, tokenizer, model_config):
    """`tokenizer.mask_token`: the named vocabulary token becomes the model's mask token (and the tokenizer's, so
    that the saved tokenizer files name it). Refused: a token the vocabulary lacks, one of the EOS/PAD/BOS tokens
    (the data is full of them), or a token other than a mask token the model or tokenizer already has."""
    name = cfg.tokenizer.mask_token
    if name is None:
        return model_config
    field = "tokenizer.mask_token"
    tid = tokenizer.token_to_id(name)
    if tid is None or tid >= model_config.vocab_size:
        specials = sorted(tokenizer.backend.get_added_tokens_decoder().items())
        shown = ", ".join(repr(t.content) for _, t in specials[:12]) + (" …" if len(specials) > 12 else "")
        raise ConfigError(
            field, f"{name!r} is not a token of the model's vocabulary; its special tokens: {shown or 'none'}"
        )
    roles = {"EOS": model_config.eos_token_id, "PAD": model_config.pad_token_id, "BOS": model_config.bos_token_id}
    for role, i in roles.items():
        if i == tid:
            raise ConfigError(
                field, f"{name!r} (id {tid}) is the model's {role} token; pick a token the data never uses"
            )
    for owner, have in (("model", model_config.mask_token_id), ("tokenizer", tokenizer.mask_token_id)):
        if have is not None and have != tid:
            raise ConfigError(
                field,
                f"{name!r} (id {tid}) is not the mask token the {owner} already has "
                f"({tokenizer.id_to_token(have)!r}, id {have}); leave tokenizer.mask_token unset",
            )
    if tokenizer.mask_token_id is None and hasattr(tokenizer, "set_special_token"):
        tokenizer.set_special_token("mask", tid)
    return replace(model_config, mask_token_id=tid)


def base_model_config(cfg: RunConfig, tokenizer, init_checkpoint=None):
    """The network's config before the objective fits its attention: the init_from model's own, or the run's
    `model` section with the tokenizer's vocabulary and special ids; with `tokenizer.mask_token`'s mask id."""
    if init_checkpoint is not None:
        mc = init_checkpoint.config
        if max(cfg.data.seq_len, 1) > mc.max_seq_len:
            raise ConfigError("data.seq_len", f"{cfg.data.seq_len} exceeds the model's max_seq_len {mc.max_seq_len}")
        return use_mask_token(cfg, tokenizer, mc)
    mc = replace(
        cfg.model,
        vocab_size=tokenizer.vocab_size,
        mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        max_seq_len=max(cfg.model.max_seq_len, cfg.data.seq_len),
    )
    return use_mask_token(cfg, tokenizer, mc)


def base_network(cfg: RunConfig, model_config, device, init_checkpoint=None) -> Transformer:
    """The network before LoRA: the init_from checkpoint's weights (fp32) in `model_config` (the network as the
    objective fits it: e.g. block-causal, with the run's mask token), or a fresh seeded init (`build_network`: the
    network `model.network` names; also with train.init_random, in the init_from model's network config)."""
    if init_checkpoint is not None and not cfg.train.init_random:
        from ..hub.loading import load_model

        return load_model(init_checkpoint, device=device, dtype="fp32", config=model_config)
    torch.manual_seed(cfg.train.seed)
    return fresh_network(model_config).to(device)


def build_network(cfg: RunConfig, model_config, device, init_checkpoint=None) -> nn.Module:
    """The network to train: the base network, PEFT-wrapped under LoRA."""
    model = base_network(cfg, model_config, device, init_checkpoint)
    if cfg.lora.enabled:
        from .lora import apply_lora

        model = apply_lora(model, cfg.lora, device)
    return model


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine to min_ratio at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(cfg: RunConfig, module: nn.Module, device: torch.device, env: D.DistEnv):
    """(AdamW, LambdaLR): weight decay on matrices only; warmup + cosine to optim.min_lr_ratio."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    o = cfg.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda" and not (env.distributed and cfg.train.distributed == "fsdp")
    optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=fused or None)
    total = cfg.train.max_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, o.warmup_steps, total, o.min_lr_ratio)
    )
    return optimizer, scheduler


def autocast(cfg: RunConfig, device: torch.device, env: D.DistEnv):
    """bf16 autocast when train.dtype is bf16 (not under FSDP2, whose mixed-precision policy casts instead)."""
    fsdp_mp = env.distributed and cfg.train.distributed == "fsdp"
    if cfg.train.dtype == "bf16" and device.type in ("cpu", "cuda") and not fsdp_mp:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
