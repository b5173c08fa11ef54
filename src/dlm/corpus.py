"""The `python` corpus for the built-in models: stdlib source plus the Python documentation sources.

Sources, both reachable on a fresh Debian machine without the model hub:

* ``stdlib``: the running interpreter's standard library ``.py`` files, without tests and installed packages;
* ``pydocs``: the reStructuredText sources of the Python docs from Debian's ``python3.11-doc`` package
  (``apt-get download`` + ``dpkg-deb -x``; no root and no install needed). ``DLM_PYDOCS_DIR`` may point at
  an existing ``_sources`` folder instead.

Documents are de-duplicated (see `dedup`), split by `split_for` (a hash of the path, fixed forever) and
written as ``{train,valid,test}.jsonl`` sorted by path, so the files are byte-identical between runs with
the same sources, plus ``manifest.json`` describing them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, TypeVar

from .errors import InputError

logger = logging.getLogger(__name__)

DOC_PACKAGE = "python3.11-doc"
DOC_SOURCES = Path("usr/share/doc/python3.11/html/_sources")
DEFAULT_CACHE_DIR = Path("~/.cache/dlm/debian")
PYDOCS_ENV = "DLM_PYDOCS_DIR"
MAX_FILE_BYTES = 1_000_000
SPLITS = ("train", "valid", "test")
TEST_PERCENT, VALID_PERCENT = 5, 2
SPLIT_RULE = (
    "bucket = int(sha256(path.encode('utf-8')).hexdigest()[:8], 16) % 100; "
    f"test if bucket < {TEST_PERCENT}, valid if bucket < {TEST_PERCENT + VALID_PERCENT}, else train "
    "(path is the document's corpus path, e.g. 'stdlib/json/decoder.py')"
)
DEDUP_RULE = (
    "exact duplicates by sha256 of the text with trailing whitespace stripped from every line "
    "(and trailing blank lines dropped); the lexicographically first path is kept"
)

_SKIP_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"}
_TIMEOUT_S = 600

Log = Callable[[str], None]
T = TypeVar("T", bound=tuple)


# ---- split and dedup --------------------------------------------------------------------------
def split_for(path: str) -> str:
    """'train' | 'valid' | 'test' for a corpus path; see SPLIT_RULE (5 % test, 2 % valid, 93 % train).

    The rule depends on the path only, so a document never changes split between runs or machines.
    """
    bucket = int(hashlib.sha256(path.encode("utf-8")).hexdigest()[:8], 16) % 100
    if bucket < TEST_PERCENT:
        return "test"
    if bucket < TEST_PERCENT + VALID_PERCENT:
        return "valid"
    return "train"


def normalise(text: str) -> str:
    """Text as compared by `dedup`: trailing whitespace stripped per line, trailing blank lines dropped."""
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip("\n")


def dedup(docs: Iterable[T]) -> list[T]:
    """Drop exact duplicates (same `normalise`d text) from (path, text, ...) tuples; result sorted by path."""
    kept: dict[str, T] = {}
    for doc in sorted(docs, key=lambda d: d[0]):
        key = hashlib.sha256(normalise(doc[1]).encode("utf-8")).hexdigest()
        kept.setdefault(key, doc)
    return sorted(kept.values(), key=lambda d: d[0])


# ---- sources ----------------------------------------------------------------------------------
def _read_text(path: Path) -> Optional[str]:
    """The file's text if it is valid UTF-8, non-blank and at most MAX_FILE_BYTES; else None."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return text if text.strip() else None


def stdlib_documents(root: str | Path | None = None) -> Iterator[tuple[str, str]]:
    """Yield ("stdlib/<path relative to the stdlib root>", text) for the stdlib's non-test ``.py`` files.

    Skips test folders (test/, tests/, idle_test/), test_*.py, site-packages, dist-packages, __pycache__,
    hidden entries, the platform-named build folder config-3.X-<arch>/, and files that are blank, not valid
    UTF-8 or larger than MAX_FILE_BYTES.
    """
    base = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith((".", "config-")))
        for name in sorted(filenames):
            if not name.endswith(".py") or name.startswith((".", "test_")):
                continue
            path = Path(dirpath) / name
            text = _read_text(path)
            if text is not None:
                yield "stdlib/" + path.relative_to(base).as_posix(), text


