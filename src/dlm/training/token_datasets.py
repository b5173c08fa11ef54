"""Datasets over the token cache's memmaps: pretraining windows, SFT rows, SFT rows packed several to a row."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError


def _open_tokens(path: Path, dtype: str, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


class PackedDataset:
    """Non-overlapping windows of seq_len tokens over a token memmap (last partial window dropped)."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens = tokens
        self.seq_len = int(seq_len)
        self.num_tokens = int(len(tokens))

    @classmethod
    def from_file(cls, path: str | Path, dtype: str, num_tokens: int, seq_len: int) -> "PackedDataset":
        return cls(_open_tokens(Path(path), dtype, num_tokens), seq_len)

    def __len__(self) -> int:
        return self.num_tokens // self.seq_len

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"window {i} out of range [0, {n})")
        s = i * self.seq_len
        return np.asarray(self.tokens[s : s + self.seq_len], dtype=np.int64)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = np.stack([self[int(i)] for i in indices]) if len(indices) else np.zeros((0, self.seq_len), np.int64)
        return {"input_ids": torch.from_numpy(rows)}


class SFTDataset:
    """Fixed-length SFT rows (prompt + answer, EOS-padded) with per-row prompt lengths and, where answer
    templates lock tokens, their flat offsets (`locked`: row * seq_len + position, sorted). A batch carries
    `prompt_lengths`, or `answer_mask` (B, L) when a row in it has locked tokens: what the losses noise and
    score (the answer minus its locked tokens)."""

    def __init__(self, tokens: np.ndarray, prompt_lengths: np.ndarray, seq_len: int, locked: np.ndarray | None = None):
        self.seq_len = int(seq_len)
        self.tokens = tokens.reshape(-1, self.seq_len)
        self.prompt_lengths = np.asarray(prompt_lengths, dtype=np.int64)
        self.locked = np.zeros(0, np.int64) if locked is None else np.sort(np.asarray(locked, dtype=np.int64))
        self.num_tokens = int(self.tokens.size)
        if len(self.prompt_lengths) != len(self.tokens):
            raise InputError("prompt_lengths", f"has {len(self.prompt_lengths)} entries for {len(self.tokens)} rows")
        if len(self.locked) and (self.locked[0] < 0 or self.locked[-1] >= self.num_tokens):
            raise InputError("locked", f"holds offsets outside [0, {self.num_tokens})")

    @classmethod
    def from_files(
        cls, path: str | Path, lengths_path: str | Path, dtype: str, rows: int, seq_len: int,
        locked_path: str | Path | None = None,
    ) -> "SFTDataset":  # fmt: skip
        tokens = _open_tokens(Path(path), dtype, rows * seq_len)
        lengths = np.load(lengths_path, allow_pickle=False)
        locked = np.load(locked_path, allow_pickle=False) if locked_path is not None else None
        return cls(tokens, lengths, seq_len, locked)

    def locked_row(self, i: int) -> np.ndarray:
        """(seq_len,) bool: the positions of row i its answer template locks."""
        out = np.zeros(self.seq_len, dtype=bool)
        if len(self.locked):
            lo, hi = np.searchsorted(self.locked, [i * self.seq_len, (i + 1) * self.seq_len])
            out[self.locked[lo:hi] - i * self.seq_len] = True
        return out

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[i], dtype=np.int64)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"row index out of range [0, {len(self)})")
        rows = np.asarray(self.tokens[idx], dtype=np.int64).reshape(len(idx), self.seq_len)
        lengths = self.prompt_lengths[idx]
        if len(self.locked):
            locked = np.stack([self.locked_row(int(i) % len(self)) for i in idx]) if len(idx) else None
            if locked is not None and locked.any():
                answer = (np.arange(self.seq_len)[None, :] >= lengths[:, None]) & ~locked
                return {"input_ids": torch.from_numpy(rows), "answer_mask": torch.from_numpy(answer)}
        return {"input_ids": torch.from_numpy(rows), "prompt_lengths": torch.from_numpy(lengths.copy())}


class PackedSFTDataset:
    """SFT examples packed several to a row (`data.pack: true`), built at load time from the cached rows.

    Rows are filled greedily in example order; an example is never split. Each example keeps its own
    positions (from 0) and, through `segment_ids`, attends only to itself: the trainer turns them into a
    block-diagonal attention mask, so a packed example gives the hidden states it gives alone. The EOS padding
    after a row's last example belongs to that example's answer (as in an unpacked row). `answer_mask` marks
    the answer tokens (with their EOS) of every example: what the SFT losses predict."""

    def __init__(self, base: SFTDataset, eos_id: int):
        L = self.seq_len = base.seq_len
        self.tokens = np.asarray(base.tokens)
        self.prompt_lengths = base.prompt_lengths
        self.locked_row = base.locked_row
        self.eos_id = int(eos_id)
        after_prompt = np.arange(L)[None, :] >= self.prompt_lengths[:, None]
        ends = (self.tokens == self.eos_id) & after_prompt
        self.lengths = np.where(ends.any(1), ends.argmax(1) + 1, L).astype(np.int64)  # through the answer's EOS
        self.rows: list[list[int]] = []
        cur: list[int] = []
        used = 0
        for i, n in enumerate(self.lengths.tolist()):
            if cur and used + n > L:
                self.rows.append(cur)
                cur, used = [], 0
            cur.append(i)
            used += n
        if cur:
            self.rows.append(cur)
        self.num_examples = len(self.lengths)
        self.num_tokens = len(self.rows) * L

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        B, L = len(indices), self.seq_len
        ids = np.full((B, L), self.eos_id, dtype=np.int64)
        seg = np.zeros((B, L), dtype=np.int64)
        pos = np.zeros((B, L), dtype=np.int64)
        ans = np.zeros((B, L), dtype=bool)
        for b, r in enumerate(indices):
            at = 0
            for k, i in enumerate(self.rows[int(r)]):
                n, p = int(self.lengths[i]), int(self.prompt_lengths[i])
                ids[b, at : at + n] = self.tokens[i, :n]
                seg[b, at : at + n] = k
                pos[b, at : at + n] = np.arange(n)
                ans[b, at + p : at + n] = ~self.locked_row(i)[p:n]
                at += n
            seg[b, at:] = k  # the row's EOS padding continues the last example's answer
            pos[b, at:] = np.arange(n, n + L - at)
            ans[b, at:] = True
        return {
            "input_ids": torch.from_numpy(ids),
            "answer_mask": torch.from_numpy(ans),
            "segment_ids": torch.from_numpy(seg),
            "position_ids": torch.from_numpy(pos),
        }
