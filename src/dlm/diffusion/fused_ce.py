"""LM head + cross-entropy in row chunks, without materialising the (M, V) logits.

The masked-diffusion loss needs the head only at masked positions, and only as a weighted sum of
cross-entropies. Computing it chunk by chunk keeps each (chunk, V) block in cache and computes the
gradients in the same pass (the loss is linear in its per-row weights, so they are known up front).
Memory drops from O(M·V) to O(chunk·V) — what matters for 126k-token vocabularies (LLaDA) — and on
CPU it is faster than the unfused path (BENCHMARKS.md).
"""

from __future__ import annotations

import torch


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


def _chunk_logits(h_c: torch.Tensor, w: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    logits = (h_c @ w.t()).float()
    if mask_token_id >= 0:  # SUBS: the mask token is never a prediction (-1: no token excluded, e.g. AR)
        logits[:, mask_token_id] = float("-inf")
    return logits


def token_reweight(ce: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """MGDM's token-level reweighting (Ye et al., arXiv 2410.14157): alpha * (1 - exp(-CE))^gamma * CE, a focal
    loss that weighs hard tokens (high CE) up; differentiable."""
    return alpha * (-torch.expm1(-ce)).pow(gamma) * ce


def _token_reweight_grad(ce: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """d token_reweight / d CE = alpha * f^(gamma-1) * (f + gamma (1-f) CE), f = 1 - exp(-CE); at CE = 0 its
    limit (alpha when gamma = 0, else 0)."""
    f = -torch.expm1(-ce)
    safe = f.clamp_min(torch.finfo(f.dtype).tiny)
    d = alpha * safe.pow(gamma - 1) * (f + gamma * (1 - f) * ce)
    return torch.where(f > 0, d, torch.full_like(d, alpha if gamma == 0 else 0.0))


class _WeightedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, row_weights, mask_token_id: int, chunk: int, cd: torch.dtype, focal=None):
        hc, wc = h.to(cd), weight.to(cd)
        grad_h = torch.empty_like(h, dtype=torch.float32)
        grad_w = torch.zeros_like(weight, dtype=torch.float32)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], chunk):
            h_c, t_c, rw = hc[s : s + chunk], targets[s : s + chunk], row_weights[s : s + chunk].float()
            logits = _chunk_logits(h_c, wc, mask_token_id)
            lse = torch.logsumexp(logits, dim=-1)
            ce = lse - logits.gather(1, t_c[:, None]).squeeze(1)
            if focal is not None:  # the loss is still a weighted sum of per-row terms: chain rule per row
                total += (token_reweight(ce, *focal) * rw).sum()
                rw = rw * _token_reweight_grad(ce, *focal)
            else:
                total += (ce * rw).sum()
            g = torch.exp(logits - lse[:, None])  # softmax; the mask column is exp(-inf) = 0
            g[torch.arange(g.shape[0], device=g.device), t_c] -= 1.0
            g = (g * rw[:, None]).to(cd)
            grad_h[s : s + chunk] = (g @ wc).float()
            grad_w += (g.t() @ h_c).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (h.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        hd, wd = ctx.dtypes
        return (grad_h * grad_out).to(hd), (grad_w * grad_out).to(wd), None, None, None, None, None, None


def weighted_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    row_weights: torch.Tensor,
    mask_token_id: int | None,
    chunk: int = 64,
    focal: tuple[float, float] | None = None,
) -> torch.Tensor:
    """sum_i row_weights[i] * CE(hidden[i] @ weight.T, targets[i]), the mask token excluded unless it is None
    (scalar). With `focal` = (alpha, gamma) each CE is replaced by token_reweight(CE, alpha, gamma)."""
    if hidden.shape[0] == 0:
        return (hidden.sum() + weight.sum()) * 0.0
    mask = -1 if mask_token_id is None else int(mask_token_id)
    focal = None if focal is None else (float(focal[0]), float(focal[1]))
    return _WeightedCE.apply(hidden, weight, targets, row_weights, mask, int(chunk), _compute_dtype(hidden), focal)


@torch.no_grad()
def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, mask_token_id: int, chunk: int = 64
) -> torch.Tensor:
    """Per-row CE (M,) float32, computed chunk by chunk (no gradients)."""
    cd = _compute_dtype(hidden)
    hc, wc = hidden.to(cd), weight.to(cd)
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for s in range(0, hidden.shape[0], chunk):
        logits = _chunk_logits(hc[s : s + chunk], wc, mask_token_id)
        out[s : s + chunk] = torch.logsumexp(logits, -1) - logits.gather(1, targets[s : s + chunk, None]).squeeze(1)
    return out
