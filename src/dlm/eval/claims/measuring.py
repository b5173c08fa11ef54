"""Measuring the claims: speed (dlm bench), quality/diversity/energy, infilling, the task twins, and their
training curves, the multimodal twins (multimodal.py); `measure()` writes them all to measurements.json."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from . import multimodal

TASKS = ("sudoku", "countdown", "arithmetic", "facts")


def _bench(quick: bool, extra: tuple[str, ...] = ()) -> dict:
    from ...bench import parser, run

    args = ["--batch-size", "1", "--gen-length", "256", "--runs", "3", "--tasks", "20"]
    if quick:
        args = ["--quick"]
    a = parser().parse_args([*args, *extra])
    if a.quick:
        a.batch_size, a.gen_length, a.block_length = [1], [16], 8
        a.prompts, a.runs, a.tasks, a.prompt_tokens = 2, 1, 2, 16
    return run(a)


def _run_config(folder: Path) -> dict:
    """The settings of the `dlm train` run that made the model in `folder`: RUN/run_config.json beside RUN/final, or
    for a shipped model (`scripts/ship_builtin.py`) the run_config its training_summary.json keeps."""
    cfg = Path(folder).parent / "run_config.json"
    if cfg.is_file():
        return json.loads(cfg.read_text())
    summary = Path(folder) / "training_summary.json"
    return json.loads(summary.read_text()).get("run_config", {}) if summary.is_file() else {}


def distilled_teacher(folder: Path) -> str | None:
    """The teacher a distilled student learned from, as its files record it: the training run's run_config.json
    beside its final/ folder names the data, and `dlm distill data` wrote the teacher into that data's
    manifest.json ("corpus" for its real-text shards, `--corpus-continuations`). None when any link is missing
    (then the report says the teacher is unknown)."""
    teachers = []
    for pattern in _run_config(folder).get("data", {}).get("train", []):
        manifest = Path(pattern).parent / "manifest.json"
        if manifest.is_file():
            made = json.loads(manifest.read_text())
            teachers.append("corpus" if made.get("settings", {}).get("corpus_continuations") else made.get("teacher"))
    teachers = sorted({t for t in teachers if t})
    return ", ".join(teachers) or None


def _distilled(folder: Path, quick: bool) -> dict:
    """Claim 1 with a distilled student (issue 16): the AR twin and the student in one `dlm bench` process, with the
    bench's claim-1 settings (a block student: its `block` method; a causal one trained to draft, `draft_verify`:
    its `draft` method, self-speculative); plus the student's size, training and teacher."""
    import dlm

    lm = dlm.load(str(folder))
    method = ("--methods", "ar,draft", "--draft-model") if lm.is_causal else ("--methods", "ar,block", "--block-model")
    bench = _bench(quick, (*method, str(folder)))
    model = _describe(lm, folder)
    start = _run_config(folder).get("train", {}).get("init_from")
    if start:
        model["init_from"] = str(start)
    return {"bench": bench, "teacher": distilled_teacher(folder), "model": model}


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


def _functions(data: str) -> list[str]:
    from .. import code
    from ...training.data import expand_sources, iter_documents

    sources = expand_sources([data], "--data")  # names the path when nothing matches
    return code.extract_functions([d for _, d in iter_documents(sources) if isinstance(d, str)])


EDGE_ROWS = [("fp32", "torch"), ("int8", "torch"), ("int4", "torch"), ("fp32", "onnxruntime"), ("int8", "onnxruntime")]


def _edge(work: Path, data: str, quick: bool) -> dict:
    """Claim 8: `dlm.bench.edge` rows (each in a fresh process) for both built-ins and GPT-2 small; the quantised
    and exported folders are written under `work` (beside the task runs, outside the report)."""
    from ...bench.edge import measure as measure_edge

    rows = [("int8", "torch")] if quick else EDGE_ROWS
    return {"rows": measure_edge(["builtin", "builtin-ar"], work, rows, data=data, n=4 if quick else 24)}


def _control(diff, ar, functions, quick: bool) -> dict:
    """Claim 5: JSON for a schema, free and under the same constraint engine, same items for both twins."""
    from .. import code
    from ..structured import control_items, evaluate_control

    items = control_items(code.completion_tasks(functions, 8 if quick else 100, 1))
    out = {}
    for mode in ("constrained", "free"):
        out[mode] = {name: evaluate_control(lm, items, constrained=mode == "constrained")
                     for name, lm in (("diffusion", diff), ("ar", ar))}  # fmt: skip
    return out


