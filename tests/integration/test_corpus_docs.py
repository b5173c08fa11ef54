"""The real Python docs fetch: `apt-get download python3.11-doc` + `dpkg-deb -x` (needs Debian's registry)."""

import shutil

import pytest

from dlm import corpus

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None,
        reason="apt-get/dpkg-deb not found: not a Debian-like system, python3.11-doc cannot be fetched",
    ),
]


def test_fetch_python_docs_real(tmp_path, monkeypatch):
    monkeypatch.delenv(corpus.PYDOCS_ENV, raising=False)
    reasons: list[str] = []
    src = corpus.fetch_python_docs(tmp_path / "cache", log=reasons.append)
    assert src is not None, f"fetch failed: {reasons}"
    assert src == tmp_path / "cache" / "extract" / corpus.DOC_SOURCES
    docs = list(corpus.docs_documents(src))
    assert len(docs) > 300
    paths = [p for p, _ in docs]
    assert "pydocs/library/json.rst.txt" in paths
    assert all(p.startswith("pydocs/") and p.endswith(".rst.txt") for p in paths)
    assert not list((tmp_path / "cache").glob(".fetch-*"))  # the work folder is cleaned up
    assert corpus.fetch_python_docs(tmp_path / "cache", log=reasons.append) == src  # reused, no second download
