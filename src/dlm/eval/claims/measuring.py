"""Measuring the claims: speed (dlm bench), quality/diversity/energy, infilling, the task twins, and their
training curves; `measure()` writes them all to measurements.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

TASKS = ("sudoku", "countdown", "arithmetic", "facts")


def _bench(quick: bool) -> dict:
    from ...bench import parser, run

    args = ["--batch-size", "1", "--gen-length", "256", "--runs", "3", "--tasks", "20"]
    if quick:
        args = ["--quick"]
    a = parser().parse_args(args)
    if a.quick:
        a.batch_size, a.gen_length, a.block_length = [1], [16], 8
        a.prompts, a.runs, a.tasks, a.prompt_tokens = 2, 1, 2, 16
    return run(a)


def _quality(diff, ar, scorer, prompts, temperatures, gen_length) -> list[dict]:
    from ..quality import sample_and_measure

    rows = []
    for name, lm in (("diffusion", diff), ("ar", ar)):
        for t in temperatures:
            r = sample_and_measure(lm, prompts, scorer, gen_length=gen_length, steps=gen_length, temperature=t, seed=0)
            r.pop("samples", None)
            rows.append({"model": name, "temperature": t, **r})
    return rows


def _infill(diff, ar, tasks) -> dict:
    from .. import code

    out = {}
    for name, lm in (("diffusion", diff), ("ar", ar)):
        r = code.evaluate_infill(lm, tasks, seed=0)
        out[name] = {k: r[k] for k in ("n", "exact_match", "ast_valid", "nfe_mean", "seconds")}
    return out


TASK_N = {"sudoku": 100}  # a diffusion Sudoku answer costs 96 forwards of a 192-token canvas


def _cached_eval(lm, task, exs, cache: Path, steps: int | None) -> dict:
    """evaluate(), or the result saved at `cache` by an earlier run on the same examples (the head-to-head
    script writes runs/tasks/eval/<task>-<objective>.json with the default settings)."""
    from ...tasks import evaluate

    if cache.is_file():
        try:
            r = json.loads(cache.read_text())
            if r.get("n") == len(exs) and (steps is None or r.get("nfe_mean", 0) <= steps + 1e-9):
                return _strip(r)
        except (OSError, ValueError):
            pass
    r = evaluate(lm, task, exs, **({"steps": steps} if steps else {}))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(r))
    tmp.replace(cache)
    return _strip(r)


def _tasks(root: Path, n: int, log) -> dict:
    import dlm

    from ...tasks import answer_length, get_task

    out = {}
    for name in TASKS:
        runs = {obj: root / f"{name}-{obj}" / "final" for obj in ("diffusion", "ar")}
        if not all((p / "model.safetensors").is_file() for p in runs.values()):
            out[name] = {"missing": [str(p) for p in runs.values() if not (p / "model.safetensors").is_file()]}
            continue
        task = get_task(name)
        exs = task.examples("test", min(n, TASK_N.get(name, n)))
        res = {}
        for obj, path in runs.items():
            lm = dlm.load(str(path))
            log(f"task {name}: {obj}")
            default = root / "eval" / f"{name}-{obj}.json"
            if obj == "ar":
                res[obj] = [_cached_eval(lm, task, exs, default, None)]
            else:  # accuracy against NFE: fewer steps than tokens = several tokens per forward
                block = lm.generation_config.block_length or 32
                g = answer_length(lm, exs, block)
                full = _cached_eval(lm, task, exs, default, g)
                fewer = [max(1, g // 4), max(1, g // 2)] if full["accuracy"] > 0 else []  # nothing to trade at 0 %
                res[obj] = [
                    _cached_eval(lm, task, exs, root / "eval" / f"{name}-{obj}-steps{s}.json", s)
                    for s in sorted(set(fewer) - {g})
                ] + [full]
        out[name] = res
    return out


def _training_curves(root: Path, windows: int = 6) -> dict:
    """Per task twin: steps, tokens seen and the mean training loss in `windows` equal spans of the run
    (from its metrics.jsonl), to show whether a model had stopped learning."""
    out = {}
    for name in TASKS:
        for obj in ("diffusion", "ar"):
            path = root / f"{name}-{obj}" / "metrics.jsonl"
            if not path.is_file():
                continue
            recs = []
            for line in path.read_text().splitlines():
                try:
                    recs.append(json.loads(line))
                except ValueError:
                    continue
            if not recs:
                continue
            last = recs[-1]["step"]
            span = max(1, last // windows)
            curve = []
            for w in range(windows):
                losses = [r["loss"] for r in recs if w * span < r["step"] <= (w + 1) * span]
                if losses:
                    curve.append({"until_step": (w + 1) * span, "loss": sum(losses) / len(losses)})
            run = {"steps": last, "tokens": recs[-1].get("tokens"), "loss_curve": curve}
            try:
                rc = json.loads((root / f"{name}-{obj}" / "run_config.json").read_text())
                meta = json.loads((root / f"{name}-{obj}" / "data" / "meta.json").read_text())
                run["examples_seen"] = last * rc["train"]["batch_size"] * rc["train"]["grad_accum"]
                run["train_examples"] = meta["train"]["docs"]
            except (OSError, ValueError, KeyError):
                pass
            out[f"{name}-{obj}"] = run
    return out


def _strip(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "examples"}


def measure(out_dir: str | Path = "reports", *, quick: bool = False, tasks_root: str | Path = "runs/tasks",
            scorer: str = "smollm2", data: str = "data/python/test.jsonl", log=lambda m: None) -> dict:  # fmt: skip
    """Run every measurement; returns (and writes to out_dir/measurements.json) the results."""
    import dlm

    from .. import code
    from ..quality import load_scorer
    from ...training.data import expand_sources, iter_documents

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sources = expand_sources([data], "--data")  # names the path when nothing matches
    diff, ar = dlm.load("builtin"), dlm.load("builtin-ar")
    texts = [d for _, d in iter_documents(sources) if isinstance(d, str)]
    functions = code.extract_functions(texts)
    n = 8 if quick else 100
    m: dict = {"quick": quick, "machine": None, "conditions": {}}
    log("speed: dlm bench")
    m["bench"] = _bench(quick)
    m["machine"] = m["bench"]["machine"]
    log("quality, diversity, energy")
    prompts = code.completion_tasks(functions, n, 0)
    temps = [1.0] if quick else [0.5, 0.8, 1.0]
    m["quality"] = _quality(diff, ar, load_scorer(scorer), prompts, temps, 16 if quick else 64)
    log("infilling")
    m["infill"] = _infill(diff, ar, code.infill_tasks(code.fit_to_model(diff, functions), n, 0, "line"))
    log("tasks")
    m["tasks"] = _tasks(Path(tasks_root), 10 if quick else 200, log)
    m["training"] = _training_curves(Path(tasks_root))
    m["conditions"] = {
        "builtin": "9.88M parameters, 32.8M tokens of Python stdlib + docs, 2-core CPU (docs/models.md)",
        "task_twins": "6 layers × 256, SFT from scratch per task, same budget per twin (examples/configs/tasks/)",
        "scorer": scorer,
    }
    m["seconds"] = time.perf_counter() - t0
    (out / "measurements.json").write_text(json.dumps(m, indent=1))
    return m
