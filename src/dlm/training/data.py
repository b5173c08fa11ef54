"""Training data: cached tokenisation, datasets and batching (sources and documents: documents.py).

Documents are tokenised once into memory-mapped shards under a cache folder:
``train.bin``/``valid.bin`` (raw uint16/uint32 tokens) plus, for SFT, ``{split}.prompt_lengths.npy``,
and ``meta.json`` (written last) whose fingerprint decides whether the cache can be reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..errors import ConfigError, InputError
from .documents import (  # noqa: F401  (document functions are re-exported: the public data API)
    SKIP_DIRS,
    TABLE_BUILDERS,
    TEXT_SUFFIXES,
    Doc,
    _doc_bytes,
    _hash_unit,
    document_texts,
    expand_sources,
    iter_documents,
    split_of,
)

log = logging.getLogger(__name__)

TASKS = ("pretrain", "sft")
CACHE_VERSION = 1
_ENCODE_CHUNK = 256


@dataclass
class DataConfig:
    """Where the data comes from and how it is cut into training examples."""

    train: list[str] = field(default_factory=list)
    valid: list[str] = field(default_factory=list)
    valid_fraction: float = 0.01
    seq_len: int = 256
    task: str = "pretrain"
    text_field: str = "text"
    exclude: list[str] = field(default_factory=list)
    max_bytes: int = 0
    seed: int = 0
    pack: bool = False  # SFT: several examples per row, each attending only to itself (pretraining always packs)

    def __post_init__(self) -> None:
        if self.pack is not False and (self.pack is not True or self.task != "sft"):
            raise ConfigError("data.pack", f"got {self.pack!r}; true only with task: sft (pretraining always packs)")
        if self.task not in TASKS:
            raise ConfigError("data.task", f"got {self.task!r}; allowed: {', '.join(TASKS)}")
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise ConfigError("data.seq_len", f"got {self.seq_len!r}; must be an integer >= 2")
        if not 0 <= self.valid_fraction < 1:
            raise ConfigError("data.valid_fraction", f"got {self.valid_fraction!r}; must be >= 0 and < 1")
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or self.max_bytes < 0:
            raise ConfigError("data.max_bytes", f"got {self.max_bytes!r}; must be an integer >= 0 (0 = no cap)")
        if not isinstance(self.text_field, str) or not self.text_field:
            raise ConfigError("data.text_field", f"got {self.text_field!r}; must be a non-empty column/key name")
        for name in ("train", "valid", "exclude"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [value])
            elif not all(isinstance(v, str) for v in value):
                raise ConfigError(f"data.{name}", f"got {value!r}; must be a list of path/glob strings")


# ---- sources ----------------------------------------------------------------------------------


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
    """Fixed-length SFT rows (prompt + answer, EOS-padded) with per-row prompt lengths."""

    def __init__(self, tokens: np.ndarray, prompt_lengths: np.ndarray, seq_len: int):
        self.seq_len = int(seq_len)
        self.tokens = tokens.reshape(-1, self.seq_len)
        self.prompt_lengths = np.asarray(prompt_lengths, dtype=np.int64)
        self.num_tokens = int(self.tokens.size)
        if len(self.prompt_lengths) != len(self.tokens):
            raise InputError("prompt_lengths", f"has {len(self.prompt_lengths)} entries for {len(self.tokens)} rows")

    @classmethod
    def from_files(
        cls, path: str | Path, lengths_path: str | Path, dtype: str, rows: int, seq_len: int
    ) -> "SFTDataset":
        tokens = _open_tokens(Path(path), dtype, rows * seq_len)
        lengths = np.load(lengths_path, allow_pickle=False)
        return cls(tokens, lengths, seq_len)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[i], dtype=np.int64)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"row index out of range [0, {len(self)})")
        rows = np.asarray(self.tokens[idx], dtype=np.int64).reshape(len(idx), self.seq_len)
        lengths = torch.from_numpy(self.prompt_lengths[idx].copy())
        return {"input_ids": torch.from_numpy(rows), "prompt_lengths": lengths}


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
                ans[b, at + p : at + n] = True
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


# ---- building / caching -----------------------------------------------------------------------
def _fingerprint(cfg: DataConfig, train_paths: list[Path], valid_paths: list[Path], tokenizer) -> str:
    def stat(p: Path):
        st = p.stat()
        return [str(p), st.st_size, st.st_mtime_ns]

    payload = {
        "version": CACHE_VERSION,
        "train": [stat(p) for p in train_paths],
        "valid": [stat(p) for p in valid_paths],
        "vocab_size": int(tokenizer.vocab_size),
        "tokenizer": _tokenizer_hash(tokenizer),
        "eos": int(tokenizer.eos_token_id),
        "cfg": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "pack"},  # packing happens at load
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _tokenizer_hash(tokenizer) -> str | None:
    backend = getattr(tokenizer, "backend", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None
    return hashlib.sha1(backend.to_str().encode()).hexdigest()


class _SplitWriter:
    """Appends token chunks to a temporary file; `finish` moves it into place atomically."""

    def __init__(self, path: Path, dtype: str):
        self.path, self.dtype = path, dtype
        self.tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
        self.f = open(self.tmp, "wb")
        self.num_tokens = 0
        self.docs = 0
        self.prompt_lengths: list[int] = []

    def write(self, ids: Sequence[int] | np.ndarray) -> tuple[int, int]:
        arr = np.asarray(ids, dtype=self.dtype)
        start = self.num_tokens
        self.f.write(arr.tobytes())
        self.num_tokens += len(arr)
        self.docs += 1
        return start, len(arr)

    def remove_range(self, start: int, length: int) -> None:
        """Drop tokens [start, start+length) (used once, to move a document to the valid split)."""
        self.f.close()
        item = np.dtype(self.dtype).itemsize
        read_at, write_at = (start + length) * item, start * item
        with open(self.tmp, "r+b") as f:
            while True:
                f.seek(read_at)
                chunk = f.read(1 << 24)
                if not chunk:
                    break
                f.seek(write_at)
                f.write(chunk)
                read_at += len(chunk)
                write_at += len(chunk)
            f.truncate(write_at)
        self.f = open(self.tmp, "ab")
        self.num_tokens -= length
        self.docs -= 1

    def finish(self) -> None:
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


def _save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    os.replace(tmp, path)


def _capped(docs: Iterator[Doc], max_bytes: int) -> Iterator[Doc]:
    total = 0
    for doc_id, doc in docs:
        if max_bytes and total >= max_bytes:
            return
        total += _doc_bytes(doc)
        yield doc_id, doc


def _chunks(it: Iterator, n: int) -> Iterator[list]:
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def _tokenize_docs(cfg: DataConfig, tokenizer, docs: list[Doc]) -> list[tuple[str, list[int], int]]:
    """(doc_id, ids, prompt_length) per kept document. Pretrain: ids + [eos], prompt length 0."""
    eos = tokenizer.eos_token_id
    if cfg.task == "pretrain":
        plain = [d for _, d in docs if isinstance(d, str)]  # special-token strings in text stay text
        chats = [tokenizer.apply_chat_template(d, tokenize=False) for _, d in docs if not isinstance(d, str)]
        plain_ids = iter(tokenizer.encode_batch(plain, parse_special=False))
        chat_ids = iter(tokenizer.encode_batch(chats))
        return [(doc_id, next(plain_ids if isinstance(d, str) else chat_ids) + [eos], 0) for doc_id, d in docs]
    out = []
    for doc_id, d in docs:
        if isinstance(d, str):
            raise InputError(
                "data.task",
                f"is 'sft' but {doc_id} is plain text; SFT needs chat examples with a 'messages' list",
            )
        try:
            prompt, answer = tokenizer.sft_example(d)
        except InputError as e:
            raise InputError(doc_id, str(e)) from None
        ids = (prompt + answer)[: cfg.seq_len]
        plen = len(prompt)
        if plen >= cfg.seq_len:
            log.warning("dropping SFT example %s: prompt has %d tokens >= seq_len=%d", doc_id, plen, cfg.seq_len)
            continue
        out.append((doc_id, ids + [eos] * (cfg.seq_len - len(ids)), plen))
    return out


def _build_cache(cfg: DataConfig, tokenizer, cache: Path, train_paths, valid_paths, fp: str) -> dict:
    dtype = "uint16" if tokenizer.vocab_size <= 65535 else "uint32"
    (cache / "meta.json").unlink(missing_ok=True)
    writers = {s: _SplitWriter(cache / f"{s}.bin", dtype) for s in ("train", "valid")}
    best = None  # (hash, start, length, prompt_len, ids, index) of the train doc closest to the valid split
    try:
        # With explicit valid sources every train-source document goes to train; else split by hash.
        train_docs = _capped(iter_documents(train_paths, cfg.text_field), cfg.max_bytes)
        streams = [(train_docs, "train" if valid_paths else None)]
        if valid_paths:
            streams.append((iter_documents(valid_paths, cfg.text_field), "valid"))
        for docs, fixed_split in streams:
            for chunk in _chunks(docs, _ENCODE_CHUNK):
                for doc_id, ids, plen in _tokenize_docs(cfg, tokenizer, chunk):
                    split = fixed_split or split_of(doc_id, cfg.valid_fraction, cfg.seed)
                    start, length = writers[split].write(ids)
                    if cfg.task == "sft":
                        writers[split].prompt_lengths.append(plen)
                    if split == "train" and fixed_split is None:
                        u = _hash_unit(doc_id, cfg.seed)
                        if best is None or u < best[0]:
                            best = (u, start, length, plen, ids, writers["train"].docs - 1)
        tw, vw = writers["train"], writers["valid"]
        if not valid_paths and cfg.valid_fraction > 0 and vw.docs == 0 and tw.docs >= 2 and best is not None:
            _, start, length, plen, ids, doc_index = best
            tw.remove_range(start, length)
            vw.write(ids)
            if cfg.task == "sft":
                del tw.prompt_lengths[doc_index]
                vw.prompt_lengths.append(plen)
        meta = {
            "version": CACHE_VERSION,
            "fingerprint": fp,
            "task": cfg.task,
            "seq_len": cfg.seq_len,
            "dtype": dtype,
            "vocab_size": int(tokenizer.vocab_size),
        }
        for s, w in writers.items():
            w.finish()
            meta[s] = {"num_tokens": w.num_tokens, "docs": w.docs}
            if cfg.task == "sft":
                _save_npy_atomic(cache / f"{s}.prompt_lengths.npy", np.asarray(w.prompt_lengths, dtype=np.int64))
    except BaseException:
        for w in writers.values():
            if not w.f.closed:
                w.abort()
        raise
    tmp = cache / f".meta.json.tmp.{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, cache / "meta.json")
    return meta


def _load_split(cfg: DataConfig, cache: Path, meta: dict, split: str):
    info = meta[split]
    if cfg.task == "sft":
        rows = info["num_tokens"] // cfg.seq_len
        lengths = cache / f"{split}.prompt_lengths.npy"
        return SFTDataset.from_files(cache / f"{split}.bin", lengths, meta["dtype"], rows, cfg.seq_len)
    return PackedDataset.from_file(cache / f"{split}.bin", meta["dtype"], info["num_tokens"], cfg.seq_len)


def _read_meta(cache: Path) -> dict | None:
    try:
        meta = json.loads((cache / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def build_dataset(
    cfg: DataConfig, tokenizer, cache_dir: str | Path
) -> tuple[PackedDataset | SFTDataset | PackedSFTDataset, PackedDataset | SFTDataset | PackedSFTDataset]:
    """Tokenise (or reuse the cache) and return (train, valid) datasets.

    `max_bytes` caps the train sources only. With task=pretrain, chat documents are rendered with the
    chat template. The valid split may be empty (len 0); an empty train split raises InputError.
    """
    if not cfg.train:
        raise InputError("data.train", "no training sources given; list files, folders or globs")
    train_paths = expand_sources(cfg.train, "data.train", cfg.exclude)
    valid_paths = expand_sources(cfg.valid, "data.valid", cfg.exclude) if cfg.valid else []
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    fp = _fingerprint(cfg, train_paths, valid_paths, tokenizer)
    meta = _read_meta(cache)
    files_ok = meta is not None and all(
        (cache / f"{s}.bin").is_file() and (cfg.task != "sft" or (cache / f"{s}.prompt_lengths.npy").is_file())
        for s in ("train", "valid")
    )
    if meta is None or meta.get("fingerprint") != fp or not files_ok:
        log.info("tokenising %d source files into %s", len(train_paths) + len(valid_paths), cache)
        meta = _build_cache(cfg, tokenizer, cache, train_paths, valid_paths, fp)
    else:
        log.info("reusing token cache %s", cache)
    train, valid = _load_split(cfg, cache, meta, "train"), _load_split(cfg, cache, meta, "valid")
    if cfg.pack:
        train, valid = PackedSFTDataset(train, tokenizer.eos_token_id), PackedSFTDataset(valid, tokenizer.eos_token_id)
    if len(train) < 1:
        what = "windows" if cfg.task == "pretrain" else "examples"
        raise InputError(
            "data.train",
            f"too little data for seq_len={cfg.seq_len}: {meta['train']['num_tokens']} tokens in "
            f"{meta['train']['docs']} documents give 0 {what}; add data or lower data.seq_len",
        )
    return train, valid


# ---- batching ---------------------------------------------------------------------------------
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
