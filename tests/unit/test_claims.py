"""The claims report's verdict rules and report writing, on synthetic measurements (the measuring itself runs in
tests/integration/test_claims.py)."""

import json
import math

import pytest

from dlm.eval import claims


def test_exact_tests_on_known_counts():
    # Fisher, 1/10 vs 9/10: P(X <= 1) for Hypergeometric(20, 10, 10) = (1 + 100) / C(20, 10), doubled by symmetry
    assert claims.fisher_p(1, 10, 9, 10) == pytest.approx(2 * 101 / 184756, rel=1e-6)
    assert claims.fisher_p(5, 10, 5, 10) == pytest.approx(1.0) and claims.fisher_p(0, 0, 1, 2) == 1.0
    # McNemar exact: 8 pairs only x right, 2 only y right -> 2 * P(Binomial(10, 1/2) <= 2) = 2 * 56 / 1024
    x = [1] * 8 + [0] * 2 + [1] * 5 + [0] * 5
    y = [0] * 8 + [1] * 2 + [1] * 5 + [0] * 5
    assert claims.mcnemar(x, y) == {"only_x": 8, "only_y": 2, "p": pytest.approx(112 / 1024)}
    assert claims.mcnemar([1, 0], [1, 0])["p"] == 1.0
    lo, hi = claims.interval(0, 10)  # Clopper-Pearson: upper = 1 - 0.025^(1/10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** 0.1, rel=1e-6)
    # the same counts, paired or not: compare() picks McNemar only when both kept the same items
    a = {"n": 20, "accuracy": 13 / 20, "items": [{"id": i, "correct": v} for i, v in enumerate(x)]}
    b = {"n": 20, "accuracy": 7 / 20, "items": [{"id": i, "correct": v} for i, v in enumerate(y)]}
    assert claims.compare(a, b)["test"] == "McNemar exact" and claims.compare(a, b)["k"] == (13, 7)
    b_other = {**b, "items": [{"id": i + 100, "correct": v} for i, v in enumerate(y)]}
    assert claims.compare(a, b_other)["test"] == "Fisher exact"
    assert claims.compare(a, b_other)["p"] == pytest.approx(claims.fisher_p(13, 20, 7, 20))


def _facts_items(halluc: int, known_right: int, n: int = 200) -> list[dict]:
    """n items, the first half about known people: `known_right` of them right, then `halluc` hallucinations
    (on unknown people first), the rest abstentions."""
    items = []
    for i in range(n):
        known = i < n // 2
        right = known and i < known_right
        items.append({"id": i, "known": known, "correct": right, "hallucinated": False, "abstained": not right})
    for it in [it for it in items if not it["known"]] + [it for it in items if it["known"] and not it["correct"]]:
        if halluc == 0:
            break
        it["hallucinated"], it["abstained"], halluc = True, False, halluc - 1
    return items


def _facts_row(items, nfe):
    n = len(items)
    rate = lambda k: sum(it[k] for it in items) / n  # noqa: E731
    return {"n": n, "nfe_mean": nfe, "items": items, "accuracy": rate("correct"), "hallucinated": rate("hallucinated"),
            "abstained": rate("abstained")}  # fmt: skip


def _bench_rows(diff_tok_s, ar_tok_s, score=0.1):
    rows = [{"batch": 1, "method": m, "tok_s": t, "tpf": 1.0, "task_score": score, "agreement": 1.0}
            for m, t in (("reference", 10.0), ("+both", diff_tok_s))]  # fmt: skip
    return rows + [{"batch": 1, "method": "ar", "tok_s": ar_tok_s, "tpf": 1, "task_score": score, "agreement": None}]


