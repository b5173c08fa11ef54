"""Print the model card's samples (docs/models.md) from scripts/eval_builtin.sh's outputs: the seeded
`dlm generate` samples of each model, and the first infilling tasks with target and fill.

    python scripts/model_card_samples.py [runs/model-card]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from model_card_tables import MODELS


def main(argv=None) -> None:
    d = Path((argv or sys.argv[1:] or ["runs/model-card"])[0])
    for m, label in MODELS:
        p = d / f"samples-{m}.jsonl"
        if not p.is_file():
            continue
        print(f"**{label}** (`dlm generate ... --model {m} --seed 0`, default settings):\n")
        for line in p.read_text().splitlines():
            s = json.loads(line)
            print("```python\n" + (s["prompt"] + s["text"]).rstrip() + "\n```\n")
        for task in ("infill-line", "infill-span"):
            q = d / f"{task}-{m}.json"
            if not q.is_file():
                continue
            print(f"{task}, first 5 tasks (removed → filled):\n")
            for e in json.loads(q.read_text())["examples"]:
                mark = "exact" if e["exact_match"] else ("parses" if e["ast_valid"] else "invalid")
                print(f"- `{e['target']!r}` → `{e['fill']!r}` ({mark})")
            print()


if __name__ == "__main__":
    main()
