"""KV-cache hook. The network calls `cache.update(layer, k, v)` and attends to what it returns.

A cache decides what to keep; the network never does. This base class appends (the AR KV cache);
samplers with approximate bidirectional caches (prefix/dual, a later issue) subclass it.
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
