"""Training data: the data config and `build_dataset` (cached tokenisation -> (train, valid) datasets).

The jobs live in sibling modules, re-exported here (the public data API): sources and documents
(documents.py), the token cache (token_cache.py), datasets over it (token_datasets.py), batching (batching.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, InputError
from .batching import BatchIterator, eval_batches  # noqa: F401
from .documents import (  # noqa: F401
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
from .token_cache import (  # noqa: F401
    CACHE_VERSION,
    _build_cache,
    _fingerprint,
    _read_meta,
    _SplitWriter,
)
from .token_datasets import PackedDataset, PackedSFTDataset, SFTDataset  # noqa: F401

log = logging.getLogger(__name__)

TASKS = ("pretrain", "sft")


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


def _load_split(cfg: DataConfig, cache: Path, meta: dict, split: str):
    info = meta[split]
    if cfg.task == "sft":
        rows = info["num_tokens"] // cfg.seq_len
        lengths = cache / f"{split}.prompt_lengths.npy"
        return SFTDataset.from_files(cache / f"{split}.bin", lengths, meta["dtype"], rows, cfg.seq_len,
                                     cache / f"{split}.locked.npy")  # fmt: skip
    return PackedDataset.from_file(cache / f"{split}.bin", meta["dtype"], info["num_tokens"], cfg.seq_len)


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
        (cache / f"{s}.bin").is_file()
        and (cfg.task != "sft" or all((cache / f"{s}.{k}.npy").is_file() for k in ("prompt_lengths", "locked")))
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
