"""KV-cache hook. The network calls `cache.update(layer, k, v)` and attends to what it returns.

A cache decides what to keep; the network never does. It also tells the network where its queries sit
among the keys (`slots`), so the attention mask and positions line up with cached keys.

- `KVCache` appends: the AR KV cache (queries are the newest keys).
- `CanvasCache` holds K/V for every slot of a fixed-length canvas (the diffusion sampler's prefix / dual
  caches). A forward either *refreshes* (computes every slot, keeps the result by reference) or recomputes a
  *window* of slots per row: their fresh K/V are written into the buffers in place and the window's queries
  attend to all slots, fresh and cached. No step copies the cache.
"""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer keys/values. `update` returns past+current K/V; stores them unless `frozen`."""

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.frozen = False

    def __len__(self) -> int:
        return 0 if not self.keys else self.keys[0].shape[2]

    def slots(self, batch: int, q_len: int, device) -> tuple[torch.Tensor, int]:
        """(query slots (1|B, q_len), number of keys): where this forward's queries sit among the keys it
        attends to. Appending: the queries are the last q_len of past + q_len keys."""
        past = len(self)
        return torch.arange(past, past + q_len, device=device)[None], past + q_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer in self.keys:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        if not self.frozen:
            self.keys[layer], self.values[layer] = k, v
        return k, v

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` (finished rows leave the batch)."""
        for d in (self.keys, self.values):
            for layer in d:
                d[layer] = d[layer].index_select(0, rows)


class CanvasCache(KVCache):
    """K/V of every slot of a canvas of `length` slots: per layer (B, H_kv, length, D).

    Two modes, set before each forward:

    - `refresh(rows=None)`: the forward runs over the whole canvas (all `length` slots) of every cached row,
      or of rows `rows` only; their K/V replace the cached ones (by reference for all rows, `index_copy_` for
      some) and the forward attends to its own fresh K/V, exactly as without a cache.
    - `window(slots)`: the forward runs over the tokens at `slots` (B, A) of every cached row (same order as
      the cache's rows). Their fresh K/V are written into the buffers at those slots (in place) and the
      queries attend to all `length` slots. Slots may repeat within a row (padding of short windows); a
      repeated slot computes the same K/V.
    """

    def __init__(self, length: int, *, lazy: bool = False) -> None:
        super().__init__()
        self.length = length
        self.lazy = lazy  # a window may come first: buffers start as zeros (the block cache fills them itself)
        self._window: torch.Tensor | None = None
        self._rows: torch.Tensor | None = None
        self._keys_upto: int | None = None

    def __len__(self) -> int:
        return self.length

    def refresh(self, rows: torch.Tensor | None = None) -> "CanvasCache":
        if rows is not None and not self.keys:
            raise RuntimeError("CanvasCache.refresh(rows) before a refresh of all rows: no buffers to write into")
        self._window, self._rows = None, rows
        return self

    def window(self, slots: torch.Tensor, keys_upto: int | None = None) -> "CanvasCache":
        """Recompute `slots`; the queries attend to slots [0, keys_upto) (default: all `length`)."""
        if not self.keys and not self.lazy:
            raise RuntimeError("CanvasCache.window before any refresh: nothing is cached yet")
        self._window, self._rows, self._keys_upto = slots, None, keys_upto
        return self

    def slots(self, batch: int, q_len: int, device) -> tuple[torch.Tensor, int]:
        if self._window is None:
            return torch.arange(q_len, device=device)[None], q_len
        return self._window, self._keys_upto or self.length

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._window is None:
            if self._rows is None:
                self.keys[layer], self.values[layer] = k, v
            else:
                self.keys[layer].index_copy_(0, self._rows, k)
                self.values[layer].index_copy_(0, self._rows, v)
            return k, v
        if layer not in self.keys:  # lazy: zeros until a window writes them
            shape = (k.shape[0], k.shape[1], self.length, k.shape[3])
            self.keys[layer], self.values[layer] = k.new_zeros(shape), v.new_zeros(shape)
        idx = self._window[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        keys, values = self.keys[layer], self.values[layer]
        keys.scatter_(2, idx, k.to(keys.dtype))
        values.scatter_(2, idx, v.to(values.dtype))
        upto = self._keys_upto or self.length
        return keys[:, :, :upto], values[:, :, :upto]
