"""`dlm bench`: one run that measures, on the same model, prompts and settings, the LLaDA-style reference
sampler against the fast-sampling options and the AR twin.

Methods (the diffusion ones share gen_length, block_length, stopping and dtype):

| method | policy | steps | cache |
|---|---|---|---|
| reference | low_confidence | gen_length (one token per forward) | none |
| +cache | low_confidence | gen_length | --cache (dual) |
| +parallel | threshold (--threshold) | gen_length, an upper bound | none |
| +both | threshold | gen_length, an upper bound | --cache |
| ar | the AR twin (--ar-model), left to right with its KV cache | | |
| block-1 | the block-diffusion model (--block-model): left_to_right in its own blocks | gen_length | block |
| block | the block model: threshold_prefix (--threshold) in its own blocks | gen_length, an upper bound | block |
| draft-1 | the self-drafting causal model (--draft-model, train.objective draft_verify): left to right, KV cache | | |
| draft | the same model, self-speculative (--draft-block): drafts verified by its AR head, KV cache | | |

The block rows use the block model's own block size as block_length and the exact block cache; they commit in
reading order (block-1 one token per forward; block every leading token of the active block whose confidence is
>= --threshold, at least one), the order a model converted from an AR one decodes best in (docs/sampling.md).
Their `agreement` is against block-1 (the same model one token per forward); `draft`'s against draft-1 (1.0: the
drafts only change how many forwards the same greedy text takes).

Per method and (batch size, gen_length): tok/s (generated tokens, up to and including EOS, over the wall time
of the timed runs), NFE (mean forwards per prompt), TPF (tokens per forward), p50 latency of one batch call,
peak RSS (and peak CUDA memory on GPU), `agreement` (exact token agreement of the generated region with the
reference's, same prompts and settings: 1.0 for an exact method) and, when task data is available (the prompts are
then signatures of held-out functions): `parse_rate` (share of the timed completions whose function body parses,
`dlm.eval.code.function_body_parses`), `rep4` (degeneration: the share of a completion's 4-grams that repeat an
earlier one in it, averaged over completions) and `task_score` (one-line infilling exact match, `dlm.eval.code`).

The default run (batch 1 and 8, gen 128, 8 prompts, one timed pass after a one-block warm-up, 20 infilling tasks,
every method) is sized to finish within about five minutes on a 2-core CPU with the built-in models; the issue
targets' setting, `--gen-length 256 --runs 3`, takes ~20 minutes there (the uncached full-attention methods).
`--plot PATH` draws tok/s against parse rate for every method and batch size, with each batch size's frontier
(the methods no other method beats on both), as a PNG (matplotlib, the `eval` extra).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from ..errors import DLMError, InputError
from ..sampling import GenerationConfig, generate
from ..sampling.autoregressive import generate_autoregressive
from .quality import agreement, completion_quality, frontier, plot_frontier, repeated_ngrams  # noqa: F401
from .system import machine, peak_memory

METHODS = ("reference", "+cache", "+parallel", "+both", "ar", "block-1", "block", "draft-1", "draft")
BLOCK_METHODS = ("block-1", "block")
DRAFT_METHODS = ("draft-1", "draft")
CAUSAL_METHODS = ("ar", *DRAFT_METHODS)  # decoded left to right by a causal network (prefix-only infilling)
COLUMNS = (
    "batch",
    "gen_length",
    "method",
    "tok_s",
    "nfe",
    "tpf",
    "p50_s",
    "peak_rss_mb",
    "agreement",
    "parse_rate",
    "rep4",
    "task_score",
    "x_reference",
)
DEFAULT_TASK_DATA = "data/python/test.jsonl"
FALLBACK_PROMPTS = [
    "def read_config(path):\n",
    "import os\nimport sys\n\n",
    "class Stack:\n    def __init__(self):\n",
    "def fibonacci(n):\n",
    "for i in range(10):\n",
    "def parse_args(argv=None):\n",
    "with open(filename) as f:\n",
    "def merge(a, b):\n",
]


def method_config(method: str, G: int, bl: int, a, block_size: int = 0) -> GenerationConfig | None:
    """The generation settings of a method; `block_size`: the block model's (block methods)."""
    if method in CAUSAL_METHODS:
        k = block_size if method == "draft" else 0
        return GenerationConfig(gen_length=G, steps=G, stop_at_eos=a.stop_at_eos, dtype=a.dtype, draft_block=k)
    parallel = method in ("+parallel", "+both", "block")
    cache = a.cache if method in ("+cache", "+both") else "none"
    policy = "threshold" if parallel else "low_confidence"
    if method in BLOCK_METHODS:
        bl, cache = block_size or bl, "block"
        policy = "threshold_prefix" if parallel else "left_to_right"
    return GenerationConfig(
        gen_length=G,
        steps=G,
        block_length=bl,
        policy=policy,
        threshold=a.threshold,
        cache=cache,
        cache_refresh=a.cache_refresh,
        stop_at_eos=a.stop_at_eos,
        dtype=a.dtype,
        compile=a.compile,
    )