def _measurements(*, diff_tok_s=100.0, ar_tok_s=300.0, hall=(0.1, 0.4), known=(50, 50), distinct=(0.6, 0.5),
                  infill=(0.6, 0.3)):  # fmt: skip
    q = [{"model": m, "temperature": 1.0, "gen_ppl": 20.0, "distinct_2": d, "self_bleu": 10.0,
          "joules_per_token": j, "cpu_seconds_per_token": j / 7.5, "joules_source": "assumed"}
         for m, d, j in (("diffusion", distinct[0], 0.5), ("ar", distinct[1], 0.1))]  # fmt: skip
    task = lambda acc_d, acc_a, **kw: {  # noqa: E731
        "diffusion": [{"accuracy": acc_d, "n": 200, "nfe_mean": 32.0, **kw}],
        "ar": [{"accuracy": acc_a, "n": 200, "nfe_mean": 96.0, **kw}],
    }
    facts = {"diffusion": [_facts_row(_facts_items(round(hall[0] * 200), known[0]), 8.0)],
             "ar": [_facts_row(_facts_items(round(hall[1] * 200), known[1]), 3.0)]}  # fmt: skip
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
    assert v[2] == "confirmed"  # 75 % fewer hallucinations, significant, as many right on known people
    assert v[3] == "confirmed"  # +20 % distinct-2 at equal perplexity
    assert v[4] == "refuted"  # more joules per token
    assert v[5] == "not compared"  # diffusion saw the suffix, the AR twin did not
    assert v[6] == "inconclusive"  # sudoku won, arithmetic lost
    assert v[7] == "inconclusive"  # 5 % vs 4 %
    assert v[8] == v[9] == "not measured"
    v = {r["claim"]: r["verdict"] for r in claims.verdicts(_measurements(diff_tok_s=900, hall=(0.39, 0.4)))}
    assert v[1] == "confirmed" and v[2] == "inconclusive"
    assert {r["claim"]: r["verdict"] for r in claims.verdicts(_measurements(hall=(0.5, 0.2)))}[2] == "refuted"
    # fewer hallucinations bought by abstaining on known people: refuted when the drop is significant
    rows = claims.verdicts(_measurements(known=(20, 60)))
    two = next(r for r in rows if r["claim"] == 2)
    assert two["verdict"] == "refuted" and "abstains rather than knows" in two["why"]
    assert "right on known people 20/100" in two["measured"] and "McNemar exact" in two["measured"]
    assert next(r for r in claims.verdicts(_measurements(known=(48, 50))) if r["claim"] == 2)["verdict"] == (
        "inconclusive"
    )  # fewer right on known people, not significantly
    assert next(r for r in claims.verdicts(_measurements(hall=(0.3, 0.4))) if r["claim"] == 2)["verdict"] == (
        "partly confirmed"
    )  # 25 % fewer (paired p < 0.05), accuracy on known people held


def _control(d: int, a: int, n: int = 20, free=(0, 0)) -> dict:
    row = lambda k: {"n": n, "valid": [True] * k + [False] * (n - k), "nfe_mean": 15.0}  # noqa: E731
    return {"constrained": {"diffusion": row(d), "ar": row(a)}, "free": {"diffusion": row(free[0]), "ar": row(free[1])}}


def _student(tok_s: float, ar_tok_s: float = 300.0, teacher: str | None = "builtin-ar", method="block") -> dict:
    rows = [{"batch": 1, "method": "ar", "tok_s": ar_tok_s, "tpf": 1.0, "task_score": 0.05},
            {"batch": 1, "method": method, "tok_s": tok_s, "tpf": 1.5, "task_score": 0.05}]  # fmt: skip
    return {"bench": {"rows": rows, "machine": {"date": "2026-12-02", "cpu": "cpu"}}, "teacher": teacher}


