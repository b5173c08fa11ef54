"""How the sampler asks the model for logits: CFG doubling, bf16 autocast, optional torch.compile, and the
prefix / dual caches for bidirectional models (exact for block-causal ones).

Caches live in the model layer (`dlm.model.CanvasCache`, through the KV-cache hook): a *refresh* forward runs
over the whole canvas and keeps every slot's K/V; a *window* forward recomputes only the slots each row needs
(`prefix`: from the active block to the end of the canvas; `dual`: the active block only) and attends to
the cached K/V of all other slots. Rows refresh independently (a row refreshes when it starts a block, and
every `cache_refresh` steps inside it), so one step may run a window forward for the batch and a refresh
forward for the rows that need one.
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import ConfigError
from ..model import CanvasCache
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
    """One object per generate() call. `logits()` returns float32 logits (R, A, V) at the requested slots,
    with CFG applied; `select_rows()` keeps the cache aligned with the live rows of the batch."""

    def __init__(self, model, config: GenerationConfig, unconditional, length: int, device: torch.device):
        self.model = model
        self.fn = compiled_forward(model) if config.compile else model
        self.cfg_scale = config.cfg_scale
        self.unconditional = unconditional  # (canvas, hide) -> CFG's unconditional canvas (the process decides)
        self.length = length
        self.mode = config.cache
        self.refresh_every = config.cache_refresh
        cfg = getattr(model, "config", None)
        self.block_causal = getattr(cfg, "attention", None) == "block_causal"
        self.model_block = int(getattr(cfg, "block_size", 1) or 1)
        if self.mode != "none" and not getattr(model, "supports_canvas_cache", False):
            raise ConfigError(
                "cache", f"{type(model).__name__} has no canvas-cache hook for prefix/dual caches; use 'none'"
            )
        self.cache = CanvasCache(length) if self.mode != "none" else None
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if config.dtype == "bfloat16"
            else contextlib.nullcontext()
        )

    def needs_refresh(self, step: torch.Tensor) -> torch.Tensor:
        """(R,) bool: rows whose cache is recomputed at this step (block start, then every cache_refresh)."""
        fresh = step == 0
        if self.refresh_every:
            fresh = fresh | (step % self.refresh_every == 0)
        return fresh

    def window(self, lo: torch.Tensor, hi: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots [ws, we) a row recomputes when its block needs slots [lo, hi): dual = the block, prefix = the
        block to the end of the canvas. Block-causal models widen it to whole model blocks, which makes the
        cache exact (a slot's K/V depend only on its own and earlier model blocks)."""
        ws, we = lo, hi if self.mode == "dual" else torch.full_like(hi, self.length)
        if self.block_causal:
            ws = ws - pos.gather(1, ws[:, None]).squeeze(1) % self.model_block
            last = pos.gather(1, (we - 1)[:, None]).squeeze(1)
            we = (we + self.model_block - 1 - last % self.model_block).clamp(max=self.length)
        return ws, we

    @torch.no_grad()
    def logits(
        self,
        x: torch.Tensor,
        am: torch.Tensor,
        pos: torch.Tensor,
        hide: torch.Tensor,
        idx: torch.Tensor,
        refresh: torch.Tensor | None = None,
        ws: torch.Tensor | None = None,
        we: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x, am, pos (R, L): canvas, key mask, positions; hide (R, L): what CFG's unconditional pass masks;
        idx (R, A): slots whose logits are needed; refresh (R,): rows that recompute the whole canvas (the
        others recompute only [ws, we))."""
        cfg = self.cfg_scale > 0
        if cfg:
            x = torch.cat([x, self.unconditional(x, hide)])
            am, pos, idx = (torch.cat([t, t]) for t in (am, pos, idx))
            if self.cache is not None:
                refresh, ws, we = (torch.cat([t, t]) for t in (refresh, ws, we))
        with self.autocast:
            out = self._forward(x, am, pos, idx, refresh, ws, we)
        out = out.float()
        if cfg:
            cond, uncond = out.chunk(2)
            out = uncond + (self.cfg_scale + 1.0) * (cond - uncond)
        return out

    def _forward(self, x, am, pos, idx, refresh, ws, we):
        if self.cache is None:
            return self.fn(x, attention_mask=am, logits_index=idx)
        if bool(refresh.all()):
            return self.fn(x, attention_mask=am, cache=self.cache.refresh(), logits_index=idx)
        width = int((we - ws).max())
        slots = torch.minimum(ws[:, None] + torch.arange(width, device=x.device)[None], (we - 1)[:, None])
        out = self.fn(
            x.gather(1, slots),
            attention_mask=am,
            position_ids=pos.gather(1, slots),
            cache=self.cache.window(slots),
            logits_index=(idx - ws[:, None]).clamp(0, width - 1),
        )
        if bool(refresh.any()):  # these rows ran in the window pass too (results unused), then recompute all
            f = torch.nonzero(refresh).flatten()
            full = self.fn(x[f], attention_mask=am[f], cache=self.cache.refresh(f), logits_index=idx[f])
            out = out.index_copy(0, f, full.to(out.dtype))
        return out

    def grow(self, shift: int, live: int, new: int) -> None:
        """Rows joined: the canvas grew by `shift` slots on the left (existing rows' K/V move right, the new
        slots are padding, never attended) and `new` rows follow the `live` ones (zero K/V until their first
        step, which refreshes them); CFG's unconditional rows stay in the second half."""
        self.length += shift
        if self.cache is None:
            return
        self.cache.length = self.length
        if not self.cache.keys:
            return
        F = torch.nn.functional
        for store in (self.cache.keys, self.cache.values):
            for layer, t in store.items():
                t = F.pad(t, (0, 0, shift, 0))
                z = t.new_zeros((new, *t.shape[1:]))
                store[layer] = torch.cat([t[:live], z, t[live:], z]) if self.cfg_scale > 0 else torch.cat([t, z])

    def select_rows(self, keep: torch.Tensor, live: int) -> None:
        """Keep live rows `keep` (of `live`) in the cache; CFG's unconditional rows follow their rows."""
        if self.cache is None or not self.cache.keys:
            return
        self.cache.select_rows(torch.cat([keep, keep + live]) if self.cfg_scale > 0 else keep)
