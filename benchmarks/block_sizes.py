"""Block size sweep (issue 15): the AR twin converted to block diffusion at block sizes 4, 8, 16, 32 with the same
recipe (examples/configs/builtin-block.yaml) and the same short budget, then per size the held-out perplexity
bound (test split and third-party Python) and batch-1 tok/s / tokens per forward against the AR twin, measured
in the same process.

    python benchmarks/block_sizes.py                      # trains what is missing (resumable), then measures
    python benchmarks/block_sizes.py --sizes 8 --steps 50 # a smaller sweep

Runs live in --runs-dir (default $HOME/dlm-runs/block-sweep/b{size}); training is `dlm train … --resume`, so an
interrupted sweep continues. Each size's run takes ~12 min on a 2-core CPU at the default 250 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples/configs/builtin-block.yaml"


def train(size: int, a) -> Path:
    out = Path(a.runs_dir) / f"b{size}"
    final = out / "final"
    if (final / "config.json").is_file():
        return final
    sets = [
        f"out_dir={out}",
        f"diffusion.block_size={size}",
        f"generation.block_length={size}",
        f"train.max_steps={a.steps}",
        f"optim.warmup_steps={max(1, a.steps // 5)}",
        f"train.save_every={max(1, a.steps // 2)}",
        f"train.eval_every={a.steps}",
        "train.progress=false",
    ]
    cmd = [a.dlm, "train", str(CONFIG), *(x for s in sets for x in ("--set", s)), "--resume"]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return final


def bound(model: str, data: str, a) -> float:
    cmd = [a.dlm, "eval", "ppl", "--model", model, "--data", data, "--samples", str(a.samples), "--json"]
    cmd += ["--max-tokens", str(a.max_tokens)]
    out = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout
    return float(json.loads(out)["ppl"])


def speed(lm, method: str, a) -> dict:
    from dlm import bench

    b = bench.parser().parse_args(["--prompts", str(a.prompts), "--tasks", "0", "--runs", str(a.runs)])
    prompts = bench.load_prompts(b, lm)[0]
    size = lm.model.config.block_size or 0
    cfg = bench.method_config(method, a.gen_length, size or 1, b, size)  # block: threshold_prefix 0.9
    fn = bench.generate_autoregressive if method == "ar" else bench.generate
    res = bench.measure(fn, lm.model, prompts, cfg, 1, a.runs, torch.device("cpu"))
    return {k: res[k] for k in ("tok_s", "tpf", "nfe")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--runs-dir", default=os.path.expanduser("~/dlm-runs/block-sweep"))
    p.add_argument("--ar-model", default="builtin-ar")
    p.add_argument("--test", default="data/python/test.jsonl")
    p.add_argument("--thirdparty", default="data/thirdparty/test.jsonl")
    p.add_argument("--samples", type=int, default=4, help="t samples per window for the bound")
    p.add_argument("--max-tokens", type=int, default=65536, help="tokens scored per corpus")
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--dlm", default=str(Path(sys.executable).with_name("dlm")))
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from dlm import bench, load

    corpora = {"test": a.test, "thirdparty": a.thirdparty}
    finals = {size: train(size, a) for size in a.sizes}
    ar = load(a.ar_model)
    base = {"model": a.ar_model, "block_size": None, **{k: bound(a.ar_model, v, a) for k, v in corpora.items()}}
    base.update(speed(ar, "ar", a))
    rows = [base]
    for size, final in finals.items():
        row = {"model": str(final), "block_size": size, **{k: bound(str(final), v, a) for k, v in corpora.items()}}
        row.update(speed(load(str(final)), "block", a))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"machine: {json.dumps(bench.machine())}")
    print(f"steps {a.steps}, bound: {a.samples} t samples over {a.max_tokens} tokens; batch 1, gen {a.gen_length}")
    print("| block | test ppl (bound) | × AR | third-party ppl (bound) | × AR | tok/s | × AR | tokens/forward |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = "AR twin (exact)" if r["block_size"] is None else str(r["block_size"])
        print(
            f"| {name} | {r['test']:.2f} | {r['test'] / base['test']:.2f} | {r['thirdparty']:.2f} | "
            f"{r['thirdparty'] / base['thirdparty']:.2f} | {r['tok_s']:.1f} | {r['tok_s'] / base['tok_s']:.2f} | "
            f"{r['tpf']:.2f} |"
        )
    if a.out:
        Path(a.out).write_text(json.dumps({"machine": bench.machine(), "settings": vars(a), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