def test_claim_1_states_the_distilled_students_condition():
    one = lambda d: next(r for r in claims.verdicts({**_measurements(), "distilled": d}) if r["claim"] == 1)  # noqa: E731
    slow = one(_student(240.0))  # the pre-registered block model is slower (100 vs 300), so is the student
    assert slow["verdict"] == "refuted" and "0.80×" in slow["measured"] and "TPF 1.50" in slow["measured"]
    assert "learned from the greedy outputs of the AR model it is compared with" in slow["measured"]
    fast = one(_student(450.0))  # only the student is ahead: the claim holds under its condition
    assert fast["verdict"] == "partly confirmed" and "1.50×" in fast["measured"]
    assert "only the distilled student is faster" in fast["why"]
    assert "learned from smollm2's outputs" in one(_student(240.0, teacher="smollm2"))["measured"]
    assert "its teacher is not recorded" in one(_student(240.0, teacher=None))["measured"]
    assert one(None)["measured"] == one({})["measured"] and "distilled" not in one(None)["measured"]
    # a causal student that drafts for itself (draft_verify), trained on the twin's outputs and real text
    drafter = one(_student(450.0, teacher="builtin-ar, corpus", method="draft"))
    assert drafter["verdict"] == "partly confirmed" and "): draft 450 tok/s" in drafter["measured"]
    assert "the AR model it is compared with, mixed with real text" in drafter["measured"]


def test_a_students_teacher_is_read_from_its_run_and_data(tmp_path):
    from dlm.eval.claims.measuring import distilled_teacher

    data, run = tmp_path / "data", tmp_path / "run"
    (run / "final").mkdir(parents=True)
    assert distilled_teacher(run / "final") is None  # no run_config.json beside final/
    (run / "run_config.json").write_text(json.dumps({"data": {"train": [str(data / "part-*.jsonl")]}}))
    assert distilled_teacher(run / "final") is None  # the data has no manifest (not `dlm distill data`'s)
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"teacher": "builtin-ar", "complete": True}))
    assert distilled_teacher(run / "final") == "builtin-ar"
    train = [str(data / "p*"), str(tmp_path / "r" / "p*")]
    (run / "run_config.json").write_text(json.dumps({"data": {"train": train}}))
    (tmp_path / "r").mkdir()
    real = {"teacher": "builtin-ar", "settings": {"corpus_continuations": True}}  # real text, the teacher's tokenizer
    (tmp_path / "r" / "manifest.json").write_text(json.dumps(real))
    assert distilled_teacher(run / "final") == "builtin-ar, corpus"
    # a shipped model folder (scripts/ship_builtin.py) keeps its run's config in training_summary.json
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    assert distilled_teacher(shipped) is None
    (shipped / "training_summary.json").write_text(json.dumps({"run_config": {"data": {"train": [str(data / "p*")]}}}))
    assert distilled_teacher(shipped) == "builtin-ar"


def test_claim_5_compares_both_twins_under_the_same_constraint_engine():
    verdict = lambda c: next(r for r in claims.verdicts({**_measurements(), "control": c}) if r["claim"] == 5)  # noqa: E731
    five = verdict(_control(20, 20))
    assert five["verdict"] == "refuted" and "20/20 vs 20/20" in five["measured"] and "p = 1" in five["measured"]
    assert verdict(_control(20, 2))["verdict"] == "confirmed"  # 10x, McNemar p = 2 * 0.5^18
    assert verdict(_control(6, 2))["verdict"] == "inconclusive"  # 3x, McNemar p = 0.125
    assert verdict(_control(12, 10))["verdict"] == "refuted"  # 2x is out of reach


def test_the_preregistered_setting_decides_not_the_best(tmp_path):
    m = _measurements()
    sud = m["tasks"]["sudoku"]
    sud["diffusion"] = [{"accuracy": 0.9, "n": 200, "nfe_mean": 90.0}, {**sud["diffusion"][0], "accuracy": 0.2,
                                                                         "preregistered": True}]  # fmt: skip
    six = next(r for r in claims.verdicts(m) if r["claim"] == 6)
    assert "sudoku 40/200 (20%" in six["measured"]  # the pre-registered row, not the best (90 %)
    text = claims.write_report(m, tmp_path).read_text()
    assert "| sudoku | diffusion ≈ | 90.0 | 90.0% |" in text and "| sudoku | diffusion ✔ | 32.0 | 20.0% |" in text


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