TASK_N = {"sudoku": 100}  # a diffusion Sudoku answer costs 82 forwards of a 170-token canvas
# Task twins that ship as built-in models: used when tasks_root holds no run of that task.
BUILTIN_TWINS = {"sudoku": {"diffusion": "builtin-sudoku", "ar": "builtin-sudoku-ar"}}


def weights_digest(folder: Path) -> str:
    """sha256 of a model folder's weight files (model*.safetensors, adapter_model.safetensors), in name order."""
    h = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {folder}")
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def cache_key(folder: Path, task, exs, settings: dict) -> dict:
    """What an evaluation's result depends on: the checkpoint's content, the task and its instances, the
    generation settings (so a retrained model or a changed setting is measured again)."""
    prompts = hashlib.sha256("\n".join(e.prompt for e in exs).encode()).hexdigest()
    return {"weights": weights_digest(folder), "task": task.name, "config": task.config_id(), "n": len(exs),
            "examples": prompts, "settings": settings}  # fmt: skip


def _cached_eval(folder: Path, lm, task, exs, cache: Path, settings: dict) -> dict:
    """evaluate(), or the result an earlier run saved at `cache` under the same cache_key."""
    from ...tasks import evaluate

    key = cache_key(folder, task, exs, settings)
    if cache.is_file():
        try:
            r = json.loads(cache.read_text())
            if r.get("cache_key") == key:
                return _strip(r)
        except (OSError, ValueError):
            pass
    r = {**evaluate(lm, task, exs, **settings), "cache_key": key}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(r))
    tmp.replace(cache)
    return _strip(r)


def twin_folders(root: Path, name: str) -> dict[str, Path] | None:
    """The diffusion model and its AR twin for task `name`: root/<name>-<objective>/final when both were trained
    there, else the built-in pair when both ship (a retired twin counts once its weights are restored), else None."""
    from ...builtin import BUILTIN_MODELS, builtin_path, is_retired

    runs = {obj: root / f"{name}-{obj}" / "final" for obj in ("diffusion", "ar")}
    if all((p / "config.json").is_file() for p in runs.values()):
        return runs
    pair = BUILTIN_TWINS.get(name)
    if pair and all(b in BUILTIN_MODELS and not is_retired(b) for b in pair.values()):
        return {obj: builtin_path(b) for obj, b in pair.items()}
    return None


def _describe(lm, folder: Path) -> dict:
    """A model's size and training as its own files record them (a shipped model's training_summary.json, or the
    run's metrics.jsonl beside its final/ folder)."""
    c = lm.model.config
    network = f"{c.n_layers} layers × {c.d_model}, {c.attention} attention, vocabulary {c.vocab_size}"
    out = {"folder": str(folder), "parameters": sum(p.numel() for p in lm.model.parameters()), "network": network}
    run = run_record(folder)
    if run:
        out.update({k: run[k] for k in ("steps", "tokens", "step_seconds") if run.get(k) is not None})
    return out


def read_metrics(path: Path) -> list[dict]:
    """A run's metrics.jsonl records, one per step (the last record of a step wins), in step order."""
    by_step = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]


