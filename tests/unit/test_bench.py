"""`dlm bench --quick --json` end to end on a tiny random model and its causal twin, in a subprocess."""

import json
import math
import os
import subprocess
import sys

import pytest

from dlm.bench import COLUMNS, METHODS, agreement, completion_quality, frontier, main, repeated_ngrams
from dlm.sampling import GenerationConfig
from dlm.tokenizer import train_tokenizer

from ..conftest import tiny_lm

FUNCTIONS = """
def add(a, b):
    total = a + b
    return total


def scale(values, k):
    out = [v * k for v in values]
    return out


def first(items):
    if not items:
        return None
    return items[0]
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    (d / "code.txt").write_text(FUNCTIONS * 20)
    tok = train_tokenizer([d / "code.txt"], vocab_size=300)
    gen = GenerationConfig(gen_length=16, steps=16)
    tiny_lm(tok, "bidirectional", max_seq_len=256, gen=gen).save_pretrained(d / "diffusion")
    tiny_lm(tok, "causal", max_seq_len=256, gen=gen).save_pretrained(d / "ar")
    block = tiny_lm(tok, "block_causal", max_seq_len=256, gen=gen)
    block.model.config.block_size = 4
    block.save_pretrained(d / "block")
    (d / "test.jsonl").write_text(json.dumps({"text": FUNCTIONS}) + "\n")
    return d


def test_agreement_is_exact_token_agreement():
    assert agreement([[1, 2, 3], [4]], [[1, 2, 3], [4]]) == 1.0
    assert agreement([[1, 2, 3, 4]], [[1, 9, 3, 4]]) == 0.75
    assert agreement([[1, 2]], [[1, 2, 3, 4]]) == 0.5  # a shorter generation disagrees where it is missing


def test_repeated_ngrams_is_the_share_of_4grams_seen_before():
    assert repeated_ngrams([1, 2, 3, 4, 5, 6]) == 0.0
    assert repeated_ngrams([1, 2, 3]) == 0.0  # no 4-gram at all
    assert repeated_ngrams([7, 7, 7, 7, 7, 7]) == 2 / 3  # 3 four-grams, one distinct
    assert repeated_ngrams([1, 2, 3, 4, 1, 2, 3, 4]) == 1 / 5  # (1,2,3,4) comes back once among 5


class _Chars:
    eos_token_id = 0

    def decode(self, ids, skip_special_tokens=True):
        return "".join(map(chr, ids))


def test_completion_quality_judges_the_text_before_eos():
    tok, sig = _Chars(), "def f(x):\n"
    good = [ord(c) for c in "    return x\n"] + [0] + [ord(c) for c in "))))"]
    bad = [ord(c) for c in "    return (x\n"]
    q = completion_quality([sig, sig], [good, bad], tok, G=64)
    assert q["parse_rate"] == 0.5 and q["rep4"] == 0.0


def test_prompts_are_fed_healed_and_the_newline_the_model_writes_is_not_judged_twice(monkeypatch, tmp_path):
    """The signature "def f(x):\n" is fed as "def f(x):" (a bare newline token would end the line the model should
    write as "\n    "); the completion then starts with that newline, which belongs to the prompt's text."""
    tok, sig = _Chars(), "def f(x):\n"
    healed = [ord(c) for c in "\n    return x\n"]
    left = [ord(c) for c in "\ndef g(y):\n    return y\n"]  # it wrote a new function instead: no body
    assert completion_quality([sig, sig], [healed, left], tok, G=64)["parse_rate"] == 0.5

    class A:
        task_data, prompts, seed, tasks, prompt_tokens = None, 2, 0, 0, 64

    import dlm.bench

    monkeypatch.setattr(dlm.bench, "DEFAULT_TASK_DATA", str(tmp_path / "absent.jsonl"))  # the fixed openings

    class Lm:
        tokenizer = type("T", (), {"encode": staticmethod(lambda t: [ord(c) for c in t])})

    ids, texts, _, _ = dlm.bench.load_prompts(A(), Lm())
    assert [bytes(i).decode() for i in ids] == [t.rstrip() for t in texts] and texts[0] != texts[0].rstrip()


