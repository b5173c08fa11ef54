"""Print the model card's result tables (docs/models.md) from the JSON that scripts/eval_builtin.sh wrote.

python scripts/model_card_tables.py [runs/model-card]

Columns: every model of MODELS with results in the folder; ratios are each model's perplexity over the AR
twin's on the same tokens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODELS = (("builtin-diffusion", "diffusion"), ("builtin-block", "block diffusion"), ("builtin-ar", "AR twin"))
AR = "builtin-ar"


def _load(d: Path, name: str) -> dict | None:
    p = d / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _kind(r: dict) -> str:
    return "ELBO bound" if r["kind"] == "elbo" else "exact"


def main(argv=None) -> None:
    d = Path((argv or sys.argv[1:] or ["runs/model-card"])[0])
    models = [(m, label) for m, label in MODELS if (d / f"ppl-{m}.json").is_file()]
    rows = ["| | " + " | ".join(label for _, label in models) + " |", "|---" * (len(models) + 1) + "|"]

    def line(name: str, cells) -> None:
        rows.append(f"| {name} | " + " | ".join(cells) + " |")

    for split, label in (("", "test perplexity"), ("thirdparty-", "perplexity on unseen third-party Python")):
        ppl = {m: _load(d, f"ppl-{split}{m}") for m, _ in models}
        if not any(ppl.values()):
            continue
        line(label, [f"{r['ppl']:.1f} ({_kind(r)})" if r else "—" for r in ppl.values()])
        if ppl.get(AR):
            line("ratio to the AR twin", [f"{r['ppl'] / ppl[AR]['ppl']:.2f}×" if r else "—" for r in ppl.values()])
    comp = {m: _load(d, f"complete-{m}") for m, _ in models}
    line(
        "completions of 100 signatures that parse (64 tokens; share that ended)",
        [f"{r['parse_rate']:.0%} ({r['ended_rate']:.0%})" if r else "—" for r in comp.values()],
    )
    for task, label in (("infill-line", "one line removed"), ("infill-span", "2–6 tokens removed")):
        res = {m: _load(d, f"{task}-{m}") for m, _ in models}
        line(
            f"infilling, {label}: exact match / ast-valid (100 tasks)",
            [f"{r['exact_match']:.0%} / {r['ast_valid']:.0%}" if r else "—" for r in res.values()],
        )
    uni = _load(d, "ppl-unigram")
    if uni:
        line("unigram floor (train-split frequencies)", [f"{uni['unigram_ppl']:.1f}"] + ["same"] * (len(models) - 1))
    print("\n".join(rows))
    print()
    for m, r in comp.items():
        if r:
            print(f"- `{m}`: temperature {r['temperature']}, policy {r['policy']}, seed {r['seed']}, heal {r['heal']}")
    first = next((r for r in (_load(d, f"ppl-{m}") for m, _ in models) if r), None)
    if first:
        print(
            f"- perplexity over {first['tokens']:,} test tokens in 256-token windows; ELBO with 8 Monte-Carlo t "
            "per window"
        )


if __name__ == "__main__":
    main()
