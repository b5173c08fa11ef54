"""Batching: endless resumable training batches (sharded across ranks) and in-order evaluation batches."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ..errors import ConfigError, InputError


class BatchIterator:
    """Endless, deterministic, resumable batches; epoch e uses permutation rng(seed + e).

    `batch_size` is the global batch; rank r gets rows r::world_size of each global batch.
    """

    def __init__(self, dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ConfigError("batch_size", f"got {batch_size!r}; must be >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError("rank", f"got rank={rank}, world_size={world_size}; need 0 <= rank < world_size")
        if batch_size < world_size:
            raise ConfigError("batch_size", f"got {batch_size}; must be >= world_size={world_size}")
        if len(dataset) < batch_size:
            raise InputError(
                "data.train",
                f"too little data: {len(dataset)} examples < batch_size={batch_size}; "
                "add data, lower data.seq_len or the batch size",
            )
        self.dataset, self.batch_size, self.seed = dataset, int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch, self.position = 0, 0
        self._perm_epoch, self._perm = -1, None
        self.last_indices: np.ndarray | None = None

    @property
    def batches_per_epoch(self) -> int:
        return len(self.dataset) // self.batch_size

    def _permutation(self) -> np.ndarray:
        if self._perm_epoch != self.epoch:
            self._perm = np.random.default_rng(self.seed + self.epoch).permutation(len(self.dataset))
            self._perm_epoch = self.epoch
        return self._perm

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.position + self.batch_size > len(self.dataset):
            self.epoch, self.position = self.epoch + 1, 0
        idx = self._permutation()[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        self.last_indices = idx  # the global batch's example indices (every rank knows them)
        return self.dataset.batch(idx[self.rank :: self.world_size])

    def state_dict(self) -> dict:
        return {"epoch": int(self.epoch), "position": int(self.position)}

    def load_state_dict(self, state: dict) -> None:
        try:
            epoch, position = int(state["epoch"]), int(state["position"])
        except (KeyError, TypeError, ValueError):
            raise InputError("state", f"expected {{'epoch': int, 'position': int}}, got {state!r}") from None
        if epoch < 0 or not 0 <= position <= len(self.dataset):
            n = len(self.dataset)
            raise InputError("state", f"epoch={epoch}, position={position} out of range for {n} examples")
        self.epoch, self.position = epoch, position


def eval_batches(dataset, batch_size: int, max_batches: int | None) -> Iterator[dict[str, torch.Tensor]]:
    """The first max_batches batches in index order (the last one may be short); None/0 = all."""
    if batch_size < 1:
        raise ConfigError("batch_size", f"got {batch_size!r}; must be >= 1")
    n = len(dataset)
    for b, start in enumerate(range(0, n, batch_size)):
        if max_batches and b >= max_batches:
            return
        yield dataset.batch(list(range(start, min(start + batch_size, n))))
