"""Small and offline at the edge (issue 21): the table of `dlm.bench.edge` (see its docstring for what each column
measures) for the built-in diffusion model and its AR twin in every format dlm writes, and GPT-2 small.

    dlm data prepare python            # data/python/test.jsonl (held out)
    python benchmarks/edge.py [--models builtin builtin-ar] [--work ~/dlm-runs/edge] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import machine, print_table

from dlm.bench.edge import measure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["builtin", "builtin-ar"])
    ap.add_argument("--work", default=str(Path.home() / "dlm-runs" / "edge"), help="quantised and exported folders")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = measure(a.models, Path(a.work), log=lambda m: print(m, file=sys.stderr, flush=True))
    if a.json:
        print(json.dumps({"machine": machine(), "rows": rows}))
    else:
        print(json.dumps(machine()))
        print_table(rows)


if __name__ == "__main__":
    main()
