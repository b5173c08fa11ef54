"""How the sampler asks the model for logits: CFG doubling (the unconditional canvas comes from the noise
process), bf16 autocast, optional torch.compile, and the sampling cache (`caches.py`: none / prefix / dual)."""

from __future__ import annotations

import contextlib

import torch

from .caches import CACHES
from .config import GenerationConfig


def compiled_forward(model):
    """`torch.compile(model, dynamic=True)`, built once per model (kept outside the module tree, so it never
    shows up in `state_dict`)."""
    fn = model.__dict__.get("_dlm_compiled")
    if fn is None:
        fn = torch.compile(model, dynamic=True)
        object.__setattr__(model, "_dlm_compiled", fn)
    return fn


class ModelRunner:
    """One object per generation. `logits()` returns float32 logits (R, A, V) at the requested slots, with CFG
    applied; `grow()` / `select_rows()` keep the cache aligned with the live rows of the batch."""

    def __init__(self, model, config: GenerationConfig, unconditional, length: int, device: torch.device):
        self.model = model
        self.fn = compiled_forward(model) if config.compile else model
        self.cfg_scale = config.cfg_scale
        self.unconditional = unconditional  # (canvas, hide) -> CFG's unconditional canvas (the process decides)
        self.cache = CACHES[config.cache](model, length, config.cache_refresh, config.cfg_scale)
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if config.dtype == "bfloat16"
            else contextlib.nullcontext()
        )

    @torch.no_grad()
    def logits(self, x, am, pos, hide, idx, step, window_start, window_end, force_refresh, inputs=None) -> torch.Tensor:
        """x, am, pos (R, L): canvas, key mask, positions; hide (R, L): what CFG's unconditional pass hides;
        idx (R, A): slots whose logits are needed; step (R,): step inside the block; [window_start, window_end):
        the slots the active block needs; force_refresh (R,): rows that must recompute the whole canvas; inputs:
        the noise process's own network inputs (`ReverseProcess.forward_inputs`; cache 'none' only)."""
        refresh, ws, we = self.cache.plan(step, window_start, window_end, pos, force_refresh)
        cfg = self.cfg_scale > 0
        if cfg:
            x = torch.cat([x, self.unconditional(x, hide)])
            am, pos, idx = (torch.cat([t, t]) for t in (am, pos, idx))
            if refresh is not None:
                refresh, ws, we = (torch.cat([t, t]) for t in (refresh, ws, we))
        with self.autocast:
            out = self.cache.forward(self.fn, x, am, pos, idx, refresh, ws, we, **(inputs or {}))
        out = out.float()
        if cfg:
            cond, uncond = out.chunk(2)
            out = uncond + (self.cfg_scale + 1.0) * (cond - uncond)
        return out

    def grow(self, shift: int, live: int, new: int) -> None:
        self.cache.grow(shift, live, new)

    def select_rows(self, keep: torch.Tensor, live: int) -> None:
        self.cache.select_rows(keep, live)