def docs_documents(sources_dir: str | Path) -> Iterator[tuple[str, str]]:
    """Yield ("pydocs/<relative>.rst.txt", text) for every ``*.rst.txt`` under a docs ``_sources`` folder."""
    base = Path(sources_dir)
    for path in sorted(base.rglob("*.rst.txt")):
        if path.is_file():
            text = _read_text(path)
            if text is not None:
                yield "pydocs/" + path.relative_to(base).as_posix(), text


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("E:")]
    return (errors or lines or ["no output"])[-1]


def _fetch_docs(cache_dir: Path) -> tuple[Optional[Path], Optional[str]]:
    """(sources folder, None) or (None, one-line reason)."""
    override = os.environ.get(PYDOCS_ENV)
    if override:
        p = Path(override).expanduser()
        if p.is_dir():
            return p, None
        return None, f"{PYDOCS_ENV}={override} is not a folder"
    sources = cache_dir / "extract" / DOC_SOURCES
    if sources.is_dir() and next(sources.rglob("*.rst.txt"), None) is not None:
        return sources, None
    missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        return None, f"{' and '.join(missing)} not found (not a Debian-like system?); skipping {DOC_PACKAGE}"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache_dir))
    except OSError as e:
        return None, f"cannot use cache folder {cache_dir}: {e}"
    try:
        p = subprocess.run(
            ["apt-get", "download", DOC_PACKAGE], cwd=work, capture_output=True, text=True, timeout=_TIMEOUT_S
        )
        debs = sorted(work.glob(f"{DOC_PACKAGE}_*.deb"))
        if p.returncode != 0 or not debs:
            hint = " (try `apt-get update`)" if any(k in p.stderr for k in ("Unable to locate", "candidate")) else ""
            return None, f"apt-get download {DOC_PACKAGE} failed: {_last_line(p.stderr or p.stdout)}{hint}"
        p = subprocess.run(
            ["dpkg-deb", "-x", str(debs[-1]), str(work / "extract")], capture_output=True, text=True, timeout=_TIMEOUT_S
        )
        if p.returncode != 0:
            return None, f"dpkg-deb -x {debs[-1].name} failed: {_last_line(p.stderr or p.stdout)}"
        if not (work / "extract" / DOC_SOURCES).is_dir():
            return None, f"{debs[-1].name} has no {DOC_SOURCES} folder"
        for old in cache_dir.glob(f"{DOC_PACKAGE}_*.deb"):
            old.unlink()
        os.replace(debs[-1], cache_dir / debs[-1].name)  # kept as a record of the package version
        if (cache_dir / "extract").exists():
            shutil.rmtree(cache_dir / "extract")
        os.replace(work / "extract", cache_dir / "extract")
        return sources, None
    except subprocess.TimeoutExpired as e:
        return None, f"{e.cmd[0]} timed out after {_TIMEOUT_S} s"
    except OSError as e:
        return None, f"fetching {DOC_PACKAGE} failed: {e}"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fetch_python_docs(cache_dir: str | Path | None = None, log: Optional[Log] = None) -> Optional[Path]:
    """The ``_sources`` folder of Debian's python3.11-doc, downloaded and unpacked into cache_dir if needed.

    ``$DLM_PYDOCS_DIR`` (an existing ``_sources`` folder) takes precedence; an existing extraction under
    ``cache_dir/extract`` is reused. On failure returns None and logs a one-line reason.
    """
    path, reason = _fetch_docs(Path(cache_dir or DEFAULT_CACHE_DIR).expanduser())
    if reason:
        (log or logger.warning)(f"pydocs unavailable: {reason}")
    return path


