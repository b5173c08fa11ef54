"""Variable-length infilling, measured (issue 18): the diffusion model chooses the fill length
(`lm.infill(prefix, suffix, None)`: every length 1..24 filled, the one after which the suffix's first 4 tokens are
most likely wins) against the same model told the oracle length (the removed text's token count) and against the
AR twin continuing the prefix with the oracle budget (it cannot see the suffix). One removed line of held-out code
per function (`dlm eval code --task infill-line`'s items), greedy. Paired: McNemar exact on the same items.

The length rule was chosen on 30 valid-split items among six (mean or sum of the fill's log-probabilities with
the fill masked, the suffix-join score, and three sums of these): the join score had the most fills that parse
(13 of 30, oracle length 16) and the smallest mean |length - oracle| (7.0 tokens). This script then runs once on
the test split.

    python benchmarks/infill_length.py [-n 100] [--data data/python/test.jsonl] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import dlm
from dlm.eval import code
from dlm.eval.claims import stats
from dlm.eval.code import _parses, _writes_code, heal_prompt
from dlm.training.data import expand_sources, iter_documents


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/python/test.jsonl")
    p.add_argument("-n", type=int, default=100)
    p.add_argument("--max-length", type=int, default=24)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    diff, ar = dlm.load("builtin"), dlm.load("builtin-ar")
    texts = [d for _, d in iter_documents(expand_sources([a.data], "--data")) if isinstance(d, str)]
    tasks = code.infill_tasks(code.fit_to_model(diff, code.extract_functions(texts)), a.n, 0, "line")
    t0 = time.perf_counter()
    chosen = []
    for t in tasks:
        prefix, ws = heal_prompt(t.prefix, True)
        oracle = len(diff.tokenizer.encode(ws + t.target, parse_special=False))
        o = diff.infill(prefix, t.suffix, None, max_length=a.max_length, seed=0)
        chosen.append({"ast_valid": _writes_code(o.text) and _parses(prefix + o.text + t.suffix),
                       "exact_match": o.text.strip() == t.target.strip(), "length": len(o.tokens), "oracle": oracle,
                       "nfe": o.nfe})  # fmt: skip
    seconds = time.perf_counter() - t0
    oracle = code.evaluate_infill(diff, tasks, seed=0, keep_rows=True)
    twin = code.evaluate_infill(ar, tasks, seed=0, keep_rows=True)
    n = len(tasks)
    rows = {"diffusion, length chosen": chosen, "diffusion, oracle length": oracle["rows"],
            "AR twin, oracle budget": twin["rows"]}  # fmt: skip
    print(f"{n} held-out lines from {a.data}; choosing took {seconds:.0f} s "
          f"({sum(c['nfe'] for c in chosen) / n:.0f} forwards per fill)")  # fmt: skip
    print("| fills | parse in context | exact match |")
    print("|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {sum(x['ast_valid'] for x in r)}/{n} | {sum(x['exact_match'] for x in r)}/{n} |")
    tests = {}
    for other in ("diffusion, oracle length", "AR twin, oracle budget"):
        m = stats.mcnemar([x["ast_valid"] for x in chosen], [x["ast_valid"] for x in rows[other]])
        tests[other] = m
        print(f"parse, length chosen vs {other}: only chosen {m['only_x']}, only other {m['only_y']}, p = {m['p']:.3g}")
    lens = [c["length"] for c in chosen]
    gap = sum(abs(c["length"] - c["oracle"]) for c in chosen) / n
    print(f"chosen lengths: {min(lens)}..{max(lens)} ({len(set(lens))} distinct), mean |chosen - oracle| = {gap:.1f} "
          f"tokens (oracle mean {sum(c['oracle'] for c in chosen) / n:.1f})")  # fmt: skip
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"chosen": chosen, "tests": tests, "seconds": seconds}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
