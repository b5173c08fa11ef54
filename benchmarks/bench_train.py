"""Training throughput and MFU of a ~10M-parameter dlm config (bf16 autocast), with the matmul peak
measured in the same process.

    python benchmarks/bench_train.py [--steps 10] [--batch 16] [--seq 256] [--no-compile] [--json]

MFU = achieved model FLOP/s / measured matmul FLOP/s of the same dtype (a 2048^3 matmul). Model FLOPs
are those the step needs, forward + backward (PaLM's convention): 6 x (transformer-body weights) per
token, 6 x (LM-head weights) per *masked* token (the loss applies the head only there; counted from the
real masks), and 12 x layers x d x seq per token for attention scores.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import machine, matmul_peak, print_table  # noqa: E402

from dlm.diffusion import DiffusionConfig, MaskedDiffusion  # noqa: E402
from dlm.model import ModelConfig, Transformer  # noqa: E402


def config_10m(vocab: int = 8192, seq: int = 256) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab,
        d_model=384,
        n_layers=6,
        n_heads=6,
        d_ff=1024,
        max_seq_len=seq,
        mask_token_id=3,
        eos_token_id=1,
        pad_token_id=2,
    )


def step_flops(cfg: ModelConfig, tokens: int, masked: int, seq: int) -> float:
    body = cfg.num_parameters() - cfg.vocab_size * cfg.d_model  # all weights but the (tied) embedding/head
    return (
        6 * body * tokens + 6 * cfg.vocab_size * cfg.d_model * masked + 12 * cfg.n_layers * cfg.d_model * seq * tokens
    )


def run(steps: int, batch: int, seq: int, dtype: str, compile_: bool) -> dict:
    torch.manual_seed(0)
    cfg = config_10m(seq=seq)
    model = Transformer(cfg)
    fwd = torch.compile(model) if compile_ else model
    diff = MaskedDiffusion(DiffusionConfig(), cfg.mask_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(4, cfg.vocab_size, (batch, seq))

    def step() -> int:
        with torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else _null():
            out = diff.loss(fwd, data, generator=gen)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.num_masked

    for _ in range(3):  # warm-up (and compilation)
        step()
    masked = 0
    t0 = time.perf_counter()
    for _ in range(steps):
        masked += step()
    dt = time.perf_counter() - t0
    tokens = steps * batch * seq
    return {
        "params_M": round(model.num_parameters() / 1e6, 2),
        "dtype": dtype,
        "compile": compile_,
        "batch": batch,
        "seq": seq,
        "tok_s": tokens / dt,
        "model_TFLOPs": step_flops(cfg, tokens, masked, seq) / dt / 1e12,
    }


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile row (~1 min to compile)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    peak_bf16 = matmul_peak(torch.bfloat16)
    peak_fp32 = matmul_peak(torch.float32)
    rows = []
    for dtype in ("fp32", "bf16"):
        r = run(a.steps, a.batch, a.seq, dtype, False)
        r["peak_TFLOPs"] = (peak_bf16 if dtype == "bf16" else peak_fp32) / 1e12
        r["MFU_%"] = 100 * r["model_TFLOPs"] * 1e12 / (peak_bf16 if dtype == "bf16" else peak_fp32)
        rows.append(r)
    if not a.no_compile:
        r = run(a.steps, a.batch, a.seq, "bf16", True)
        r["peak_TFLOPs"] = peak_bf16 / 1e12
        r["MFU_%"] = 100 * r["model_TFLOPs"] * 1e12 / peak_bf16
        rows.append(r)
    # measure the peaks again after the runs and keep the best: MFU is never flattered by a slow peak
    peak_bf16 = max(peak_bf16, matmul_peak(torch.bfloat16))
    peak_fp32 = max(peak_fp32, matmul_peak(torch.float32))
    for r in rows:
        peak = peak_bf16 if r["dtype"] == "bf16" else peak_fp32
        r["peak_TFLOPs"] = peak / 1e12
        r["MFU_%"] = 100 * r["model_TFLOPs"] * 1e12 / peak
    base = rows[0]["tok_s"]
    for r in rows:
        r["x_vs_fp32"] = r["tok_s"] / base
    print(f"# {machine()}")
    print_table(rows, a.json)


if __name__ == "__main__":
    main()