def test_a_retired_twin_is_named_not_called_untrained():
    """Claim 6 without the Sudoku pair because its AR twin's weights were retired: the row says so (and how to get
    them back) instead of "not trained", and the other tasks still decide the verdict."""
    m = _measurements()
    m["tasks"]["sudoku"] = {"missing": ["runs/tasks/sudoku-diffusion/final", "runs/tasks/sudoku-ar/final"],
                            "retired": ["builtin-sudoku-ar"]}  # fmt: skip
    row = {r["claim"]: r for r in claims.verdicts(m)}[6]
    assert "sudoku: not measured (builtin-sudoku-ar retired; docs/models.md says how to restore it)" in row["measured"]
    assert "not trained" not in row["measured"] and row["verdict"] == "refuted"  # arithmetic lost, nothing won
    m["tasks"]["sudoku"]["retired"] = []
    assert "sudoku: not trained" in {r["claim"]: r for r in claims.verdicts(m)}[6]["measured"]


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
    assert "| sudoku | diffusion ✔ ≈ | 32.0 | 0.0% | 0%–2% | cell_accuracy 15.0% | 200 |" in text
    assert "Not met: the diffusion model solves 0% of 200 test items (blank-cell accuracy 15.0%)" in text
    assert "1.500; still falling at the end" in text and "0.200; flattening at the end" in text
    assert "4.8 epochs of 20,000 training items" in text and "62× our number of epochs" in text
    m["tasks"]["sudoku"]["diffusion"][0]["accuracy"] = 0.97
    assert "Met: the diffusion model solves 97% of the test sudoku" in claims.write_report(m, tmp_path).read_text()


def test_report_explains_a_missed_countdown_target_from_its_diagnostics(tmp_path):
    m = _measurements()  # countdown 50 % < 85 %
    cd = m["tasks"]["countdown"]
    cd["diffusion"][0].update(step_arithmetic=0.04, step_operands=0.28)
    cd["ar"][0].update(step_arithmetic=0.76, step_operands=0.998)
    cd["probe"] = {"visible": 100, "masked": 3, "n": 100}
    text = claims.write_report(m, tmp_path).read_text()
    assert "## Countdown: the ≥ 85 % target" in text
    assert "Not met: the diffusion model solves 50% of 200 test items (exact arithmetic in 4.0% of steps)" in text
    assert "Steps with exact arithmetic: diffusion 4.0%, AR twin 76.0%" in text and "28.0% vs 99.8%" in text
    assert "right 100/100 when the rest" in text and "3/100 when everything after it" in text
    assert "learned to copy results forward" in text
    cd["probe"] = {"visible": 90, "masked": 80, "n": 100}
    assert "The model computes results" in claims.write_report(m, tmp_path).read_text()


def test_cached_evaluations_are_keyed_on_weights_instances_and_settings(tmp_path, monkeypatch):
    from dlm import tasks
    from dlm.eval.claims import measuring

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights-1")
    task = tasks.get_task("arithmetic")
    exs = task.examples("test", 3)
    calls = []

    def fake_evaluate(lm, task, exs, **settings):
        calls.append(settings)
        return {"task": task.name, "n": len(exs), "accuracy": 0.5, "examples": []}

    monkeypatch.setattr(tasks, "evaluate", fake_evaluate)
    cache = tmp_path / "eval" / "x.json"
    first = measuring._cached_eval(folder, None, task, exs, cache, {"steps": 8})
    assert len(calls) == 1 and first["cache_key"]["settings"] == {"steps": 8}
    measuring._cached_eval(folder, None, task, exs, cache, {"steps": 8})
    assert len(calls) == 1  # same weights, instances and settings: reused
    measuring._cached_eval(folder, None, task, exs, cache, {"steps": 4})
    assert len(calls) == 2  # a setting changed
    measuring._cached_eval(folder, None, task, exs, cache, {"steps": 4})
    (folder / "model.safetensors").write_bytes(b"weights-2")  # retrained: same count of examples, new weights
    measuring._cached_eval(folder, None, task, exs, cache, {"steps": 4})
    assert len(calls) == 3
    measuring._cached_eval(folder, None, task, task.examples("test", 3, start=500), cache, {"steps": 4})
    assert len(calls) == 4  # other instances, same n


