"""Held-out perplexity: the ELBO bound for diffusion models, exact for causal (AR) models."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..diffusion import DiffusionConfig, build_process
from ..errors import InputError
from .nll import next_token_nll


@dataclass
class PerplexityResult:
    ppl: float
    nll_per_token: float  # nats
    tokens: int
    sequences: int
    kind: str  # "elbo" (upper bound) or "exact"
    samples: int


def pack_texts(texts: list[str], tokenizer, seq_len: int, max_tokens: int = 0) -> torch.Tensor:
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer.encode(t, parse_special=False))
        ids.append(tokenizer.eos_token_id)
        if max_tokens and len(ids) >= max_tokens:
            break
    if max_tokens:
        ids = ids[:max_tokens]
    n = len(ids) // seq_len
    if n == 0:
        raise InputError("data", f"only {len(ids)} tokens; need at least seq_len={seq_len} to score one window")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


@torch.no_grad()
def perplexity(
    model,
    windows: torch.Tensor,
    *,
    diffusion_config: DiffusionConfig | None = None,
    samples: int = 8,
    batch_size: int = 8,
    seed: int = 0,
) -> PerplexityResult:
    """Perplexity over fixed windows (N, L): exact next-token for causal models, else the Monte-Carlo
    ELBO bound with `samples` stratified t per window (deterministic for a seed)."""
    model.eval()
    device = next(model.parameters()).device
    causal = model.config.attention == "causal"
    gen = torch.Generator(device=device).manual_seed(seed)
    diff = None if causal else build_process(diffusion_config or DiffusionConfig(), model.config)
    nll, tokens = 0.0, 0
    for i in range(0, windows.shape[0], batch_size):
        ids = windows[i : i + batch_size].to(device)
        if causal:
            nll += float(next_token_nll(model, ids).sum())
            tokens += ids[:, 1:].numel()
        else:
            nll += float(diff.elbo_nll(model, ids, samples, generator=gen).sum())
            tokens += ids.numel()
    per = nll / max(tokens, 1)
    return PerplexityResult(
        math.exp(min(per, 50.0)),
        per,
        tokens,
        int(windows.shape[0]),
        "exact" if causal else "elbo",
        0 if causal else samples,
    )
