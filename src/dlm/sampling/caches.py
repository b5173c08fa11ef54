"""Sampling caches for the reverse loop: one class each, registered by name (GenerationConfig.cache).

A cache decides what each step's forward recomputes. `none` runs the whole canvas every step (the reference).
`prefix` and `dual` keep every slot's K/V (`dlm.model.CanvasCache`, through the model's KV-cache hook): a row
*refreshes* (recomputes the whole canvas) when it starts a block and every `cache_refresh` steps inside it, and
otherwise recomputes only a window — `prefix`: from its active block to the end of the canvas; `dual`: the
active block only — attending to the cached K/V of every other slot (Fast-dLLM's approximate caches; exact for
block-causal models, whose window is widened to whole model blocks). `block` is for block-causal models only:
exact and append-only, nothing is ever refreshed (each slot's K/V computed once, when its block is clean). A new
cache is one class here plus `@register_cache`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..model import CanvasCache

CACHES: dict[str, type["SamplingCache"]] = {}


def register_cache(cls):
    CACHES[cls.name] = cls
    return cls


class SamplingCache:
    """No cache: every step runs the whole canvas."""

    name = "none"

    def __init__(self, model, length: int, refresh_every: int, cfg_scale: float):
        self.length, self.refresh_every, self.cfg = length, refresh_every, cfg_scale > 0

    def plan(self, step, block_start, block_end, positions, force_refresh):
        """(refresh (R,), window start (R,), window end (R,)) for this step, or Nones when nothing is cached."""
        return None, None, None

    def forward(self, fn, x, am, pos, idx, refresh, ws, we, **inputs):
        """`inputs`: what the noise process feeds the network besides (or, with inputs_embeds, instead of) ids."""
        return fn(None if "inputs_embeds" in inputs else x, attention_mask=am, logits_index=idx, **inputs)

    def grow(self, shift: int, live: int, new: int) -> None:
        """Rows joined: the canvas grew by `shift` slots on the left and `new` rows follow the `live` ones."""
        self.length += shift

    def select_rows(self, keep: torch.Tensor, live: int) -> None:
        """Keep live rows `keep` (of `live`)."""


class _CanvasWindowCache(SamplingCache):
    """K/V of every slot, refreshed per row; a window of slots recomputed at the other steps."""

    lazy = False  # True: a window may write the store before any refresh (its buffers start as zeros)

    def __init__(self, model, length, refresh_every, cfg_scale):
        super().__init__(model, length, refresh_every, cfg_scale)
        if not getattr(model, "supports_canvas_cache", False):
            raise ConfigError("cache", f"{type(model).__name__} has no canvas-cache hook for {self.name!r}; use 'none'")
        cfg = getattr(model, "config", None)
        self.block_causal = getattr(cfg, "attention", None) == "block_causal"
        self.shift = int(bool(getattr(cfg, "shift_logits", False)))  # the loop's window starts one slot early
        self.model_block = int(getattr(cfg, "block_size", 1) or 1)
        self.store = CanvasCache(length, lazy=self.lazy)

    def window_end(self, block_end: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def plan(self, step, block_start, block_end, positions, force_refresh):
        refresh = (step == 0) | force_refresh
        if self.refresh_every:
            refresh = refresh | (step % self.refresh_every == 0)
        ws, we = block_start, self.window_end(block_end)
        if self.block_causal:  # whole model blocks: a slot's K/V depend only on its own and earlier blocks
            ws = ws - positions.gather(1, ws[:, None]).squeeze(1) % self.model_block
            last = positions.gather(1, (we - 1)[:, None]).squeeze(1)
            we = (we + self.model_block - 1 - last % self.model_block).clamp(max=self.length)
        return refresh, ws, we

    def forward(self, fn, x, am, pos, idx, refresh, ws, we):
        if bool(refresh.all()):
            return fn(x, attention_mask=am, cache=self.store.refresh(), logits_index=idx)
        out = self._window_forward(fn, x, am, pos, idx, ws, we)
        if bool(refresh.any()):  # these rows ran in the window pass too (results unused), then recompute all
            f = torch.nonzero(refresh).flatten()
            full = fn(x[f], attention_mask=am[f], cache=self.store.refresh(f), logits_index=idx[f])
            out = out.index_copy(0, f, full.to(out.dtype))
        return out

    def _window_forward(self, fn, x, am, pos, idx, ws, we, keys_upto=None):
        """One forward over each row's slots [ws, we) (padded to the widest by repeating the last), attending to the
        cached K/V of every slot (or of slots below `keys_upto`), logits at `idx` taken from the window."""
        width = int((we - ws).max())
        slots = torch.minimum(ws[:, None] + torch.arange(width, device=x.device)[None], (we - 1)[:, None])
        return fn(
            x.gather(1, slots),
            attention_mask=am if keys_upto is None else am[:, :keys_upto],
            position_ids=pos.gather(1, slots),
            cache=self.store.window(slots, keys_upto),
            logits_index=(idx - ws[:, None]).clamp(0, width - 1),
        )

    def grow(self, shift, live, new):
        """Existing rows' K/V move right (the new slots are padding, never attended); new rows get zero K/V until
        their first step, which refreshes them; CFG's unconditional rows stay in the second half."""
        super().grow(shift, live, new)
        self.store.length = self.length
        for kv in (self.store.keys, self.store.values):
            for layer, t in kv.items():
                t = F.pad(t, (0, 0, shift, 0))
                z = t.new_zeros((new, *t.shape[1:]))
                kv[layer] = torch.cat([t[:live], z, t[live:], z]) if self.cfg else torch.cat([t, z])

    def select_rows(self, keep, live):
        if self.store.keys:  # CFG's unconditional rows follow their rows
            self.store.select_rows(torch.cat([keep, keep + live]) if self.cfg else keep)


