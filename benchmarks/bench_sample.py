"""Sampling speed of the reference LLaDA-style loop: tok/s, NFE, tokens per forward (TPF), latency,
for gen_length 256 / block 32 on the ~10M-parameter config, against the same network run causally with
a KV cache (the AR twin) in the same process.

    python benchmarks/bench_sample.py [--model DIR] [--runs 5] [--json]

Without --model the weights are random (speed does not depend on them; EOS stopping is off so every
method generates all gen_length tokens). Median of --runs after one warm-up.
"""

from __future__ import annotations

import argparse
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_train import config_10m  # noqa: E402
from common import machine, median_time, print_table  # noqa: E402

from dlm.model import Transformer  # noqa: E402
from dlm.sampling import GenerationConfig, generate  # noqa: E402
from dlm.sampling.autoregressive import generate_autoregressive  # noqa: E402


def load(model_dir: str | None, attention: str) -> Transformer:
    if model_dir:
        from dlm.hub import from_pretrained

        return from_pretrained(model_dir)
    torch.manual_seed(0)
    cfg = config_10m(seq=512)
    cfg.attention = attention
    return Transformer(cfg).eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="diffusion checkpoint folder (default: random ~10M config)")
    ap.add_argument("--ar-model", default=None, help="causal twin checkpoint folder")
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--prompt-length", type=int, default=32)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bf16", action="store_true", help="run under bf16 autocast")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    dm, arm = load(a.model, "bidirectional"), load(a.ar_model, "causal")
    G, bl = a.gen_length, a.block_length
    methods = [
        (
            "diffusion steps=G (reference)",
            dm,
            GenerationConfig(gen_length=G, steps=G, block_length=bl, stop_at_eos=False),
        ),
        ("diffusion steps=G/2", dm, GenerationConfig(gen_length=G, steps=G // 2, block_length=bl, stop_at_eos=False)),
        ("diffusion steps=G/4", dm, GenerationConfig(gen_length=G, steps=G // 4, block_length=bl, stop_at_eos=False)),
        ("AR twin + KV cache", arm, GenerationConfig(gen_length=G, steps=G, stop_at_eos=False)),
    ]
    rows = []
    for B in a.batch:
        g = torch.Generator().manual_seed(0)
        vocab = dm.config.vocab_size
        prompts = [torch.randint(4, vocab, (a.prompt_length,), generator=g).tolist() for _ in range(B)]
        base = None
        for name, model, cfg in methods:
            fn = generate_autoregressive if model is arm else generate
            holder = {}

            def call(fn=fn, model=model, prompts=prompts, cfg=cfg, holder=holder):
                ctx = torch.autocast("cpu", dtype=torch.bfloat16) if a.bf16 else torch.no_grad()
                with ctx:
                    holder["out"] = fn(model, prompts, cfg)

            med, _ = median_time(call, warmup=1, runs=a.runs)
            out = holder["out"]
            tokens = sum(len(s) for s in out.canvases) - B * a.prompt_length
            nfe = out.nfe[0]
            tok_s = tokens / med
            base = base or tok_s
            rows.append(
                {
                    "batch": B,
                    "method": name,
                    "gen_length": G,
                    "block": bl if model is dm else "-",
                    "NFE": nfe,
                    "TPF": round(G / nfe, 2),
                    "tok_s": tok_s,
                    "latency_s": med,
                    "x_vs_reference": tok_s / base,
                }
            )
    print(f"# {machine()} bf16={a.bf16}")
    print_table(rows, a.json)


if __name__ == "__main__":
    main()
