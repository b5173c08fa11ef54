"""Paired quality test of two models on the same code tasks (issue 15: "completion parse rate and infilling scores
not worse than the AR twin's beyond noise"): `dlm eval code --json --rows` per model and task (same functions,
spans and seed for both), then per metric the two rates, the discordant pairs and an exact two-sided McNemar
test (a binomial test on the discordant pairs; scipy). Degeneration of the completions: `rep4`, the share of a
completion's word 4-grams (whitespace-split, so models with different tokenizers compare) that repeat an earlier
one in it, as the two means and a paired Wilcoxon signed-rank test (scipy's default method; zero differences
dropped). `--a-args` / `--b-args` pass sampling options to one side (e.g. `--a-args="--no-repeat-ngram-size 8"`).

    python benchmarks/paired_quality.py --a builtin-block --b builtin-ar [--data data/python/test.jsonl] [-n 100]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from scipy.stats import wilcoxon

from dlm.eval.claims import stats

ROOT = Path(__file__).resolve().parent.parent
METRICS = {
    "complete": ("parses", "ended"),
    "infill-line": ("ast_valid", "exact_match"),
    "infill-span": ("ast_valid", "exact_match"),
}


def rows(model: str, task: str, a, extra: str = "") -> list[dict]:
    cmd = [a.dlm, "eval", "code", "--model", model, "--data", a.data, "--task", task, "-n", str(a.n)]
    cmd += ["--json", "--rows"] + (["--gen-length", "64"] if task == "complete" else []) + extra.split()
    out = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout
    return json.loads(out)["rows"]


def mcnemar(x: list[bool], y: list[bool]) -> dict:
    m = stats.mcnemar(x, y)  # exact: a binomial test on the discordant pairs
    return {"a": sum(x) / len(x), "b": sum(y) / len(y), "a_only": m["only_x"], "b_only": m["only_y"], "p": m["p"]}


def rep4(text: str) -> float:
    words = text.split()
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def paired_rep4(ra: list[dict], rb: list[dict]) -> dict:
    x, y = [rep4(r["completion"]) for r in ra], [rep4(r["completion"]) for r in rb]
    differs = any(u != v for u, v in zip(x, y))
    p = float(wilcoxon(x, y, zero_method="wilcox").pvalue) if differs else 1.0
    return {"a": sum(x) / len(x), "b": sum(y) / len(y), "a_only": sum(u < v for u, v in zip(x, y)),
            "b_only": sum(v < u for u, v in zip(x, y)), "p": p}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", default="builtin-block")
    p.add_argument("--b", default="builtin-ar")
    p.add_argument("--data", default="data/python/test.jsonl")
    p.add_argument("-n", type=int, default=100)
    p.add_argument("--tasks", nargs="+", default=list(METRICS))
    p.add_argument("--dlm", default=str(Path(sys.executable).with_name("dlm")))
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--a-args", default="", help="extra `dlm eval code` options for --a (sampling settings)")
    p.add_argument("--b-args", default="", help="extra `dlm eval code` options for --b")
    a = p.parse_args(argv)
    results = []
    print(f"| task | metric | {a.a} | {a.b} | only {a.a} | only {a.b} | McNemar p (exact) |")
    print("|---|---|---|---|---|---|---|")
    for task in a.tasks:
        ra, rb = rows(a.a, task, a, a.a_args), rows(a.b, task, a, a.b_args)
        keys = [r.get("prompt", r.get("prefix")) for r in ra]
        if keys != [r.get("prompt", r.get("prefix")) for r in rb]:
            raise SystemExit(f"{task}: the two models got different tasks")
        for metric in METRICS[task]:
            m = mcnemar([bool(r[metric]) for r in ra], [bool(r[metric]) for r in rb])
            results.append({"task": task, "metric": metric, "n": len(ra), **m})
            print(f"| {task} | {metric} | {m['a']:.0%} | {m['b']:.0%} | {m['a_only']} | {m['b_only']} | {m['p']:.3g} |")
        if task == "complete":  # lower is better: "only" counts the completions that repeat themselves less
            m = paired_rep4(ra, rb)
            results.append({"task": task, "metric": "rep4", "n": len(ra), **m})
            print(f"| {task} | rep4 (lower: less repetition) | {m['a']:.3f} | {m['b']:.3f} | {m['a_only']} | "
                  f"{m['b_only']} | {m['p']:.3g} (Wilcoxon) |")  # fmt: skip
    if a.out:
        Path(a.out).write_text(json.dumps({"a": a.a, "b": a.b, "data": a.data, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
