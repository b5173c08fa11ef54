"""The claims report's verdict rules and report writing, on synthetic measurements (the measuring itself runs in
tests/integration/test_claims.py)."""

import math

import pytest

from dlm.eval import claims


def test_two_proportion_p():
    assert claims.two_proportion_p(50, 100, 50, 100) == pytest.approx(1.0)
    assert claims.two_proportion_p(60, 100, 40, 100) == pytest.approx(0.0047, abs=2e-4)  # z = 2.83
    assert claims.two_proportion_p(0, 0, 1, 2) == 1.0


def _bench_rows(diff_tok_s, ar_tok_s, score=0.1):
    rows = [{"batch": 1, "method": m, "tok_s": t, "tpf": 1.0, "task_score": score, "agreement": 1.0}
            for m, t in (("reference", 10.0), ("+both", diff_tok_s))]  # fmt: skip
    return rows + [{"batch": 1, "method": "ar", "tok_s": ar_tok_s, "tpf": 1, "task_score": score, "agreement": None}]


def _measurements(*, diff_tok_s=100.0, ar_tok_s=300.0, hall=(0.1, 0.4), distinct=(0.6, 0.5), infill=(0.6, 0.3)):
    q = [{"model": m, "temperature": 1.0, "gen_ppl": 20.0, "distinct_2": d, "self_bleu": 10.0,
          "joules_per_token": j, "cpu_seconds_per_token": j / 7.5, "joules_source": "assumed"}
         for m, d, j in (("diffusion", distinct[0], 0.5), ("ar", distinct[1], 0.1))]  # fmt: skip
    task = lambda acc_d, acc_a, **kw: {  # noqa: E731
        "diffusion": [{"accuracy": acc_d, "n": 200, "nfe_mean": 32.0, **kw}],
        "ar": [{"accuracy": acc_a, "n": 200, "nfe_mean": 96.0, **kw}],
    }
    facts = task(0.5, 0.3)
    facts["diffusion"][0].update(hallucinated=hall[0], abstained=0.4)
    facts["ar"][0].update(hallucinated=hall[1], abstained=0.3)
    return {
        "quick": False, "seconds": 60.0, "conditions": {"x": "y"},
        "machine": {"date": "2026-11-22", "cpu": "cpu", "cores": 2, "torch": "2"},
        "bench": {"rows": _bench_rows(diff_tok_s, ar_tok_s)},
        "quality": q,
        "infill": {"diffusion": {"n": 100, "exact_match": 0.05, "ast_valid": infill[0]},
                   "ar": {"n": 100, "exact_match": 0.04, "ast_valid": infill[1]}},
        "tasks": {"sudoku": task(0.9, 0.2), "countdown": task(0.5, 0.45), "arithmetic": task(0.3, 0.6), "facts": facts},
    }  # fmt: skip


def test_verdicts_follow_the_stated_rules():
    v = {r["claim"]: r["verdict"] for r in claims.verdicts(_measurements())}
    assert v[1] == "refuted"  # AR twin faster
    assert v[2] == "confirmed"  # 75 % fewer hallucinations, significant
    assert v[3] == "confirmed"  # +20 % distinct-2 at equal perplexity
    assert v[4] == "refuted"  # more joules per token
    assert v[5] == "confirmed"  # 2x fills that parse, significant
    assert v[6] == "inconclusive"  # sudoku won, arithmetic lost
    assert v[7] == "inconclusive"  # 5 % vs 4 %
    assert v[8] == v[9] == "not measured"
    v = {r["claim"]: r["verdict"] for r in claims.verdicts(_measurements(diff_tok_s=900, hall=(0.35, 0.4),
                                                                          infill=(0.45, 0.3)))}  # fmt: skip
    assert v[1] == "confirmed" and v[2] == "inconclusive" and v[5] == "partly confirmed"
    m = _measurements(hall=(0.5, 0.2))
    assert {r["claim"]: r["verdict"] for r in claims.verdicts(m)}[2] == "refuted"


def test_missing_task_twins_are_not_measured_and_the_report_is_written(tmp_path):
    m = _measurements()
    m["tasks"] = {name: {"missing": [f"runs/tasks/{name}-ar/final"]} for name in claims.TASKS}
    rows = claims.verdicts(m)
    assert {r["claim"]: r["verdict"] for r in rows}[6] == "not measured"
    path = claims.write_report(m, tmp_path)
    text = path.read_text()
    assert text.count("\n| ") >= 10 and "**not measured**" in text and "speed_vs_quality.png" in text
    assert (tmp_path / "speed_vs_quality.png").stat().st_size > 1000
    assert not (tmp_path / "accuracy_vs_nfe.png").exists()
    full = claims.write_report(_measurements(), tmp_path / "full")
    assert (tmp_path / "full" / "accuracy_vs_nfe.png").is_file() and (tmp_path / "full" / "hallucination.png").is_file()
    assert "hallucination.png" in full.read_text() and not math.isnan(len(text))


def test_report_has_the_task_table_and_explains_a_missed_sudoku_target(tmp_path):
    m = _measurements()
    m["tasks"]["sudoku"]["diffusion"][0].update(accuracy=0.0, cell_accuracy=0.15)
    m["training"] = {
        "sudoku-diffusion": {"steps": 3000, "tokens": 18.4e6, "examples_seen": 96000, "train_examples": 20000,
                             "loss_curve": [{"until_step": 500 * (i + 1), "loss": 2.0 - 0.1 * i} for i in range(6)]},
        "sudoku-ar": {"steps": 3000, "tokens": 18.4e6,
                      "loss_curve": [{"until_step": 500 * (i + 1), "loss": 0.2} for i in range(6)]},
    }  # fmt: skip
    text = claims.write_report(m, tmp_path).read_text()
    assert "| sudoku | diffusion | 32.0 | 0.0% | cell_accuracy 15.0% | 200 |" in text
    assert "Not met: the diffusion model solves 0% of 200 test puzzles" in text
    assert "1.500; still falling at the end" in text and "0.200; flattening at the end" in text
    assert "4.8 epochs of 20,000" in text and "62× our number of epochs" in text
    m["tasks"]["sudoku"]["diffusion"][0]["accuracy"] = 0.97
    assert "Met: the diffusion model solves 97%" in claims.write_report(m, tmp_path).read_text()
