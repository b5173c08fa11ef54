"""Perplexity of unigram token frequencies (train split, add-0.5 smoothing): the floor against which a model's
held-out perplexity is read.

    python benchmarks/unigram_ppl.py runs/tiny                  # a run's token cache: train.bin vs valid.bin
    python benchmarks/unigram_ppl.py --model builtin --train data/python/train.jsonl --data data/python/test.jsonl
        # the model's tokenizer on text files; the scored tokens are the windows `dlm eval ppl` scores
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np


def unigram_ppl(train: np.ndarray, scored: np.ndarray, vocab_size: int) -> float:
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 0.5
    return round(math.exp(-np.log(counts[scored] / counts.sum()).mean()), 1)


def from_run(run: Path) -> dict:
    meta = json.loads((run / "data" / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    train = np.fromfile(run / "data" / "train.bin", dtype=dtype)
    valid = np.fromfile(run / "data" / "valid.bin", dtype=dtype)
    ppl = unigram_ppl(train, valid, meta["vocab_size"])
    return {"run": str(run), "train_tokens": int(train.size), "valid_tokens": int(valid.size), "unigram_ppl": ppl}


def from_files(model: str, train_files: list[str], data: list[str], seq_len: int) -> dict:
    from dlm.eval import pack_texts
    from dlm.hub import load
    from dlm.training.data import expand_sources, iter_documents

    tok = load(model).tokenizer
    texts = lambda srcs, name: [d for _, d in iter_documents(expand_sources(srcs, name)) if isinstance(d, str)]
    train_texts = texts(train_files, "--train")
    train = np.concatenate(
        [np.asarray(tok.encode(t, parse_special=False) + [tok.eos_token_id], dtype=np.int64) for t in train_texts]
    )
    scored = pack_texts(texts(data, "--data"), tok, seq_len).numpy().reshape(-1)
    ppl = unigram_ppl(train, scored, tok.vocab_size)
    return {"model": model, "train_tokens": int(train.size), "scored_tokens": int(scored.size), "unigram_ppl": ppl}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", type=Path, help="a run folder with data/{train,valid}.bin")
    ap.add_argument("--model", default="builtin", help="tokenizer of this model (with --train/--data)")
    ap.add_argument("--train", nargs="+")
    ap.add_argument("--data", nargs="+")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--json", action="store_true", help="(output is always one JSON object)")
    a = ap.parse_args(argv)
    if a.train and a.data:
        print(json.dumps(from_files(a.model, a.train, a.data, a.seq_len)))
    else:
        print(json.dumps(from_run(a.run or Path("runs/tiny"))))


if __name__ == "__main__":
    main()
