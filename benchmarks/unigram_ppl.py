"""Perplexity of unigram token frequencies (train split, add-0.5 smoothing) on a run's held-out split:
the scale against which a model's held-out perplexity is read.

    python benchmarks/unigram_ppl.py runs/tiny
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/tiny")
    meta = json.loads((run / "data" / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    train = np.fromfile(run / "data" / "train.bin", dtype=dtype)
    valid = np.fromfile(run / "data" / "valid.bin", dtype=dtype)
    counts = np.bincount(train, minlength=meta["vocab_size"]).astype(np.float64) + 0.5
    nll = -np.log(counts[valid] / counts.sum()).mean()
    print(
        json.dumps(
            {
                "run": str(run),
                "train_tokens": int(train.size),
                "valid_tokens": int(valid.size),
                "unigram_ppl": round(math.exp(nll), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
