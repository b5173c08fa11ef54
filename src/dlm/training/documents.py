"""Training sources and documents: expand files/folders/globs, read text, JSONL, chat and table files,
and assign each document to the train or held-out split by a stable hash."""

from __future__ import annotations

from dataclasses import dataclass

import fnmatch
import glob
import hashlib
import json
import logging
import os
import sysconfig
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..errors import InputError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".py", ".md", ".rst", ".jsonl", ".json", ".csv", ".parquet", ".arrow", ""}
TABLE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow", ".json": "json"}
SKIP_DIRS = {"__pycache__", "site-packages", "dist-packages", "node_modules"}


@dataclass(frozen=True)
class Completion:
    """A raw SFT example without a chat template: a prompt and its completion, as texts or as token ids of the
    run's tokenizer (`prompt_ids` / `completion_ids`: distillation data keeps the teacher's exact tokens)."""

    prompt: str | tuple[int, ...]
    completion: str | tuple[int, ...]
    template: str | None = None  # the completion with locked text (see TemplatedChat)

    def texts(self) -> list[str]:
        return [v for v in (self.prompt, self.completion) if isinstance(v, str) and v]


class TemplatedChat(list):
    """Chat messages (a list, as every other chat document) whose last (assistant) message has an answer
    template (the row's "template" field): its text is locked in place, never noised and never scored, and
    each "<|mask|>" is one answer token the model learns to write (`Tokenizer.encode_template`)."""

    def __init__(self, messages: list[dict], template: str):
        super().__init__(messages)
        self.template = template


Doc = tuple[str, "str | list[dict] | Completion"]


def _expand_pattern(pattern: str) -> str:
    if "{stdlib}" in pattern:
        pattern = pattern.replace("{stdlib}", sysconfig.get_paths()["stdlib"])
    return os.path.expanduser(pattern)


