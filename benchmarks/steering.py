"""Steering mid-denoising, measured (issue 18): does switching a row's prompt to an instruction partway through
the denoising make the output show the attribute the instruction asks for, against leaving it out?

Pre-registered (fixed before any result): the built-in diffusion model; the first 100 signatures of held-out
functions (valid split, seed 2); 64 tokens in one block, 64 steps, greedy; two instructions, each on the line
before the signature, with the attribute it asks for: "# loop over the items with a for loop" (the completion
holds a `for ... in` loop) and "# check the arguments and raise ValueError" (it holds `raise`; added after a
10-item smoke run of the first showed 0/10 in every condition, before any run of this one).
Conditions: no instruction; the instruction from the start; steered to it after 1/4 and after 1/2 of the steps;
the instruction from the start with attribute guidance (classifier-free guidance whose unconditional pass hides
only the instruction, cfg_scale 1: twice the forwards).
Each against "no instruction" on the same items: McNemar exact.

    python benchmarks/steering.py [--model builtin] [-n 100] [--data data/python/valid.jsonl] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import time

import dlm
from dlm.eval import code
from dlm.eval.claims import stats
from dlm.training.data import expand_sources, iter_documents

ATTRIBUTES = {
    "a for loop": ("# loop over the items with a for loop\n", re.compile(r"\bfor\b[^\n]*\bin\b")),
    "raise": ("# check the arguments and raise ValueError\n", re.compile(r"\braise\b")),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin")
    p.add_argument("--data", default="data/python/valid.jsonl")
    p.add_argument("-n", type=int, default=100)
    p.add_argument("--gen-length", type=int, default=64)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    lm = dlm.load(a.model)
    texts = [d for _, d in iter_documents(expand_sources([a.data], "--data")) if isinstance(d, str)]
    sigs = code.completion_tasks(code.extract_functions(texts), a.n, 2)
    G = a.gen_length
    conditions = {"no instruction": None, "instruction from the start": 0, f"steered at step {G // 4}": G // 4,
                  f"steered at step {G // 2}": G // 2, "instruction + attribute guidance (cfg 1)": "guide"}  # fmt: skip
    results, rows, t0 = {}, [], time.perf_counter()
    kw = dict(gen_length=G, steps=G, block_length=G, temperature=0.0)
    plain = [o.text for i in range(0, len(sigs), a.batch) for o in lm.generate(sigs[i : i + a.batch], **kw)]
    for attr, (instruction, pattern) in ATTRIBUTES.items():
        for name, at in conditions.items():
            texts_out = plain if at is None else []
            for i in range(0, len(sigs), a.batch) if at is not None else ():
                batch = sigs[i : i + a.batch]
                steered = [instruction + s for s in batch]
                if at == "guide":
                    outs = lm.generate(batch, guide_with=instruction, cfg_scale=1.0, **kw)
                elif at == 0:
                    outs = lm.generate(steered, **kw)
                else:
                    outs = lm.generate(batch, steer=(at, steered), **kw)
                texts_out += [o.text for o in outs]
            hits = [bool(pattern.search(t)) for t in texts_out]
            results[f"{attr}: {name}"] = {"hits": hits, "examples": texts_out[:2]}
        base = results[f"{attr}: no instruction"]["hits"]
        for name in conditions:
            hits = results[f"{attr}: {name}"]["hits"]
            m = stats.mcnemar(hits, base) if name != "no instruction" else None
            rows.append({"attribute": attr, "condition": name, "with it": sum(hits), "n": len(hits),
                         "only this": m["only_x"] if m else None, "only no instruction": m["only_y"] if m else None,
                         "p": m["p"] if m else None})  # fmt: skip
    print(f"model {a.model}, {len(sigs)} signatures from {a.data}, {G} tokens, {time.perf_counter() - t0:.0f} s")
    print("| attribute | condition | with it | only this | only without | McNemar p (exact) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        extra = "| — | — | — |"
        if r["p"] is not None:
            extra = f"| {r['only this']} | {r['only no instruction']} | {r['p']:.3g} |"
        print(f"| {r['attribute']} | {r['condition']} | {r['with it']}/{r['n']} " + extra)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"rows": rows, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
