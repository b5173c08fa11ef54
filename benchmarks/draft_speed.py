"""Self-speculative decoding against the AR twin, interleaved: the ratio that survives a noisy machine.

    python benchmarks/draft_speed.py --draft-model RUN/final [RUN2/final ...] [--ar-model builtin-ar] [--blocks 2 3 4]
                                     [--rounds 5]
                                     [--batch-size 1] [--gen-length 256] [--prompts 8] [--json]

One process loads the models and `dlm bench`'s prompts (held-out signatures, healed), then runs `--rounds` rounds;
each round times one pass of the AR twin (`generate_autoregressive`) and one pass of every draft model at every
`--blocks` k (`generate_speculative`, draft_block k) over the same prompts, in batches of `--batch-size`, in a
rotating order. Per model and k: the median over rounds of (draft tok/s / AR tok/s of the same round), its range,
the tokens per forward, and whether the draft text equals the draft model's own one-token-per-forward text
(`agreement`). The per-round pairing is the point: on a shared CPU both sides of a ratio see the
same neighbour.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from types import SimpleNamespace

import torch

from dlm.bench import _count_tokens, agreement, load_prompts
from dlm.bench.system import machine
from dlm.hub import load
from dlm.sampling import GenerationConfig
from dlm.sampling.autoregressive import generate_autoregressive
from dlm.sampling.speculative import generate_speculative


def timed(fn, model, prompts, cfg, batch):
    t0, tokens, nfe, gens = time.perf_counter(), 0, 0, []
    for i in range(0, len(prompts), batch):
        out = fn(model, prompts[i : i + batch], cfg)
        tokens += _count_tokens(out.sequences, cfg.gen_length)
        nfe += sum(out.nfe)
        gens += [c[len(p) : len(p) + cfg.gen_length] for c, p in zip(out.canvases, prompts[i : i + batch])]
    return tokens / (time.perf_counter() - t0), tokens / nfe, gens


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--draft-model", required=True, nargs="+")
    p.add_argument("--ar-model", default="builtin-ar")
    p.add_argument("--blocks", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    ar, drafts = load(a.ar_model), {name: load(name) for name in a.draft_model}
    args = SimpleNamespace(task_data=None, prompts=a.prompts, seed=0, tasks=0, prompt_tokens=64)
    prompts = load_prompts(args, ar)[0]
    G = a.gen_length
    cfgs = {0: GenerationConfig(gen_length=G, steps=G)}
    cfgs.update({k: GenerationConfig(gen_length=G, steps=G, draft_block=k) for k in a.blocks})
    own = {n: timed(generate_autoregressive, d.model, prompts, cfgs[0], a.batch_size)[2] for n, d in drafts.items()}
    timed(generate_autoregressive, ar.model, prompts[:1], cfgs[0], 1)  # warm-up
    runs = [("ar", 0)] + [(n, k) for n in drafts for k in a.blocks]
    ratios, tpf, agree, speeds = {x: [] for x in runs[1:]}, {}, {}, {x: [] for x in runs}
    for r in range(a.rounds):
        got = {}
        for name, k in runs[r % len(runs) :] + runs[: r % len(runs)]:  # rotate who goes first
            if k == 0:
                got[name, k] = timed(generate_autoregressive, ar.model, prompts, cfgs[0], a.batch_size)
            else:
                got[name, k] = timed(generate_speculative, drafts[name].model, prompts, cfgs[k], a.batch_size)
        for x in runs:
            speeds[x].append(got[x][0])
        for x in runs[1:]:
            ratios[x].append(got[x][0] / got["ar", 0][0])
            tpf[x] = got[x][1]
            agree[x] = agreement(got[x][2], own[x[0]])
    rows = [
        {
            "draft_model": x[0],
            "draft_block": x[1],
            "ratio_median": statistics.median(ratios[x]),
            "ratio_min": min(ratios[x]),
            "ratio_max": max(ratios[x]),
            "tok_s_median": statistics.median(speeds[x]),
            "ar_tok_s_median": statistics.median(speeds["ar", 0]),
            "tpf": tpf[x],
            "agreement": agree[x],
        }
        for x in runs[1:]
    ]
    res = {"machine": machine(), "settings": vars(a), "threads": torch.get_num_threads(), "rows": rows}
    if a.json:
        print(json.dumps(res))
        return 0
    print(f"# {json.dumps(res['machine'])}")
    head = ["model", "draft_block", "× AR twin (median of rounds)", "range", "tok/s", "AR tok/s", "tokens / forward"]
    print("| " + " | ".join([*head, "agreement"]) + " |")
    print("|---" * (len(head) + 1) + "|")
    for r in rows:
        cells = [r["draft_model"], r["draft_block"], f"{r['ratio_median']:.2f}"]
        cells += [f"{r['ratio_min']:.2f}–{r['ratio_max']:.2f}", f"{r['tok_s_median']:.1f}"]
        cells += [f"{r['ar_tok_s_median']:.1f}", f"{r['tpf']:.2f}", f"{r['agreement']:.3f}"]
        print("| " + " | ".join(map(str, cells)) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