def test_claim_8_reads_the_int8_diffusion_row_against_gpt2_small():
    row = lambda model, fmt, added, **kw: {"model": model, "format": fmt, "backend": "torch", "file_mb": 12.7,  # noqa: E731
                                           "added_mb": added, "peak_rss_mb": added + 400, "tok_s_b1": 50.0,
                                           "ppl": 30.0, "same_as_fp32": 0.9, **kw}  # fmt: skip
    m = _measurements()
    m["edge"] = {"rows": [row("builtin", "fp32", 90.0), row("builtin", "int8", 60.0), row("builtin-ar", "int8", 55.0),
                          row("gpt2-small", "fp32", 600.0)]}  # fmt: skip
    v = {r["claim"]: r for r in claims.verdicts(m)}[8]
    assert v["verdict"] == "confirmed" and "60 MB peak memory added" in v["measured"] and ": 10%" in v["measured"]
    assert "12 W needs a power counter" in v["why"] and "AR twin int8 55 MB" in v["measured"]
    m["edge"]["rows"][1]["added_mb"] = 200.0  # 33 % of GPT-2 small's
    assert {r["claim"]: r for r in claims.verdicts(m)}[8]["verdict"] == "refuted"
    m["edge"]["rows"][1]["error"] = "child failed"
    assert {r["claim"]: r for r in claims.verdicts(m)}[8]["verdict"] == "not measured"
    del m["edge"]
    assert {r["claim"]: r for r in claims.verdicts(m)}[8]["verdict"] == "not measured"


def test_report_states_rl_vs_sft_from_the_paired_counts(tmp_path):
    """The diffu-GRPO section (benchmarks/grpo_vs_sft.py's JSON): the verdict follows McNemar on the same items."""
    start, rl, sft = [1] * 60 + [0] * 140, [1] * 90 + [0] * 110, [1] * 60 + [0] * 140
    result = {"task": "arithmetic", "options": ["digits=3", "ops=+", "layout=padded"], "rl_seconds": 120.0,
              "rl_settings": {"steps": 20, "prompts_per_step": 4, "group_size": 8, "lr": 5e-5},
              "sft": {"steps": 700, "examples": 22400, "lr": 1e-3, "seconds": 121.0},
              "results": {"start": {"n": 200}}, "items": {"start": start, "rl": rl, "sft": sft},
              "mcnemar_rl_vs_sft": claims.mcnemar(rl, sft), "curve": [{"step": s, "reward": 0.5} for s in range(1, 21)],
              "start_stage": {"sft_steps": 4000, "until_lr": 1e-3, "until": 0.3,
                              "valid_curve": [{"step": 4500, "valid_accuracy": 0.31}]}}  # fmt: skip
    (tmp_path / "grpo").mkdir()
    (tmp_path / "grpo" / "grpo_vs_sft.json").write_text(json.dumps(result))
    text = claims.write_report(_measurements(), tmp_path).read_text()
    assert "## RL after SFT (diffu-GRPO) vs more SFT" in text and "| rl | 90/200 (45.0%) |" in text
    assert "**grpo**: `python benchmarks/grpo_vs_sft.py` (arithmetic, digits=3, ops=+, layout=padded)" in text
    assert "20 GRPO steps × 4 prompts × 8 rollouts at lr 5e-05 (120 s)" in text
    assert "RL after SFT beats more SFT at equal compute (RL alone right on 30 items, SFT alone on 0" in text
    assert "4,000 SFT steps on the config's schedule, then SFT at the constant rate 1e-03" in text
    assert "step 4,500: 31.0%" in text and "steps 11–20: 0.500" in text
    assert "the first 200 test items, greedy" in text
    result["test_items"] = [601, 800]  # a run on items no earlier run scored (--test-from 600)
    (tmp_path / "grpo" / "grpo_vs_sft.json").write_text(json.dumps(result))
    text = claims.write_report(_measurements(), tmp_path).read_text()
    assert "test items 601–800 (never scored before), greedy" in text and "the first 200" not in text
    del result["test_items"]
    result["items"]["rl"], result["mcnemar_rl_vs_sft"] = sft, claims.mcnemar(sft, sft)
    (tmp_path / "grpo" / "grpo_vs_sft.json").write_text(json.dumps(result))
    text = claims.write_report(_measurements(), tmp_path).read_text()
    assert "No difference shown at p < 0.05 (RL alone right on 0 items, SFT alone on 0; exact McNemar p = 1)" in text
    result["items"]["rl"], result["mcnemar_rl_vs_sft"] = [0] * 200, claims.mcnemar([0] * 200, sft)
    (tmp_path / "grpo" / "grpo_vs_sft.json").write_text(json.dumps(result))
    assert "More SFT beats RL after SFT" in claims.write_report(_measurements(), tmp_path).read_text()
    result["confirm"] = {"items": "test items 201-600", "n": 400, "correct": {"rl": [1] * 200 + [0] * 200,
                         "sft": [1] * 170 + [0] * 230}, "mcnemar_rl_vs_sft": claims.mcnemar([1] * 30, [0] * 30)}
    (tmp_path / "grpo-long").mkdir()
    (tmp_path / "grpo-long" / "grpo_vs_sft.json").write_text(json.dumps(result))
    (tmp_path / "grpo-600").mkdir()  # more GRPO steps: after the others, though its name sorts before grpo-long
    longer = {**result, "rl_settings": {**result["rl_settings"], "steps": 600}}
    (tmp_path / "grpo-600" / "grpo_vs_sft.json").write_text(json.dumps(longer))
    text = claims.write_report(_measurements(), tmp_path).read_text()
    assert text.index("**grpo**") < text.index("**grpo-long**") < text.index("**grpo-600**")  # by steps, then name
    assert "600 GRPO steps × 4 prompts" in text
    assert "On these items (the run's settings were chosen after a look at them): More SFT beats RL" in text
    assert "**Decided on fresh items**, a confirmation fixed before it ran (test items 201-600, never scored " \
           "before): RL 200/400 (50.0%), SFT 170/400 (42.5%). RL after SFT beats more SFT at equal compute " \
           "(RL alone right on 30 items, SFT alone on 0" in text
    for run in ("grpo", "grpo-long", "grpo-600"):
        (tmp_path / run / "grpo_vs_sft.json").unlink()
    assert "diffu-GRPO" not in claims.write_report(_measurements(), tmp_path).read_text()


