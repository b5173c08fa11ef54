"""Weight layout for CPU inference. `nn.Linear` keeps its weight as (out, in), row-major; CPU GEMM kernels
(torch 2.13's CPU build, MKL/oneDNN) handle the few-row products of sampling — a block of 4–8 tokens, a batch of
8 one-token AR steps — about twice as fast when that weight is column-major, i.e. stored as the contiguous (in,
out) transpose and seen through a transposed view: `benchmarks/bench_block_step.py` (BENCHMARKS.md). Same shapes,
same values, same parameter names; only the strides change, so nothing else about the model changes. Saving copies
each tensor contiguous (`dlm.hub.checkpoint`), so checkpoints are unchanged."""

from __future__ import annotations

import torch


def linear_weights(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Every plain floating nn.Linear weight of `model`, once each (a tied LM head shares the embedding's)."""
    seen: dict[int, torch.nn.Parameter] = {}
    for m in model.modules():
        w = getattr(m, "weight", None)
        # plain floating tensors only: quantised weights (torchao's tensor subclasses) keep their own layout
        if isinstance(m, torch.nn.Linear) and type(w.data) is torch.Tensor and w.is_floating_point() and w.dim() == 2:
            seen.setdefault(id(m.weight), m.weight)
    return list(seen.values())


def column_major(model: torch.nn.Module) -> torch.nn.Module:
    """Store every linear weight column-major, in place (idempotent); returns `model`."""
    with torch.no_grad():
        for p in linear_weights(model):
            if p.stride() != (1, p.shape[0]):
                p.data = p.data.t().contiguous().t()
    return model


def row_major(model: torch.nn.Module) -> torch.nn.Module:
    """The default layout back (for code that needs contiguous weights, e.g. torchao's quantisers)."""
    with torch.no_grad():
        for p in linear_weights(model):
            p.data = p.data.contiguous()
    return model
