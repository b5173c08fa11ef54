"""The `python` corpus builder (dlm.corpus) and `dlm data prepare`; no network."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlm import corpus
from dlm.corpus import dedup, prepare_python_corpus, split_for, stdlib_documents


@pytest.fixture(autouse=True)
def _no_docs_override(monkeypatch):
    monkeypatch.delenv(corpus.PYDOCS_ENV, raising=False)


@pytest.fixture
def fake_stdlib(tmp_path) -> Path:
    root = tmp_path / "lib" / "python3.99"
    files = {
        "os.py": "import sys\n",
        "json/__init__.py": "from .decoder import *\n",
        "json/decoder.py": "def decode(s):\n    return s\n",
        "email/parser.py": "class Parser:\n    pass\n",
        "email/copy.py": "class Parser:   \n    pass\n\n",  # same as parser.py up to trailing whitespace
        "ast.py": "def parse(src):\n    return src\n",
        "secrets.py": "import random\n",
        "blank.py": "\n\n",
        "test/test_os.py": "assert True\n",
        "json/tests/helper.py": "x = 1\n",
        "idlelib/idle_test/htest.py": "x = 2\n",
        "lib2to3/tests/data/bom.py": "x = 3\n",
        "unittest/case.py": "class TestCase:\n    pass\n",
        "unittest/test/test_case.py": "x = 4\n",
        "asyncio/test_utils.py": "x = 5\n",
        "site-packages/pkg/mod.py": "x = 6\n",
        "dist-packages/pkg/mod.py": "x = 7\n",
        "__pycache__/os.py": "x = 8\n",
        "config-3.99-x86_64-linux-gnu/python-config.py": "x = 9\n",
        "notes.txt": "not python\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "latin1.py").write_bytes(b"s = '\xe9'\n")
    (root / "huge.py").write_text("x = 1\n" * (corpus.MAX_FILE_BYTES // 6 + 1))
    return root


def test_split_for_is_fixed():
    # Computed once; a change of the split rule must fail here (it would reshuffle every corpus).
    known = {
        "stdlib/json/decoder.py": "train",
        "stdlib/secrets.py": "valid",
        "stdlib/email/feedparser.py": "valid",
        "stdlib/ast.py": "test",
        "stdlib/heapq.py": "test",
    }
    assert {p: split_for(p) for p in known} == known


def test_split_ratios_over_real_stdlib():
    paths = [p for p, _ in stdlib_documents()]
    assert len(paths) > 400
    share = {s: sum(split_for(p) == s for p in paths) / len(paths) for s in corpus.SPLITS}
    assert 0.88 < share["train"] < 0.97
    assert 0.005 < share["valid"] < 0.045
    assert 0.025 < share["test"] < 0.08


def test_stdlib_documents_real_excludes_tests_and_packages():
    paths = [p for p, _ in stdlib_documents()]
    assert "stdlib/json/decoder.py" in paths and "stdlib/os.py" in paths
    for p in paths:
        parts = p.split("/")
        assert parts[0] == "stdlib"
        assert not {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"} & set(parts), p
        assert not parts[-1].startswith("test_"), p


def test_stdlib_documents_fake_root(fake_stdlib):
    docs = dict(stdlib_documents(fake_stdlib))
    assert sorted(docs) == [
        "stdlib/ast.py",
        "stdlib/email/copy.py",
        "stdlib/email/parser.py",
        "stdlib/json/__init__.py",
        "stdlib/json/decoder.py",
        "stdlib/os.py",
        "stdlib/secrets.py",
        "stdlib/unittest/case.py",
    ]
    assert docs["stdlib/os.py"] == "import sys\n"


def test_dedup_keeps_first_path():
    docs = [("b.py", "x = 1  \n\n", "stdlib"), ("a.py", "x = 1\n", "stdlib"), ("c.py", "y = 2\n", "stdlib")]
    assert dedup(docs) == [("a.py", "x = 1\n", "stdlib"), ("c.py", "y = 2\n", "stdlib")]


def _read_split(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_prepare_is_byte_identical_and_manifest_matches(fake_stdlib, tmp_path):
    logs: list[str] = []
    m1 = prepare_python_corpus(tmp_path / "a", include_docs=False, stdlib_root=fake_stdlib, log=logs.append)
    m2 = prepare_python_corpus(tmp_path / "b", include_docs=False, stdlib_root=fake_stdlib, log=logs.append)
    assert m1 == m2
    paths = []
    for split in corpus.SPLITS:
        a, b = (tmp_path / d / f"{split}.jsonl" for d in "ab")
        assert a.read_bytes() == b.read_bytes()
        info = m1["splits"][split]
        assert info["sha256"] == hashlib.sha256(a.read_bytes()).hexdigest()
        assert info["bytes"] == a.stat().st_size
        rows = _read_split(a)
        assert info["documents"] == len(rows)
        assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
        assert all(split_for(r["path"]) == split and r["source"] == "stdlib" for r in rows)
        paths += [r["path"] for r in rows]
    assert "stdlib/email/copy.py" in paths and "stdlib/email/parser.py" not in paths  # deduplicated
    assert m1["sources"]["stdlib"] == {
        "available": True,
        "documents": 7,
        "duplicates_dropped": 1,
        "bytes": m1["sources"]["stdlib"]["bytes"],
    }
    assert m1["sources"]["pydocs"]["available"] is False
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == m1
    assert m1["split_rule"] == corpus.SPLIT_RULE
    assert not list((tmp_path / "a").glob(".*"))  # no temporary files left behind


def test_missing_apt_reports_and_keeps_stdlib(fake_stdlib, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    logs: list[str] = []
    m = prepare_python_corpus(tmp_path / "out", cache_dir=tmp_path / "cache", stdlib_root=fake_stdlib, log=logs.append)
    docs = m["sources"]["pydocs"]
    assert docs["available"] is False and docs["documents"] == 0
    assert "apt-get" in docs["reason"]
    assert any("pydocs unavailable" in line and "apt-get" in line for line in logs)
    assert m["sources"]["stdlib"]["documents"] == 7
    assert sum(s["documents"] for s in m["splits"].values()) == 7
    assert corpus.fetch_python_docs(tmp_path / "cache", log=logs.append) is None


def test_docs_override_env(fake_stdlib, tmp_path, monkeypatch):
    src = tmp_path / "_sources"
    (src / "library").mkdir(parents=True)
    (src / "library" / "json.rst.txt").write_text("json\n====\n")
    (src / "index.rst.txt").write_text("Index\n")
    (src / "skip.txt").write_text("not rst\n")
    monkeypatch.setenv(corpus.PYDOCS_ENV, str(src))
    assert corpus.fetch_python_docs(tmp_path / "cache") == src
    assert [p for p, _ in corpus.docs_documents(src)] == ["pydocs/index.rst.txt", "pydocs/library/json.rst.txt"]
    m = prepare_python_corpus(
        tmp_path / "out", cache_dir=tmp_path / "cache", stdlib_root=fake_stdlib, log=lambda _: None
    )
    assert m["sources"]["pydocs"]["available"] is True and m["sources"]["pydocs"]["documents"] == 2


def test_cli_unknown_name_exits_2():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "dlm.cli", "data", "prepare", "rust"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 2
    assert "NAME" in p.stderr and "python" in p.stderr