def test_an_interrupted_full_run_keeps_its_finished_parts(tmp_path):
    """`measure()` saves each part as it finishes; a rerun under the same key reuses them (and counts their
    seconds), a rerun under another key (other weights, settings) measures again; done() removes the record."""
    from dlm.eval.claims.measuring import _Parts

    path, key, calls = tmp_path / "measurements.partial.json", {"quick": False, "weights": ["a", "b"]}, []

    def part(value):
        return lambda: calls.append(value) or {"v": value}

    first = _Parts(path, key, lambda m: None)
    assert first.get("bench", "speed", part(1)) == {"v": 1} and calls == [1]
    with pytest.raises(KeyboardInterrupt):  # the session ends during the second part
        first.get("quality", "quality", lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
    saved = json.loads(path.read_text())
    recorded = 12.5  # bookkeeping, not timing: a value written into the saved record, known in advance
    saved["parts"]["bench"]["seconds"] = recorded
    path.write_text(json.dumps(saved))
    logged = []
    again = _Parts(path, key, logged.append)
    assert again.seconds == recorded  # the kept part's recorded value is carried into the total
    assert again.get("bench", "speed", part(2)) == {"v": 1} and calls == [1]
    assert "kept from the interrupted run" in logged[0]
    assert again.get("quality", "quality", part(3)) == {"v": 3} and calls == [1, 3]
    other = _Parts(path, {**key, "weights": ["a", "c"]}, lambda m: None)  # a retrained built-in: start over
    assert other.get("bench", "speed", part(4)) == {"v": 4} and calls == [1, 3, 4]
    other.done()
    assert not path.exists()