def load_prompts(a, lm) -> tuple[list[list[int]], list[str], list, bool]:
    """(prompt ids, prompt texts, infilling tasks, whether the prompts are signatures): from the task data
    (signatures of held-out functions), or a fixed list of Python openings without data."""
    tasks, texts = [], []
    path = a.task_data or (DEFAULT_TASK_DATA if Path(DEFAULT_TASK_DATA).is_file() else None)
    if path:
        from ..eval import code
        from ..training.data import expand_sources, iter_documents

        docs = [d for _, d in iter_documents(expand_sources([path], "--task-data")) if isinstance(d, str)]
        functions = code.extract_functions(docs)
        if not functions:
            raise InputError("--task-data", f"no Python functions of 3-40 lines in {path}")
        texts = code.completion_tasks(functions, a.prompts, a.seed)
        fits = code.fit_to_model(lm, functions, task="infill")
        tasks = code.infill_tasks(fits, a.tasks, a.seed, "line") if a.tasks else []
    signatures = bool(texts)
    if not texts:
        texts = FALLBACK_PROMPTS[: a.prompts]
    # fed without their trailing whitespace (token healing, as `dlm eval code` feeds them): "):\n" ends on a bare
    # newline token, after which a model that writes "\n    " as one token starts a new top-level line
    from ..eval.code import heal_prompt

    ids = [lm.tokenizer.encode(heal_prompt(t)[0])[-a.prompt_tokens :] for t in texts]
    n = len(ids)
    ids = [ids[i % n] for i in range(a.prompts)]  # fewer distinct prompts than asked: repeat them
    texts = [texts[i % n] for i in range(a.prompts)]
    return ids, texts, tasks, signatures


def _count_tokens(seqs: list[list[int]], G: int) -> int:
    """Generated tokens per row, up to and including the EOS that ended it."""
    return sum(G if len(s) >= G else len(s) + 1 for s in seqs)


def _generated(out, prompts, G) -> list[list[int]]:
    return [c[len(p) : len(p) + G] for c, p in zip(out.canvases, prompts)]


def measure(fn, model, prompts, cfg, batch: int, runs: int, device) -> dict:
    """Warm up once, then `runs` passes over all prompts in batches of `batch`."""
    chunks = [prompts[i : i + batch] for i in range(0, len(prompts), batch)]
    # warm-up (and compile, if asked) on one block: allocations and kernels are the same, at a fraction of the cost
    fn(model, chunks[0], dataclasses.replace(cfg, gen_length=cfg.block_size, steps=cfg.steps_per_block))
    lat, tokens, nfe, gens, res = [], 0, [], None, {}
    with peak_memory(res, device):
        t0 = time.perf_counter()
        for _ in range(runs):
            gens = []
            for c in chunks:
                t = time.perf_counter()
                out = fn(model, c, cfg)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                lat.append(time.perf_counter() - t)
                tokens += _count_tokens(out.sequences, cfg.gen_length)
                nfe += out.nfe
                gens += _generated(out, c, cfg.gen_length)
        wall = time.perf_counter() - t0
    n_nfe = sum(nfe)
    res.update(
        tok_s=tokens / wall,
        nfe=n_nfe / len(nfe),
        tpf=tokens / max(n_nfe, 1),
        p50_s=statistics.median(lat),
        gens=gens,
    )
    return res


def task_score(lm, tasks, method: str, a) -> float | None:
    if not tasks:
        return None
    from ..eval import code

    if method in CAUSAL_METHODS:  # draft writes draft-1's text (the AR head's), so the same score
        return code.evaluate_infill(lm, tasks, seed=a.seed)["exact_match"]
    cfg = method_config(method, 1, 1, a, 1)
    kw = dict(policy=cfg.policy, threshold=cfg.threshold, cache=cfg.cache, cache_refresh=cfg.cache_refresh)
    return code.evaluate_infill(lm, tasks, seed=a.seed, dtype=a.dtype, **kw)["exact_match"]


def _available(model: str) -> bool:
    """A folder that exists or a built-in name that ships."""
    from ..builtin import BUILTIN_MODELS

    return Path(model).exists() or model in BUILTIN_MODELS


