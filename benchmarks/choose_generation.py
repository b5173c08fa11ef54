"""Choose a model's default sampling settings (generation_config.json) by measurement, on the VALID split.

For each candidate setting it runs two code tasks on held-out functions of the valid split (never the test
split, which the model card reports on):
  - complete: share of seeded completions of function signatures whose body parses (`ast`);
  - infill-line: exact match of a removed line, filled with the setting's policy/temperature.
The score is parse_rate + exact_match; among settings within `--tolerance` of the best score, the cheapest
(fewest forward passes, NFE) wins, then the higher score, then the higher infill ast-valid rate. With --write the chosen
settings are merged into the folder's generation_config.json (gen_length stays the folder's).

    python benchmarks/choose_generation.py --model runs/builtin-diffusion/final [-n 40] [--write] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from common import machine, print_table

from dlm.builtin import resolve_model_path
from dlm.eval import code
from dlm.hub import GENERATION_CONFIG_NAME, load
from dlm.training.data import expand_sources, iter_documents


def candidates(causal: bool, gen_length: int) -> list[dict]:
    if causal:  # the AR twin: only temperature / nucleus matter
        return [{"temperature": t, "top_p": p} for t, p in ((0.0, 1.0), (0.5, 1.0), (0.8, 0.95))]
    out = []
    for policy in ("low_confidence", "margin", "entropy"):
        for temperature in (0.0, 0.5):
            for block in sorted({min(32, gen_length), gen_length}):
                out.append({"policy": policy, "temperature": temperature, "block_length": block, "steps": gen_length})
    return out


def quality(r: dict) -> tuple[float, float]:
    """Score first; ties (frequent at this n) go to the setting whose fills parse more often."""
    return r["score"], r["infill_ast"]


def measure(lm, setting: dict, prompts, tasks, gen_length: int, seed: int) -> dict:
    s = dict(setting)
    steps, block = s.pop("steps", None), s.pop("block_length", None)
    t0 = time.perf_counter()
    comp = code.evaluate_completion(lm, prompts, gen_length=gen_length, steps=steps, block_length=block, seed=seed, **s)
    fill = code.evaluate_infill(lm, tasks, seed=seed, **s)
    return {
        **setting,
        "parse_rate": round(comp["parse_rate"], 3),
        "ended_rate": round(comp["ended_rate"], 3),
        "infill_em": round(fill["exact_match"], 3),
        "infill_ast": round(fill["ast_valid"], 3),
        "score": round(comp["parse_rate"] + fill["exact_match"], 3),
        "nfe_mean": round(comp["nfe_mean"], 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--data", default="data/python/valid.jsonl")
    ap.add_argument("-n", type=int, default=40, help="prompts and infilling tasks per setting")
    ap.add_argument("--gen-length", type=int, default=64, help="completion length for the complete task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=0.02)
    ap.add_argument("--write", action="store_true", help="merge the choice into the folder's generation_config")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    lm = load(a.model)
    texts = [d for _, d in iter_documents(expand_sources([a.data], "--data")) if isinstance(d, str)]
    functions = code.extract_functions(texts)
    fit = code.fit_to_model(lm, functions, task="complete", gen_length=a.gen_length)
    prompts = code.completion_tasks(fit, a.n, a.seed)
    tasks = code.infill_tasks(code.fit_to_model(lm, functions), a.n, a.seed, "line")
    # quality first at full steps, then fewer steps for the best quality setting
    rows = [measure(lm, c, prompts, tasks, a.gen_length, a.seed) for c in candidates(lm.is_causal, a.gen_length)]
    if not lm.is_causal:
        best = max(rows, key=quality)
        for div in (2, 4):
            c = {k: best[k] for k in ("policy", "temperature", "block_length")} | {"steps": a.gen_length // div}
            rows.append(measure(lm, c, prompts, tasks, a.gen_length, a.seed))
        # parallel decoding (issue 5): commit every position above a confidence threshold, with and without cache
        for tau, cache in ((0.9, "none"), (0.7, "none"), (0.9, "dual")):
            c = {k: best[k] for k in ("temperature", "block_length")} | {
                "policy": "threshold",
                "threshold": tau,
                "cache": cache,
                "steps": a.gen_length,
            }
            rows.append(measure(lm, c, prompts, tasks, a.gen_length, a.seed))
    top = max(r["score"] for r in rows)
    ok = [r for r in rows if r["score"] >= top - a.tolerance]
    chosen = min(ok, key=lambda r: (r["nfe_mean"], *(-q for q in quality(r))))
    keys = ("policy", "temperature", "top_p", "block_length", "steps", "threshold", "cache")
    choice = {k: chosen[k] for k in keys if k in chosen}
    if not lm.is_causal:  # express steps/blocks as ratios of gen_length so they apply to the default gen_length
        g = lm.generation_config.gen_length
        choice["steps"] = g * chosen["steps"] // a.gen_length
        choice["block_length"] = min(chosen["block_length"], g) if chosen["block_length"] < a.gen_length else g
    result = {"model": a.model, "machine": machine(), "n": a.n, "data": a.data, "rows": rows, "chosen": choice}
    if a.json:
        print(json.dumps(result))
    else:
        print_table(rows)
        print(f"chosen: {choice}")
    if a.write:
        folder = resolve_model_path(a.model)
        cfg = lm.make_config(None, **choice)
        (folder / GENERATION_CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
        print(f"wrote {folder / GENERATION_CONFIG_NAME}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