def test_frontier_keeps_the_points_nothing_beats_on_both():
    pts = [(100.0, 0.3), (200.0, 0.2), (150.0, 0.1), (50.0, 0.3), (300.0, 0.2)]
    assert frontier(pts) == [0, 4]  # (50, .3) is beaten by (100, .3); (200, .2) by (300, .2)
    assert frontier([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]


def test_dlm_bench_quick_json_reports_every_method_with_the_named_columns(models):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = ["--model", models / "diffusion", "--ar-model", models / "ar", "--block-model", models / "block"]
    args += ["--draft-model", models / "ar", "--task-data", models / "test.jsonl"]  # any causal model can draft
    p = subprocess.run(
        [sys.executable, "-m", "dlm.cli", "bench", "--quick", "--json", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert {"machine", "settings", "rows"} <= set(res)
    rows = res["rows"]
    for batch in (1, 2):
        got = [r for r in rows if r["batch"] == batch]
        assert [r["method"] for r in got] == list(METHODS)
        for r in got:
            assert set(COLUMNS) <= set(r)
            # counts, not speed: the timed columns (tok_s, p50_s, peak_rss_mb) are only checked to be numbers
            assert all(
                isinstance(r[k], (int, float)) and math.isfinite(r[k]) for k in ("tok_s", "p50_s", "peak_rss_mb")
            )
            assert r["nfe"] >= 1 and 0 < r["tpf"] <= 16
            assert r["task_score"] is not None and 0.0 <= r["task_score"] <= 1.0
            assert 0.0 <= r["parse_rate"] <= 1.0 and 0.0 <= r["rep4"] < 1.0
        by = {r["method"]: r for r in got}
        assert by["reference"]["agreement"] == 1.0 and by["reference"]["x_reference"] == 1.0
        assert by["reference"]["tpf"] <= 1.0 and by["block-1"]["tpf"] <= 1.0  # one token per forward
        assert by["draft"]["agreement"] == 1.0  # self-speculative decoding writes the same greedy text as draft-1
        assert by["+parallel"]["policy"] == "threshold" and by["+cache"]["cache"] == "dual"
        assert all(0.0 <= by[m]["agreement"] <= 1.0 for m in ("+cache", "+parallel", "+both"))
        assert by["ar"]["agreement"] is None and by["ar"]["cache"] == "kv"
        assert by["block-1"]["cache"] == by["block"]["cache"] == "block" and by["block"]["policy"] == "threshold_prefix"
        assert by["block-1"]["agreement"] == 1.0 and 0.0 <= by["block"]["agreement"] <= 1.0
    assert res["settings"]["block_model"] == str(models / "block")


def test_plot_writes_the_frontier_png(models, tmp_path, capsys, monkeypatch):
    args = ["--quick", "--json", "--model", models / "diffusion", "--ar-model", models / "ar", "--block-model", "none"]
    args += ["--methods", "ar,+parallel", "--tasks", "0", "--runs", "1"]
    assert main(list(map(str, args + ["--task-data", models / "test.jsonl", "--plot", tmp_path / "f.png"]))) == 0
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert {r["method"] for r in rows} == {"reference", "+parallel", "ar"}
    assert all(r["parse_rate"] is not None for r in rows)
    monkeypatch.chdir(tmp_path)  # no task data: the fallback openings are not signatures, nothing to plot
    assert main(list(map(str, args + ["--plot", tmp_path / "g.png"]))) == 2
    assert "--plot" in capsys.readouterr().err and not (tmp_path / "g.png").exists()


def test_block_rows_against_the_ar_twin_run_without_the_reference(models, capsys):
    args = ["--quick", "--json", "--model", models / "diffusion", "--ar-model", models / "ar"]
    args += ["--block-model", models / "block", "--methods", "ar,block-1,block", "--tasks", "0", "--runs", "1"]
    assert main(list(map(str, args))) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert {r["method"] for r in rows} == {"ar", "block-1", "block"}
    assert all(r["x_reference"] is None for r in rows)
    assert all(r["agreement"] == 1.0 for r in rows if r["method"] == "block-1")


def test_dlm_bench_bad_input_names_the_option(models, capsys):
    assert main(["--quick", "--model", str(models / "ar"), "--ar-model", "none"]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["--quick", "--model", str(models / "diffusion"), "--methods", "reference,warp"]) == 2
    assert "--methods" in capsys.readouterr().err
    assert main(["--quick", "--model", str(models / "diffusion"), "--block-model", str(models / "diffusion")]) == 2
    assert "--block-model" in capsys.readouterr().err