def _fit(G: int, bl: int, prompts, limit: int | None) -> int:
    """gen_length that fits the model's context after the longest prompt (a multiple of block_length)."""
    if not limit:
        return G
    room = limit - max(len(p) for p in prompts)
    return min(G, room - room % bl) if room >= bl else 0


def run(a, log=lambda msg: None) -> dict:
    """The whole benchmark; returns {"machine", "settings", "rows", "examples"}."""
    from ..hub import load

    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    methods = [m.strip() for m in a.methods.split(",")] if a.methods else list(METHODS)
    for m in methods:
        if m not in METHODS:
            raise InputError("--methods", f"got {m!r}; allowed: {', '.join(METHODS)}")
    if not a.ar_model or a.ar_model.lower() == "none":
        methods = [m for m in methods if m != "ar"]
    optional = (("block_model", "block-diffusion", BLOCK_METHODS), ("draft_model", "drafting", DRAFT_METHODS))
    for option, kind, group in optional:
        name = getattr(a, option)
        if not name or name.lower() == "none" or not _available(name):
            if name and name.lower() != "none" and any(m in group for m in methods):
                log(f"no {kind} model {name!r} here: {group[-1]} rows skipped")
            methods = [m for m in methods if m not in group]
    for name, v in (("--batch-size", a.batch_size), ("--gen-length", a.gen_length)):
        if any(x < 1 for x in v):
            raise InputError(name, f"got {v}; every value must be >= 1")
    if "reference" not in methods and any(m in ("+cache", "+parallel", "+both") for m in methods):
        methods.insert(0, "reference")  # their agreement needs it
    lm = load(a.model, device=device)
    if lm.is_causal:
        raise InputError("--model", f"{a.model} is a causal model; pass a diffusion model (--ar-model takes the twin)")
    ar = None
    if "ar" in methods:
        ar = load(a.ar_model, device=device)
        if not ar.is_causal:
            raise InputError("--ar-model", f"{a.ar_model} is not a causal (autoregressive) model")
    block = None
    if any(m in BLOCK_METHODS for m in methods):
        block = load(a.block_model, device=device)
        if block.model.config.attention != "block_causal":
            raise InputError("--block-model", f"{a.block_model} is not a block-diffusion (block_causal) model")
    draft = None
    if any(m in DRAFT_METHODS for m in methods):
        draft = load(a.draft_model, device=device)
        if not draft.is_causal:
            raise InputError("--draft-model", f"{a.draft_model} is not a causal model (train.objective draft_verify)")
    draft_block = a.draft_block or (draft.generation_config.draft_block if draft is not None else 0) or 3
    models = {"ar": ar, **{m: block for m in BLOCK_METHODS}, **{m: draft for m in DRAFT_METHODS}}
    block_size = block.model.config.block_size if block is not None else 0
    prompts, texts, tasks, signatures = load_prompts(a, lm)
    log(f"{len(prompts)} prompts, {len(tasks)} infilling tasks, methods {', '.join(methods)}")

    scores = {}
    for m in methods:
        scores[m] = task_score(models.get(m) or lm, tasks, m, a)
    rows, examples = [], {}
    for G0 in a.gen_length:
        limit = min(x.model.config.max_seq_len for x in (lm, ar, block, draft) if x is not None)
        G = _fit(G0, a.block_length, prompts, limit)
        if G < 1:
            raise InputError("--gen-length", f"no room for a block of {a.block_length} after the prompts")
        if G != G0:
            log(f"gen_length {G0} does not fit max_seq_len {limit} after the prompts: using {G}")
        for B in a.batch_size:
            ref, refs = None, {}
            for m in methods:
                cfg = method_config(m, G, a.block_length, a, draft_block if m == "draft" else block_size)
                fn = generate_autoregressive if m in CAUSAL_METHODS else generate  # draft: its config's draft_block
                model = (models.get(m) or lm).model
                log(f"batch {B} gen_length {G}: {m}")
                res = measure(fn, model, prompts, cfg, B, a.runs, device)
                gens = res.pop("gens")
                if m in ("reference", "block-1", "draft-1"):
                    refs[m] = gens
                if m == "reference":
                    ref = res
                same = refs.get({"block-1": "block-1", "block": "block-1", "draft": "draft-1"}.get(m, "reference"))
                row = {
                    "batch": B,
                    "gen_length": G,
                    "method": m,
                    "policy": {"ar": "ar", "draft-1": "ar", "draft": f"draft {draft_block}"}.get(m, cfg.policy),
                    "cache": "kv" if m in CAUSAL_METHODS else cfg.cache,
                    **{k: res[k] for k in ("tok_s", "nfe", "tpf", "p50_s", "peak_rss_mb")},
                    "agreement": None if m in ("ar", "draft-1") or same is None else agreement(gens, same),
                    "task_score": scores[m],
                    "x_reference": None if ref is None else res["tok_s"] / ref["tok_s"],
                }
                if "peak_cuda_mb" in res:
                    row["peak_cuda_mb"] = res["peak_cuda_mb"]
                if signatures:
                    row.update(completion_quality(texts, gens[: len(prompts)], (models.get(m) or lm).tokenizer, G))
                rows.append(row)
                tok = (models.get(m) or lm).tokenizer
                examples.setdefault(m, {"prompt": texts[0], "text": tok.decode(gens[0], skip_special_tokens=True)})
    settings = {
        k: getattr(a, k)
        for k in (
            "model",
            "ar_model",
            "block_model",
            "draft_model",
            "batch_size",
            "gen_length",
            "block_length",
            "threshold",
            "cache",
            "cache_refresh",
            "prompts",
            "prompt_tokens",
            "runs",
            "tasks",
            "dtype",
            "device",
            "compile",
            "stop_at_eos",
            "seed",
        )
    }
    settings["task_data"] = a.task_data or (DEFAULT_TASK_DATA if tasks else None)
    settings["draft_block"] = draft_block if draft is not None else a.draft_block
    return {"machine": machine(), "settings": settings, "rows": rows, "examples": examples}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def format_table(rows: list[dict]) -> str:
    cols = list(COLUMNS)
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(cols, widths)), "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dlm bench",
        description="Sampling speed and quality: reference, +cache, +parallel, +both, and the AR twin.",
    )
    p.add_argument("--model", default="builtin", help="diffusion model folder or built-in name (default builtin)")
    p.add_argument("--ar-model", default="builtin-ar", help="causal twin (default builtin-ar); 'none' to skip")
    p.add_argument(
        "--block-model", default="builtin-block", help="block-diffusion model (default builtin-block); 'none' to skip"
    )
    p.add_argument(
        "--draft-model",
        default="builtin-draft",
        help="causal model trained to draft (draft_verify; default builtin-draft); 'none' to skip",
    )
    p.add_argument(
        "--draft-block", type=int, default=0, help="draft's block (0: the draft model's draft_block, else 3)"
    )
    p.add_argument("--batch-size", type=int, nargs="+", default=[1, 8])
    p.add_argument("--gen-length", type=int, nargs="+", default=[128])
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--threshold", type=float, default=0.9, help="confidence threshold of +parallel / +both / block")
    p.add_argument("--cache", default="dual", choices=["prefix", "dual"], help="cache of +cache / +both")
    p.add_argument("--cache-refresh", type=int, default=0, help="also refresh every N steps (0 = per block)")
    p.add_argument("--prompts", type=int, default=8, help="prompts per run (run in batches of --batch-size)")
    p.add_argument("--prompt-tokens", type=int, default=64, help="keep at most the last N tokens of a prompt")
    p.add_argument("--runs", type=int, default=1, help="timed passes over the prompts after a one-block warm-up call")
    p.add_argument("--tasks", type=int, default=20, help="infilling tasks for task_score (0 = off)")
    p.add_argument("--task-data", default=None, help=f"Python source (jsonl/text); default {DEFAULT_TASK_DATA}")
    p.add_argument("--methods", default=None, help=f"comma list of {','.join(METHODS)} (default all)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--compile", action="store_true", help="torch.compile the diffusion model's forward")
    p.add_argument("--no-stop-at-eos", dest="stop_at_eos", action="store_false", help="always generate all tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test): batch 1 2, gen 16, block 8")
    p.add_argument("--json", action="store_true", help="one JSON object: machine, settings, rows, examples")
    p.add_argument("--plot", default=None, help="write the tok/s-vs-parse-rate frontier here (PNG)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.quick:
        a.batch_size, a.gen_length, a.block_length = [1, 2], [16], 8
        a.prompts, a.runs, a.tasks, a.prompt_tokens = 2, 1, min(a.tasks, 2), 16
    try:
        for name in ("block_length", "prompts", "runs", "prompt_tokens"):
            if getattr(a, name) < 1:
                raise InputError(f"--{name.replace('_', '-')}", f"got {getattr(a, name)}; must be >= 1")
        res = run(a, log=(lambda msg: None) if a.json else (lambda msg: print(f"# {msg}", flush=True)))
    except DLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.plot:
        try:
            plot_frontier(res["rows"], a.plot)
        except DLMError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if a.json:
        print(json.dumps(res))
    else:
        print(f"# {json.dumps(res['machine'])}")
        print(f"# {json.dumps(res['settings'])}")
        print(format_table(res["rows"]))
    return 0