def _walk_dir(root: Path) -> Iterator[Path]:
    """Text-like files under root, skipping hidden entries, caches and installed packages."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS]
        for name in filenames:
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            if p.suffix.lower() in TEXT_SUFFIXES:
                yield p


def _excluded(path: Path, exclude: Sequence[str]) -> bool:
    full = os.path.abspath(path)
    return any(fnmatch.fnmatch(full, pat) or fnmatch.fnmatch(str(path), pat) for pat in exclude)


def expand_sources(patterns: list[str], field: str = "data.train", exclude: Iterable[str] = ()) -> list[Path]:
    """Expand files, folders (recursive) and globs into a sorted, de-duplicated list of files.

    A pattern that matches no file (after `exclude`) raises InputError(field, ...).
    """
    if isinstance(patterns, (str, Path)):
        patterns = [str(patterns)]
    exclude = [_expand_pattern(e) for e in exclude]
    found: set[Path] = set()
    for i, raw in enumerate(patterns):
        pat = _expand_pattern(str(raw))
        p = Path(pat)
        if p.is_file():
            candidates = [p]
        elif p.is_dir():
            candidates = list(_walk_dir(p))
        else:
            candidates = []
            for m in glob.glob(pat, recursive=True):
                mp = Path(m)
                if mp.is_file():
                    candidates.append(mp)
                elif mp.is_dir():
                    candidates.extend(_walk_dir(mp))
        kept = [c for c in candidates if not _excluded(c, exclude)]
        if not kept:
            why = " (all matches were removed by data.exclude)" if candidates else ""
            raise InputError(f"{field}[{i}]", f"{raw!r} matched no files{why}; give existing files, folders or globs")
        found.update(kept)
    return sorted(found, key=str)


# ---- documents --------------------------------------------------------------------------------
def _check_messages(where: str, messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise InputError(where, "field 'messages' must be a non-empty list of {'role', 'content'} objects")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise InputError(where, f"field 'messages'[{j}] must be an object with string 'role' and 'content'")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _record_doc(where: str, rec, text_field: str):
    """Text (str) or chat messages (list) from one jsonl line / table row; None if empty."""
    if not isinstance(rec, dict):
        got = type(rec).__name__
        raise InputError(where, f"expected a JSON object with a {text_field!r} or 'messages' field, got {got}")
    if rec.get(text_field) is not None:
        text = rec[text_field]
        if not isinstance(text, str):
            raise InputError(where, f"field {text_field!r} must be a string, got {type(text).__name__}")
        return text if text.strip() else None
    template = rec.get("template")
    if template is not None and not isinstance(template, str):
        raise InputError(where, f"field 'template' must be a string, got {type(template).__name__}")
    if rec.get("messages") is not None:
        messages = _check_messages(where, rec["messages"])
        return messages if template is None else TemplatedChat(messages, template)
    if any(k in rec for k in ("completion", "completion_ids")):
        return Completion(_part(where, rec, "prompt"), _part(where, rec, "completion"), template)
    raise InputError(
        where,
        f"has no {text_field!r} string, 'messages' list or 'prompt'/'completion' pair (keys: {sorted(rec)})",
    )


def _part(where: str, rec: dict, name: str):
    """A Completion's `name` part: the string `name`, or the token ids `name`_ids (non-negative integers)."""
    if rec.get(f"{name}_ids") is not None:
        ids = rec[f"{name}_ids"]
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids):
            raise InputError(where, f"field '{name}_ids' must be a list of non-negative integer token ids")
        return tuple(ids)
    value = rec.get(name, "")
    if not isinstance(value, str):
        raise InputError(where, f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def _iter_jsonl(path: Path, text_field: str) -> Iterator[Doc]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(
                    where,
                    f"invalid JSON ({e.msg}); each line must be an object with a {text_field!r} or 'messages' field",
                ) from None
            doc = _record_doc(where, rec, text_field)
            if doc is not None:
                yield where, doc


def _iter_table(path: Path, text_field: str) -> Iterator[Doc]:
    try:
        import datasets  # local files with a packaged builder: no network access
    except ImportError:
        raise InputError(
            str(path), f"reading {path.suffix} files needs the optional 'datasets' package (pip install 'dlm[data]')"
        ) from None

    try:
        ds = datasets.load_dataset(TABLE_BUILDERS[path.suffix.lower()], data_files=str(path), split="train")
    except Exception as e:  # datasets raises many types for unreadable files
        raise InputError(str(path), f"could not be read as {path.suffix} data ({type(e).__name__}: {e})") from None
    cols = ds.column_names
    if text_field not in cols and "messages" not in cols:
        raise InputError(
            str(path),
            f"has no {text_field!r} or 'messages' column (columns: {cols}); set data.text_field or data.exclude",
        )
    keep = [c for c in (text_field, "messages", "template") if c in cols]
    for row_i, rec in enumerate(ds.select_columns(keep)):
        where = f"{path}:{row_i + 1}"
        doc = _record_doc(where, rec, text_field)
        if doc is not None:
            yield where, doc


def _iter_text(path: Path) -> Iterator[Doc]:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        log.info("skipping binary file %s", path)
        return
    text = data.decode("utf-8", errors="replace")
    if text.strip():
        yield str(path), text


def iter_documents(paths: Iterable[str | Path], text_field: str = "text") -> Iterator[Doc]:
    """Yield (doc_id, text | messages) in file order; doc ids are `path` or `path:line`."""
    for path in map(Path, paths):
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            yield from _iter_jsonl(path, text_field)
        elif suffix in TABLE_BUILDERS:
            yield from _iter_table(path, text_field)
        else:
            yield from _iter_text(path)


def document_texts(paths, text_field: str = "text", max_bytes: int = 0) -> Iterator[str]:
    """The texts of documents (chat messages' contents one by one), e.g. to train a tokenizer on what the
    model will read rather than on raw JSONL bytes; stops after about max_bytes (0 = no cap)."""
    total = 0
    for _, doc in iter_documents(paths, text_field):
        if isinstance(doc, Completion):
            parts = doc.texts()
        else:
            parts = [doc] if isinstance(doc, str) else [m.get("content", "") for m in doc]
        for t in parts:
            if t:
                total += len(t.encode("utf-8", errors="replace"))
                yield t
        if max_bytes and total >= max_bytes:
            return


def split_of(doc_id: str, valid_fraction: float, seed: int) -> str:
    """'train' or 'valid' from a stable hash of doc_id and seed."""
    return "valid" if _hash_unit(doc_id, seed) < valid_fraction else "train"


def _hash_unit(doc_id: str, seed: int) -> float:
    h = hashlib.sha1(f"{doc_id}\x00{seed}".encode("utf-8", errors="replace")).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def _doc_bytes(doc) -> int:
    if isinstance(doc, str):
        return len(doc.encode("utf-8", errors="replace"))
    if isinstance(doc, Completion):
        return sum(len(v.encode("utf-8", errors="replace")) if isinstance(v, str) else 4 * len(v)
                   for v in (doc.prompt, doc.completion))  # fmt: skip
    return sum(len(m["content"].encode("utf-8", errors="replace")) for m in doc)


# ---- datasets ---------------------------------------------------------------------------------