def loss_curve(recs: list[dict], windows: int = 6) -> list[dict]:
    """The mean training loss in `windows` equal spans of a run's metrics records."""
    last = recs[-1]["step"]
    span = max(1, last // windows)
    curve = []
    for w in range(windows):
        losses = [r["loss"] for r in recs if w * span < r["step"] <= (w + 1) * span]
        if losses:
            curve.append({"until_step": (w + 1) * span, "loss": sum(losses) / len(losses)})
    return curve


def run_record(folder: Path) -> dict | None:
    """Steps, tokens, loss curve, examples seen and training set size of the run that made the model in
    `folder`: from its run directory (folder = RUN/final) or a shipped model's training_summary.json."""
    summary = folder / "training_summary.json"
    if summary.is_file():
        t = json.loads(summary.read_text())
        keys = ("steps", "tokens", "step_seconds", "loss_curve", "examples_seen", "train_examples")
        return {k: t[k] for k in keys if k in t}
    run_dir = folder.parent
    if not (run_dir / "metrics.jsonl").is_file():
        return None
    recs = read_metrics(run_dir / "metrics.jsonl")
    if not recs:
        return None
    run = {"steps": recs[-1]["step"], "tokens": recs[-1].get("tokens"), "loss_curve": loss_curve(recs)}
    speeds = sorted(r["tok_s"] for r in recs if r.get("tok_s"))
    if speeds and run["tokens"]:  # the run's own median training speed: what a longer budget would cost here
        run["tok_s"] = speeds[len(speeds) // 2]
    try:
        rc = json.loads((run_dir / "run_config.json").read_text())
        meta = json.loads((run_dir / "data" / "meta.json").read_text())
        run["examples_seen"] = run["steps"] * rc["train"]["batch_size"] * rc["train"]["grad_accum"]
        run["train_examples"] = meta["train"]["docs"]
    except (OSError, ValueError, KeyError):
        pass
    return run


def _tasks(root: Path, n: int, log) -> dict:
    import dlm

    from ...builtin import is_retired
    from ...tasks import answer_length, get_task

    out = {}
    for name in TASKS:
        runs = twin_folders(root, name)
        if runs is None:
            out[name] = {"missing": [str(root / f"{name}-{obj}" / "final") for obj in ("diffusion", "ar")],
                         "retired": [b for b in BUILTIN_TWINS.get(name, {}).values() if is_retired(b)]}  # fmt: skip
            continue
        task = get_task(name)
        exs = task.examples("test", min(n, TASK_N.get(name, n)))
        res = {"models": {}}
        for obj, path in runs.items():
            lm = dlm.load(str(path))
            res["models"][obj] = _describe(lm, path)
            log(f"task {name}: {obj}")
            default = root / "eval" / f"{name}-{obj}.json"
            if obj == "ar":
                res[obj] = [_cached_eval(path, lm, task, exs, default, {})]
            else:  # accuracy against NFE; the pre-registered setting is the last row: one token per forward
                block = lm.generation_config.block_length or 32
                g = answer_length(lm, exs, block)
                full = _cached_eval(path, lm, task, exs, default, {"steps": g})
                fewer = [max(1, g // 4), max(1, g // 2)]
                res[obj] = [
                    _cached_eval(path, lm, task, exs, root / "eval" / f"{name}-{obj}-steps{s}.json", {"steps": s})
                    for s in sorted(set(fewer) - {g})
                ] + [{**full, "preregistered": True}]
                if name == "countdown":  # does it compute a step's result or copy it from the next step?
                    from ...tasks.countdown import first_result_probe

                    res["probe"] = first_result_probe(lm, exs[:100])
        out[name] = res
    return out


def _training_curves(root: Path) -> dict:
    """Per task twin (see twin_folders): its run_record, to show whether a model had stopped learning."""
    out = {}
    for name in TASKS:
        for obj, folder in (twin_folders(root, name) or {}).items():
            run = run_record(folder)
            if run and run.get("loss_curve"):
                out[f"{name}-{obj}"] = run
    return out


def _strip(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "examples"}


def measure(out_dir: str | Path = "reports", *, quick: bool = False, tasks_root: str | Path = "runs/tasks",
            scorer: str = "smollm2", data: str = "data/python/test.jsonl", log=lambda m: None,
            earlier: dict | None = None, distilled: str | Path | None = None, redo: str = "tasks") -> dict:  # fmt: skip
    """Run every measurement; returns (and writes to out_dir/measurements.json) the results. With `earlier` (a
    previous measurements.json), only `redo` is measured again and the rest is kept from it: "tasks" (the task
    twins and their training curves) or "distilled" (claim 1 with the distilled block student at `distilled`,
    which a full run measures too when given)."""
    import dlm

    from .. import code
    from ...builtin import resolve_model_path
    from ..quality import load_scorer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if earlier is not None and redo == "distilled":
        m = dict(earlier)
        log(f"claim 1 with the distilled student {distilled} (the rest kept from the earlier measurements)")
        m["distilled"] = _distilled(Path(distilled), quick)
        m["conditions"] = {**m.get("conditions", {}), "distilled student": m["distilled"]["model"]}
        m["seconds"] = earlier.get("seconds", 0.0) + time.perf_counter() - t0
        (out / "measurements.json").write_text(json.dumps(m, indent=1))
        return m
    if earlier is not None:
        m = {k: v for k, v in earlier.items() if k not in ("tasks", "training", "seconds")}
        log("tasks (speed, quality and infilling kept from the earlier measurements)")
        m["tasks"] = _tasks(Path(tasks_root), 10 if quick else 200, log)
        m["training"] = _training_curves(Path(tasks_root))
        if "control" not in m:  # measured since: cheap, and needs only the built-in pair
            log("control")
            m["control"] = _control(dlm.load("builtin"), dlm.load("builtin-ar"), _functions(data), quick)
        if "edge" not in m:
            log("edge")
            m["edge"] = _edge(Path(tasks_root).parent / "edge", data, quick)
        m["multimodal"] = multimodal.measure(Path(tasks_root).parent, out, quick=quick, log=log)
        m["seconds"] = earlier.get("seconds", 0.0) + time.perf_counter() - t0
        (out / "measurements.json").write_text(json.dumps(m, indent=1))
        return m
    diff, ar = dlm.load("builtin"), dlm.load("builtin-ar")
    functions = _functions(data)
    n = 8 if quick else 100
    parts = _Parts(out / "measurements.partial.json", {
        "quick": quick, "scorer": scorer, "data": data, "tasks_root": str(tasks_root),
        "weights": [weights_digest(resolve_model_path(b)) for b in ("builtin", "builtin-ar")],
        "distilled": weights_digest(Path(distilled)) if distilled is not None else None}, log)  # fmt: skip
    m: dict = {"quick": quick, "machine": None, "conditions": {}}
    m["bench"] = parts.get("bench", "speed: dlm bench", lambda: _bench(quick))
    m["machine"] = m["bench"]["machine"]
    if distilled is not None:
        m["distilled"] = parts.get("distilled", "speed: the distilled student", lambda: _distilled(Path(distilled),
                                                                                                 quick))
    prompts = code.completion_tasks(functions, n, 0)
    temps = [1.0] if quick else [0.5, 0.8, 1.0]
    m["quality"] = parts.get("quality", "quality, diversity, energy",
                             lambda: _quality(diff, ar, load_scorer(scorer), prompts, temps, 16 if quick else 64))
    m["infill"] = parts.get("infill", "infilling", lambda: _infill(
        diff, ar, code.infill_tasks(code.fit_to_model(diff, functions), n, 0, "line")))
    m["control"] = parts.get("control", "control", lambda: _control(diff, ar, functions, quick))
    m["edge"] = parts.get("edge", "edge", lambda: _edge(Path(tasks_root).parent / "edge", data, quick))
    log("tasks")  # cached per model, task and settings under tasks_root/eval
    m["tasks"] = _tasks(Path(tasks_root), 10 if quick else 200, log)
    m["training"] = _training_curves(Path(tasks_root))
    m["multimodal"] = parts.get("multimodal", "multimodal",
                                lambda: multimodal.measure(Path(tasks_root).parent, out, quick=quick, log=log))
    m["conditions"] = {
        "builtin": _describe(diff, resolve_model_path("builtin")),
        "builtin-ar": _describe(ar, resolve_model_path("builtin-ar")),
        "scorer": scorer,
    }
    if "distilled" in m:
        m["conditions"]["distilled student"] = m["distilled"]["model"]
    m["seconds"] = time.perf_counter() - t0 + parts.seconds
    (out / "measurements.json").write_text(json.dumps(m, indent=1))
    parts.done()
    return m


class _Parts:
    """A full run's measurements, each kept in `path` as soon as it is done, so an interrupted run (a session that
    ends) picks up where it stopped: a part saved under the same key (quick, scorer, data, task root and the
    built-ins' weights) is reused; any other key starts over. `done()` removes the file."""

    def __init__(self, path: Path, key: dict, log):
        self.path, self.key, self.log = path, key, log
        saved = json.loads(path.read_text()) if path.is_file() else {}
        self.parts = saved.get("parts", {}) if saved.get("key") == key else {}
        self.seconds = float(sum(p["seconds"] for p in self.parts.values()))

    def get(self, name: str, label: str, measure):
        if name in self.parts:
            self.log(f"{label}: kept from the interrupted run ({self.path.name})")
            return self.parts[name]["value"]
        self.log(label)
        t0 = time.perf_counter()
        value = measure()
        self.parts[name] = {"value": value, "seconds": time.perf_counter() - t0}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": self.key, "parts": self.parts}))
        tmp.replace(self.path)
        return value

    def done(self) -> None:
        self.path.unlink(missing_ok=True)
