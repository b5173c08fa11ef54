"""Print the model card's result tables (docs/models.md) from the JSON that scripts/eval_builtin.sh wrote.

python scripts/model_card_tables.py [runs/model-card]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODELS = (("builtin", "diffusion"), ("builtin-ar", "AR twin"))


def _load(d: Path, name: str) -> dict | None:
    p = d / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def main(argv=None) -> None:
    d = Path((argv or sys.argv[1:] or ["runs/model-card"])[0])
    uni = _load(d, "ppl-unigram")
    rows = ["| | diffusion | AR twin |", "|---|---|---|"]
    ppl = {m: _load(d, f"ppl-{m}") for m, _ in MODELS}
    cell = lambda r, f: f(r) if r else "—"
    rows.append(
        "| test perplexity | "
        + " | ".join(
            cell(ppl[m], lambda r: f"{r['ppl']:.1f} ({'ELBO bound' if r['kind'] == 'elbo' else 'exact'})")
            for m, _ in MODELS
        )
        + " |"
    )
    if ppl["builtin"] and ppl["builtin-ar"]:
        rows.append(f"| ratio diffusion / AR | {ppl['builtin']['ppl'] / ppl['builtin-ar']['ppl']:.2f}× | 1 |")
    comp = {m: _load(d, f"complete-{m}") for m, _ in MODELS}
    rows.append(
        "| completions of 100 signatures that parse (64 tokens; share that ended) | "
        + " | ".join(cell(comp[m], lambda r: f"{r['parse_rate']:.0%} ({r['ended_rate']:.0%})") for m, _ in MODELS)
        + " |"
    )
    for task, label in (("infill-line", "one line removed"), ("infill-span", "2–6 tokens removed")):
        res = {m: _load(d, f"{task}-{m}") for m, _ in MODELS}
        rows.append(
            f"| infilling, {label}: exact match / ast-valid (100 tasks) | "
            + " | ".join(cell(res[m], lambda r: f"{r['exact_match']:.0%} / {r['ast_valid']:.0%}") for m, _ in MODELS)
            + " |"
        )
    if uni:
        rows.append(f"| unigram floor (train-split frequencies) | {uni['unigram_ppl']:.1f} | same |")
    settings = {m: comp[m] for m, _ in MODELS if comp[m]}
    print("\n".join(rows))
    print()
    for m, r in settings.items():
        print(f"- `{m}`: temperature {r['temperature']}, policy {r['policy']}, seed {r['seed']}, heal {r['heal']}")
    toks = ppl["builtin"]["tokens"] if ppl["builtin"] else None
    if toks:
        print(f"- perplexity over {toks:,} test tokens in 256-token windows; ELBO with 8 Monte-Carlo t per window")


if __name__ == "__main__":
    main()