@register_cache
class PrefixCache(_CanvasWindowCache):
    name = "prefix"

    def window_end(self, block_end):
        return torch.full_like(block_end, self.length)


@register_cache
class DualCache(_CanvasWindowCache):
    name = "dual"

    def window_end(self, block_end):
        return block_end


@register_cache
class BlockCache(_CanvasWindowCache):
    """Exact and append-only, for block-causal networks (block diffusion): a slot's K/V are computed once, in
    the first step after its block is clean, and never again; each step's forward covers only the row's
    *frontier* — the blocks finished since its previous step (once, clean) — and its active block, and attends to
    keys up to the active block's end (later slots are never read). Nothing is refreshed: a block-causal slot's
    K/V depend only on its own and earlier blocks, so they are the uncached forward's (a test checks the
    logits). Rows filling noise inside their prompt keep their frontier at 0 until block 0 is done."""

    name = "block"
    lazy = True

    def __init__(self, model, length, refresh_every, cfg_scale):
        super().__init__(model, length, refresh_every, cfg_scale)
        if not self.block_causal:
            attention = getattr(getattr(model, "config", None), "attention", None)
            raise ConfigError(
                "cache", f"'block' is exact only for block_causal models; this one is {attention}: use prefix or dual"
            )
        self.frontier: torch.Tensor | None = None  # (R,) long: slots [0, frontier) hold clean, final K/V

    def window_end(self, block_end):
        return block_end

    def plan(self, step, block_start, block_end, positions, force_refresh):
        if self.frontier is None:
            self.frontier = torch.zeros_like(block_start)
        # block_start is where the loop needs logits from: one slot before the active block for shifted families
        # (that slot is clean: recomputing its query alone is exact, its block need not be)
        active = torch.minimum(block_start + self.shift, block_end - 1)
        _, start, we = super().plan(step, active, block_end, positions, force_refresh)
        we = torch.where(force_refresh, self.length, we)  # noise in the user's text may sit past the block
        ws = torch.minimum(torch.minimum(self.frontier, start), block_start)
        self.frontier = torch.where(force_refresh, self.frontier, start)  # this forward writes [ws, start) clean
        return torch.zeros_like(force_refresh), ws, we

    def forward(self, fn, x, am, pos, idx, refresh, ws, we):
        return self._window_forward(fn, x, am, pos, idx, ws, we, keys_upto=int(we.max()))

    def grow(self, shift, live, new):
        super().grow(shift, live, new)
        if self.frontier is not None:
            self.frontier = torch.cat([self.frontier[:live] + shift, self.frontier.new_zeros(new)])

    def select_rows(self, keep, live):
        super().select_rows(keep, live)
        if self.frontier is not None:
            self.frontier = self.frontier[keep]


register_cache(SamplingCache)


def check_cache(name: str, model) -> None:
    """ConfigError("cache", …) unless cache `name` works with `model` (what building one checks, without a
    generation: the server answers 400 before queueing)."""
    CACHES[name](model, 1, 0, 0.0)
