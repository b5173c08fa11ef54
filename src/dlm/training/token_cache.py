"""The token cache: documents tokenised once into memory-mapped shards under a cache folder.

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
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from ..errors import InputError
from .documents import Completion, Doc, _doc_bytes, _hash_unit, iter_documents, split_of

if TYPE_CHECKING:
    from .data import DataConfig

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: SFT splits carry {split}.locked.npy (answer templates)
_ENCODE_CHUNK = 256


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
        self.locked: list[np.ndarray] = []  # per SFT row: the positions its answer template locks

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


def _tokenize_docs(cfg: DataConfig, tokenizer, docs: list[Doc]) -> list[tuple[str, list[int], int, np.ndarray]]:
    """(doc_id, ids, prompt_length, locked positions) per kept document. Pretrain: ids + [eos], prompt length 0,
    nothing locked. SFT: the positions an answer template locks (never noised, never scored)."""
    eos = tokenizer.eos_token_id
    if cfg.task == "pretrain":
        plain = [d for _, d in docs if isinstance(d, str)]  # special-token strings in text stay text
        chats = [tokenizer.apply_chat_template(d, tokenize=False) for _, d in docs if isinstance(d, list)]
        plain_ids = iter(tokenizer.encode_batch(plain, parse_special=False))
        chat_ids = iter(tokenizer.encode_batch(chats))

        def ids(doc_id, d):
            if isinstance(d, Completion):
                prompt, answer = _completion_ids(tokenizer, doc_id, d)
                return prompt + answer
            return next(plain_ids if isinstance(d, str) else chat_ids) + [eos]

        return [(doc_id, ids(doc_id, d), 0, _NONE_LOCKED) for doc_id, d in docs]
    out = []
    for doc_id, d in docs:
        if isinstance(d, str):
            raise InputError(
                "data.task",
                f"is 'sft' but {doc_id} is plain text; SFT needs chat examples with a 'messages' list or "
                "'prompt'/'completion' pairs",
            )
        try:
            prompt, answer = (
                _completion_ids(tokenizer, doc_id, d) if isinstance(d, Completion) else tokenizer.sft_example(d)
            )
        except InputError as e:
            raise InputError(doc_id, str(e)) from None
        ids = (prompt + answer)[: cfg.seq_len]
        plen = len(prompt)
        if plen >= cfg.seq_len:
            log.warning("dropping SFT example %s: prompt has %d tokens >= seq_len=%d", doc_id, plen, cfg.seq_len)
            continue
        template = getattr(d, "template", None)
        locked = _NONE_LOCKED if template is None else _locked_positions(tokenizer, doc_id, template, answer, plen)
        out.append((doc_id, ids + [eos] * (cfg.seq_len - len(ids)), plen, locked[locked < cfg.seq_len]))
    return out


_NONE_LOCKED = np.zeros(0, dtype=np.int64)


def _locked_positions(tokenizer, doc_id: str, template: str, answer: list[int], plen: int) -> np.ndarray:
    """Row positions of the template's locked tokens; the template must tokenise to the answer's tokens (without
    its EOS), "<|mask|>" where the answer is free and the answer's own tokens where it is locked."""
    t = tokenizer.encode_template(template, f"{doc_id}: template")
    body = answer[:-1]
    if len(t) != len(body):
        raise InputError(f"{doc_id}: template", f"has {len(t)} tokens but the answer has {len(body)}; a template "
                         "is the answer with each token the model writes replaced by '<|mask|>'")  # fmt: skip
    mask = tokenizer.mask_token_id
    bad = [k for k, (a, b) in enumerate(zip(t, body)) if a != mask and a != b]
    if bad:
        raise InputError(f"{doc_id}: template", f"locked token {bad[0]} differs from the answer's token there "
                         f"({tokenizer.decode([t[bad[0]]])!r} vs {tokenizer.decode([body[bad[0]]])!r})")  # fmt: skip
    return np.asarray([plen + k for k, a in enumerate(t) if a != mask], dtype=np.int64)


def _completion_ids(tokenizer, doc_id: str, c: Completion) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids + EOS): texts tokenised as training text (special-token strings stay text),
    token ids checked against the vocabulary."""

    def ids(value, name: str) -> list[int]:
        if isinstance(value, str):
            return tokenizer.encode(value, parse_special=False) if value else []
        bad = [t for t in value if t >= tokenizer.vocab_size]
        if bad:
            raise InputError(
                f"{doc_id}: {name}_ids", f"holds ids outside the vocabulary [0, {tokenizer.vocab_size}): {bad[:3]}"
            )
        return list(value)

    return ids(c.prompt, "prompt"), ids(c.completion, "completion") + [tokenizer.eos_token_id]


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
                for doc_id, ids, plen, locked in _tokenize_docs(cfg, tokenizer, chunk):
                    split = fixed_split or split_of(doc_id, cfg.valid_fraction, cfg.seed)
                    start, length = writers[split].write(ids)
                    if cfg.task == "sft":
                        writers[split].prompt_lengths.append(plen)
                        writers[split].locked.append(locked)
                    if split == "train" and fixed_split is None:
                        u = _hash_unit(doc_id, cfg.seed)
                        if best is None or u < best[0]:
                            best = (u, start, length, plen, ids, writers["train"].docs - 1, locked)
        tw, vw = writers["train"], writers["valid"]
        if not valid_paths and cfg.valid_fraction > 0 and vw.docs == 0 and tw.docs >= 2 and best is not None:
            _, start, length, plen, ids, doc_index, locked = best
            tw.remove_range(start, length)
            vw.write(ids)
            if cfg.task == "sft":
                del tw.prompt_lengths[doc_index]
                del tw.locked[doc_index]
                vw.prompt_lengths.append(plen)
                vw.locked.append(locked)
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
                flat = [row * cfg.seq_len + pos for row, pos in enumerate(w.locked) if len(pos)]
                _save_npy_atomic(cache / f"{s}.locked.npy", np.concatenate(flat) if flat else _NONE_LOCKED)
    except BaseException:
        for w in writers.values():
            if not w.f.closed:
                w.abort()
        raise
    tmp = cache / f".meta.json.tmp.{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, cache / "meta.json")
    return meta


def _read_meta(cache: Path) -> dict | None:
    try:
        meta = json.loads((cache / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None
