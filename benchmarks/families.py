"""The family table (issue 19; docs/models.md "Families"): every family trained by examples/configs/families/
measured on the same held-out text with the same prompts.

For each trained model folder ROOT/NAME/final:
- held-out NLL on the config's valid text (KJV Ruth): the ELBO bound for diffusion families (Monte-Carlo,
  stratified noise levels), exact for the AR model; per token and, because DiffusionBERT's WordPiece and the
  others' BPE cut the text differently, in bits per byte (NLL per token x tokens of the text / its UTF-8 bytes);
- samples: one completion of `--gen` tokens per prompt (the first 6 words of each held-out verse), drawn at
  temperature `--temperature` (1: each family's own ancestral sampling, seed 0; greedy decoding repeats itself),
  with the family's own steps per token and block length (its config's generation section),
  generative perplexity under SmolLM2-135M (tokens are SmolLM2's) with the samples' mean unigram entropy beside
  it (a repetitive sample can buy a low perplexity), tok/s (wall clock, batch `--batch`) and forwards per token.

    python benchmarks/families.py runs/families --out reports/families.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

ORDER = ["ar", "masked", "uniform", "block", "continuous", "diffusionbert", "diffusionbert-scratch"]


def heldout(lm, text: str, seq_len: int, samples: int) -> dict:
    from dlm.eval import pack_texts, perplexity

    windows = pack_texts([text], lm.tokenizer, seq_len)
    res = perplexity(lm.model, windows, diffusion_config=lm.diffusion_config, samples=samples)
    total_tokens = len(lm.tokenizer.encode(text, parse_special=False)) + 1  # + the EOS pack_texts adds
    bits_per_byte = res.nll_per_token * total_tokens / (math.log(2) * len(text.encode("utf-8")))
    return {"nll_per_token": res.nll_per_token, "kind": res.kind, "scored_tokens": res.tokens,
            "bits_per_byte": bits_per_byte}  # fmt: skip


def sample(lm, prompts: list[str], gen: int, batch: int, scorer, temperature: float) -> dict:
    from dlm.eval import quality

    own = lm.generation_config  # the family's own steps per token and block length, scaled to `gen` tokens
    blocks = gen // own.block_size if own.block_size < own.gen_length else 1
    steps = max(blocks, own.steps * gen // own.gen_length // blocks * blocks)
    cfg = lm.make_config(None, gen_length=gen, steps=steps, block_length=gen // blocks, temperature=temperature,
                         seed=0, stop_at_eos=False)  # fmt: skip
    lm.generate(prompts[:1], cfg)  # warm-up
    outs, t0 = [], time.perf_counter()
    for i in range(0, len(prompts), batch):
        outs += lm.generate(prompts[i : i + batch], cfg)
    wall = time.perf_counter() - t0
    tokens = sum(len(o.tokens) for o in outs)
    q = quality.text_quality(scorer, prompts, [o.text for o in outs], [o.tokens for o in outs])
    return {
        "gen_ppl": q["gen_ppl"], "entropy": q["entropy"], "distinct_2": q["distinct_2"],
        "tok_s": tokens / wall, "forwards_per_token": sum(o.nfe for o in outs) / max(tokens, 1),
        "steps": cfg.steps, "block_length": cfg.block_size, "cache": cfg.cache,
        "samples": [{"prompt": p, "text": o.text} for p, o in zip(prompts[:3], outs[:3])],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="folder of runs: ROOT/NAME/final")
    ap.add_argument("--valid", default="examples/data/kjv/ruth.txt")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--samples", type=int, default=16, help="noise levels per window for the ELBO bounds")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import dlm
    from dlm.eval import quality

    text = Path(args.valid).read_text()
    prompts = [" ".join(line.split()[:6]) for line in text.splitlines() if len(line.split()) > 8][: args.prompts]
    scorer = quality.load_scorer("smollm2")
    rows = []
    names = [n for n in ORDER if (args.root / n / "final").is_dir()]
    for name in names:
        lm = dlm.load(args.root / name / "final")
        row = {"family": name, "parameters": sum(p.numel() for p in lm.model.parameters())}
        row.update(heldout(lm, text, args.seq_len, args.samples))
        row.update(sample(lm, prompts, args.gen, args.batch, scorer, args.temperature))
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "samples"}), flush=True)
    report = {"machine": machine(), "valid": args.valid, "prompts": len(prompts), "gen": args.gen,
              "batch": args.batch, "temperature": args.temperature, "elbo_samples": args.samples,
              "rows": rows}  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    print("| family | params | held-out NLL/token | bits/byte | gen ppl (SmolLM2) | entropy | tok/s | fwd/token |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        bound = "exact" if r["kind"] == "exact" else "≤"
        print(f"| {r['family']} | {r['parameters'] / 1e6:.2f}M | {bound} {r['nll_per_token']:.2f} | "
              f"{r['bits_per_byte']:.2f} | {r['gen_ppl']:.0f} | {r['entropy']:.2f} | {r['tok_s']:.0f} | "
              f"{r['forwards_per_token']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
