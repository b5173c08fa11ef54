"""KV-cache hook. The network calls `cache.update(layer, k, v)` and attends to what it returns.

A cache decides what to keep; the network never does. It also tells the network where its queries sit
among the keys (`slots`), so the attention mask and positions line up with cached keys, and, for a network
that runs outside torch (an exported graph), which buffers a forward attends to before its K/V are written
(`kv_buffers`).

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

    def kv_buffers(
        self, layer: int, shape: tuple[int, int, int, int], dtype=torch.float32, device=None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(keys, values (B, H_kv, K, D), write slots (1|B, L)) for a forward whose fresh K/V have `shape`
        (B, H_kv, L, D): the buffers its queries attend to *before* this forward's K/V are written, and the slots
        (along dim 2) they are to be written at. Scattering the fresh K/V there gives what `update` returns. A
        network that cannot call `update` mid-forward (an exported graph, `dlm.hub.onnx_runtime`) scatters them
        itself, then hands them to `update`, so the cache stores what it stores after a torch forward. Appending:
        past keys followed by L zero slots (zeros alone while empty), slots past..past+L-1."""
        fresh = torch.zeros(shape, dtype=dtype, device=device)
        past = self.keys[layer].shape[2] if layer in self.keys else 0
        slots = torch.arange(past, past + shape[2], device=device)[None]
        if not past:
            return fresh, torch.zeros_like(fresh), slots
        cat = [torch.cat([kv[layer].to(dtype), fresh], dim=2) for kv in (self.keys, self.values)]
        return cat[0], cat[1], slots

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

    def kv_buffers(self, layer, shape, dtype=torch.float32, device=None):
        """Refresh: zeros of the forward's length, slots 0..L-1 (it attends to its own K/V only). Window: the
        stored buffers up to keys_upto (zeros before a lazy cache's first write), slots = the window."""
        if self._window is None:
            fresh = torch.zeros(shape, dtype=dtype, device=device)
            return fresh, torch.zeros_like(fresh), torch.arange(shape[2], device=device)[None]
        upto = self._keys_upto or self.length
        if layer not in self.keys:
            past = torch.zeros((shape[0], shape[1], upto, shape[3]), dtype=dtype, device=device)
            return past, torch.zeros_like(past), self._window
        return self.keys[layer][:, :, :upto].to(dtype), self.values[layer][:, :, :upto].to(dtype), self._window

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
