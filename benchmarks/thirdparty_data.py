"""Held-out Python the built-in corpus never saw: the source of a fixed list of pure-Python third-party packages
installed in this environment (the corpus is CPython's standard library and docs, which skip site-packages).

    python benchmarks/thirdparty_data.py [--out data/thirdparty/test.jsonl] [--max-bytes 200000]

Writes one {"text", "source"} record per file (test folders and files skipped, files sorted, each package capped
at --max-bytes of text) and prints a manifest (package versions, files, bytes): the versions are part of the
measurement, so the model card reports them.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
from pathlib import Path

PACKAGES = ["click", "jinja2", "h11", "more_itertools", "attr", "markdown_it"]
DISTRIBUTIONS = {"attr": "attrs", "markdown_it": "markdown-it-py", "more_itertools": "more-itertools"}


def package_files(name: str) -> tuple[list[Path], Path]:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name} is not installed here")
    root = Path(next(iter(spec.submodule_search_locations)))
    files = [
        p
        for p in sorted(root.rglob("*.py"))
        if not any(part in ("test", "tests", "__pycache__") for part in p.relative_to(root).parts)
        and not p.name.startswith("test_")
    ]
    return files, root


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/thirdparty/test.jsonl")
    ap.add_argument("--max-bytes", type=int, default=50_000, help="text per package at most")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest = {}
    with out.open("w") as f:
        for name in PACKAGES:
            files, root = package_files(name)
            used = n = 0
            for p in files:
                text = p.read_text(encoding="utf-8", errors="replace")
                if not text.strip() or used + len(text) > a.max_bytes:
                    continue
                f.write(json.dumps({"text": text, "source": f"{name}/{p.relative_to(root)}"}) + "\n")
                used, n = used + len(text), n + 1
            version = importlib.metadata.version(DISTRIBUTIONS.get(name, name))
            manifest[name] = {"version": version, "files": n, "chars": used}
    print(json.dumps({"out": str(out), "packages": manifest}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
