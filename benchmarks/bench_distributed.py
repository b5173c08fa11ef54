"""Data-parallel training on this machine: tokens/s for 1 and 2 processes (and per core), and peak memory
per rank for DDP against FSDP2 on a large config.

    python benchmarks/bench_distributed.py [--steps 12] [--json]          # throughput, ~10M-param model
    python benchmarks/bench_distributed.py --memory [--json]              # peak RSS per rank, ~300M params

Every run is a real `python -m dlm.train` (one process) or `torchrun ... -m dlm.train` (2 processes, gloo,
one thread each) on a few of the standard library's files with the built-in tokenizer. Throughput is the
trainer's own `tok_s` (global tokens per second) averaged after the first logging window (warm-up).
Peak memory per rank: the trainer logs `peak_rss_gb` (the largest over ranks) with every `tok_s`; the last
record comes before the final checkpoint and export, so it is the training peak. The run's overall peak, with
the checkpoint write and the export, is the largest resident set of any training process (getrusage of the
waited-for descendants, in a fresh wrapper process per run). Both include Python, torch and the data.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import machine, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "src" / "dlm" / "builtin" / "python-diffusion"
SMALL = {"d_model": 384, "n_layers": 6, "n_heads": 6, "d_ff": 1024}  # ~10M with the 8k vocabulary
LARGE = {"d_model": 1024, "n_layers": 24, "n_heads": 16, "d_ff": 2816}  # ~315M


def write_config(tmp: Path, name: str, model: dict, steps: int, batch: int, seq: int, **train) -> Path:
    cfg = {
        "out_dir": str(tmp / name),
        "model": {**model, "max_seq_len": seq},
        "data": {"train": ["{stdlib}/json/*.py", "{stdlib}/email/*.py", "{stdlib}/http/*.py"], "seq_len": seq},
        "tokenizer": {"path": str(TOKENIZER)},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "train": {
            "batch_size": batch,
            "max_steps": steps,
            "dtype": "bf16",
            "eval_every": 0,
            "eval_batches": 1,
            "eval_samples": 1,
            "save_every": 0,
            "log_every": 3,
            "progress": False,
            **train,
        },
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


WRAPPER = """
import resource, subprocess, sys, json
rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
print(json.dumps({"rc": rc, "peak_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def run(cfg: Path, nproc: int, threads: int, strategy: str = "ddp") -> dict:
    sets = ["--set", f"train.distributed={strategy}", "--set", f"train.threads={threads}"]
    if nproc == 1:
        cmd = [sys.executable, "-m", "dlm.train", str(cfg), *sets]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        cmd += ["-m", "dlm.train", str(cfg), *sets]
    out = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise SystemExit(f"{cmd} failed (rc {res['rc']}): {out.stderr[-2000:]}")
    out_dir = Path(yaml.safe_load(cfg.read_text())["out_dir"])
    recs = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    (out_dir / "metrics.jsonl").unlink()  # the next run in this out_dir starts a fresh file
    tok_s = [r["tok_s"] for r in recs if "tok_s" in r][1:]  # drop the first window (warm-up)
    train_peak = max(r.get("peak_rss_gb", 0.0) for r in recs)  # logged before the last save and the export
    return {"tok_s": sum(tok_s) / max(len(tok_s), 1), "peak_rss_gb": res["peak_rss_kb"] / 2**20,
            "train_peak_rss_gb": train_peak}  # fmt: skip


def throughput(steps: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = write_config(Path(tmp), "small", SMALL, steps, batch=16, seq=256)
        base = None
        for label, nproc, threads, strategy in [
            ("1 process, 1 thread", 1, 1, "ddp"),
            ("1 process, 2 threads", 1, 2, "ddp"),
            ("2 processes x 1 thread, DDP", 2, 1, "ddp"),
            ("2 processes x 1 thread, FSDP2", 2, 1, "fsdp"),
        ]:
            r = run(cfg, nproc, threads, strategy)
            base = base or r["tok_s"]
            cores = nproc * threads
            rows.append(
                {
                    "run": label,
                    "tok/s": round(r["tok_s"]),
                    "tok/s per core": round(r["tok_s"] / cores),
                    "vs 1 thread": round(r["tok_s"] / base, 2),
                    "per-core efficiency": round(r["tok_s"] / (base * cores), 2),
                }
            )
    return rows


def memory(steps: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = write_config(Path(tmp), "large", LARGE, steps, batch=2, seq=128, dtype="fp32", log_every=1)
        params = None
        for label, nproc, strategy in [
            ("1 process", 1, "ddp"),
            ("2 ranks DDP", 2, "ddp"),
            ("2 ranks FSDP2", 2, "fsdp"),
        ]:
            r = run(cfg, nproc, 1, strategy)
            if params is None:
                from dlm.hub.checkpoint import load_model_config

                params = load_model_config(Path(tmp) / "large" / "final")[0].num_parameters()
            rows.append(
                {
                    "run": label,
                    "params_M": round(params / 1e6, 1),
                    "training peak RSS/rank (GB)": round(r["train_peak_rss_gb"], 2),
                    "bytes/param": round(r["train_peak_rss_gb"] * 2**30 / params, 1),
                    "with checkpoint + export (GB)": round(r["peak_rss_gb"], 2),
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--memory", action="store_true", help="peak memory per rank, DDP vs FSDP2, ~300M params")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    info = machine()
    rows = memory(max(3, args.steps // 3)) if args.memory else throughput(args.steps)
    if args.json:
        print(json.dumps({"machine": info, "rows": rows}, indent=2))
    else:
        print(info)
        print_table(rows)


if __name__ == "__main__":
    main()
