"""`dlm eval claims --quick` end to end: real models, real bench, real scorer; writes the report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("matplotlib")
pytest.importorskip("sacrebleu")


def test_quick_claims_report(tmp_path):
    import json as stdlib_json  # held-out-like Python that every machine has: the json package's source

    src = str(Path(stdlib_json.__file__).parent)
    p = subprocess.run(
        [sys.executable, "-m", "dlm.cli", "eval", "claims", "--quick", "--out", str(tmp_path),
         "--tasks-root", str(tmp_path / "no-twins"), "--data", src],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "measurements.json").read_text())
    assert m["quick"] and {r["method"] for r in m["bench"]["rows"]} >= {"reference", "+both", "ar"}
    text = (tmp_path / "claims.md").read_text()
    claims_table, tasks_table = text.split("## The task head-to-head")
    assert "Quick mode" in claims_table and claims_table.count("\n| ") == 10  # header + 9 claims
    assert tasks_table.count("not trained") == 3  # no twins under --tasks-root; Sudoku: the built-in pair, whose AR
    assert "| sudoku | — | — | not measured: builtin-sudoku-ar retired |" in tasks_table  # twin's weights are retired
    assert m["tasks"]["sudoku"]["retired"] == ["builtin-sudoku-ar"]
    assert (tmp_path / "speed_vs_quality.png").is_file()
    assert not (tmp_path / "measurements.partial.json").exists()  # a finished run leaves no partial record
    # --tasks-only: the task twins are measured (cached by weights and settings), the rest is kept. A Sudoku pair
    # under --tasks-root: the shipped diffusion model, and a stand-in for the retired AR twin (the same weights: this
    # checks the measuring path and its cache, not a comparison)
    import shutil

    from dlm.builtin import builtin_path

    root = tmp_path / "twins"
    for obj in ("diffusion", "ar"):
        shutil.copytree(builtin_path("builtin-sudoku"), root / f"sudoku-{obj}" / "final")
    runs = []
    for _ in range(2):
        again = subprocess.run(
            [sys.executable, "-m", "dlm.cli", "eval", "claims", "--quick", "--tasks-only", "--out", str(tmp_path),
             "--tasks-root", str(root), "--data", src],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        runs.append(json.loads((tmp_path / "measurements.json").read_text()))
    m2 = runs[-1]
    assert m2["bench"] == m["bench"] and m2["quality"] == m["quality"] and m2["infill"] == m["infill"]
    assert "| sudoku | diffusion ✔" in (tmp_path / "claims.md").read_text()
    assert m2["tasks"]["sudoku"]["models"]["diffusion"]["parameters"] > 1e6
    keys = [r["tasks"]["sudoku"]["diffusion"][-1]["cache_key"] for r in runs]
    assert keys[0] == keys[1] and keys[0]["settings"]
    assert (root / "eval" / "sudoku-diffusion.json").is_file()  # the second run read it back
    # --distilled-only: claim 1 with a distilled student (here builtin-block in a run folder whose data names the AR
    # twin as its teacher, as `dlm train` on `dlm distill data` leaves it); everything else is kept
    run, teacher_data = tmp_path / "student", tmp_path / "teacher-data"
    shutil.copytree(builtin_path("builtin-block"), run / "final")
    teacher_data.mkdir()
    (teacher_data / "manifest.json").write_text(json.dumps({"teacher": "builtin-ar"}))
    (run / "run_config.json").write_text(json.dumps({"data": {"train": [str(teacher_data / "part-*.jsonl")]},
                                                     "train": {"init_from": "builtin-block"}}))  # fmt: skip
    third = subprocess.run(
        [sys.executable, "-m", "dlm.cli", "eval", "claims", "--quick", "--distilled-only", "--distilled",
         str(run / "final"), "--out", str(tmp_path)], capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert third.returncode == 0, third.stderr
    m3 = json.loads((tmp_path / "measurements.json").read_text())
    assert m3["bench"] == m["bench"] and m3["tasks"] == m2["tasks"] and m3["distilled"]["teacher"] == "builtin-ar"
    assert {r["method"] for r in m3["distilled"]["bench"]["rows"]} == {"ar", "block"}
    text = (tmp_path / "claims.md").read_text()
    assert "distilled student (it learned from the greedy outputs of the AR model it is compared with" in text
    assert "distilled student: 6 layers × 320, block_causal attention" in text
    assert "(fine-tuned from builtin-block)" in text
    lone = subprocess.run([sys.executable, "-m", "dlm.cli", "eval", "claims", "--distilled-only", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert lone.returncode != 0 and "--distilled-only" in lone.stderr + lone.stdout
    none = subprocess.run([sys.executable, "-m", "dlm.cli", "eval", "claims", "--tasks-only", "--out",
                           str(tmp_path / "empty")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert none.returncode != 0 and "--tasks-only" in none.stderr + none.stdout