def _docs_version(cache_dir: Path, sources: Path) -> Optional[str]:
    """Debian version of the cached python3.11-doc (from the kept .deb's name), if that is what we use."""
    if os.environ.get(PYDOCS_ENV) or sources != cache_dir / "extract" / DOC_SOURCES:
        return None
    for deb in sorted(cache_dir.glob(f"{DOC_PACKAGE}_*.deb")):
        m = re.match(rf"{re.escape(DOC_PACKAGE)}_(.+)_[^_]+\.deb$", deb.name)
        if m:
            return m.group(1).replace("%3a", ":")
    return None


# ---- writing ----------------------------------------------------------------------------------
def _write_atomic(path: Path, lines: Sequence[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(lines)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def prepare_python_corpus(
    out_dir: str | Path,
    *,
    include_docs: bool = True,
    cache_dir: str | Path | None = None,
    log: Log = print,
    stdlib_root: str | Path | None = None,
) -> dict:
    """Build the `python` corpus into out_dir ({train,valid,test}.jsonl + manifest.json); return the manifest.

    Each JSONL line is {"text", "path", "source"} with source "stdlib" or "pydocs". A source that cannot
    be reached is reported (log + manifest reason) and the corpus is built from the rest.
    """
    out = Path(out_dir).expanduser()
    cache = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser()
    sources: dict[str, dict] = {}
    docs: list[tuple[str, str, str]] = []

    stdlib = [(p, t, "stdlib") for p, t in stdlib_documents(stdlib_root)]
    sources["stdlib"] = {"available": bool(stdlib)}
    if not stdlib:
        sources["stdlib"]["reason"] = f"no usable .py files under {stdlib_root or sysconfig.get_paths()['stdlib']}"
        log(f"stdlib unavailable: {sources['stdlib']['reason']}")
    docs += stdlib

    if include_docs:
        log(f"pydocs: using {PYDOCS_ENV}" if os.environ.get(PYDOCS_ENV) else f"pydocs: {DOC_PACKAGE} via {cache}")
        path, reason = _fetch_docs(cache)
        pydocs = [(p, t, "pydocs") for p, t in docs_documents(path)] if path else []
        if path and not pydocs:
            reason = f"no *.rst.txt files under {path}"
        sources["pydocs"] = {"available": not reason, "package": DOC_PACKAGE}
        if reason:
            sources["pydocs"]["reason"] = reason
            log(f"pydocs unavailable: {reason}")
        else:
            sources["pydocs"]["version"] = _docs_version(cache, path)
        docs += pydocs
    else:
        sources["pydocs"] = {"available": False, "reason": "skipped (--no-docs)", "package": DOC_PACKAGE}

    kept = dedup(docs)
    for name, info in sources.items():
        mine = [d for d in kept if d[2] == name]
        info.update(documents=len(mine), bytes=sum(_nbytes(d[1]) for d in mine))
        info["duplicates_dropped"] = sum(1 for d in docs if d[2] == name) - len(mine)

    by_split: dict[str, list[tuple[str, str, str]]] = {s: [] for s in SPLITS}
    for d in kept:
        by_split[split_for(d[0])].append(d)
    splits: dict[str, dict] = {}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for s, rows in by_split.items():
            path = out / f"{s}.jsonl"
            _write_atomic(
                path,
                [json.dumps({"text": t, "path": p, "source": src}, ensure_ascii=False) + "\n" for p, t, src in rows],
            )
            splits[s] = {
                "file": path.name,
                "documents": len(rows),
                "bytes": path.stat().st_size,
                "text_bytes": sum(_nbytes(t) for _, t, _ in rows),
                "sha256": _sha256_file(path),
            }
        manifest = {
            "name": "python",
            "python_version": platform.python_version(),
            "split_rule": SPLIT_RULE,
            "dedup_rule": DEDUP_RULE,
            "splits": splits,
            "sources": sources,
        }
        _write_atomic(out / "manifest.json", [json.dumps(manifest, indent=2, sort_keys=True) + "\n"])
    except OSError as e:
        raise InputError("out_dir", f"cannot write the corpus to {out}: {e}") from None
    return manifest
