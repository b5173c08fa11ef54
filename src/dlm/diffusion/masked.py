"""The masked (absorbing-state) diffusion process: noising, ELBO and SFT losses, likelihood estimates.

The model is any callable (input_ids, attention_mask=...) -> logits (B, L, V). This module owns
everything about noise; the network knows nothing of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError, check_choice
from .fused_ce import chunked_cross_entropy, weighted_cross_entropy
from .schedules import get_schedule


@dataclass
class DiffusionConfig:
    process: str = "masked"
    schedule: str = "linear"  # linear | cosine | loglinear
    eps: float = 1e-3  # t is drawn from [eps, 1]
    antithetic: bool = True  # low-discrepancy t over the batch
    random_length_prob: float = 0.0  # LLaDA truncates 1% of batches to a random length

    def __post_init__(self) -> None:
        check_choice("diffusion.process", self.process, ("masked",))
        get_schedule(self.schedule)
        if not 0.0 < self.eps < 1.0:
            raise ConfigError("diffusion.eps", f"got {self.eps}; must be in (0, 1)")
        if not 0.0 <= self.random_length_prob <= 1.0:
            raise ConfigError("diffusion.random_length_prob", f"got {self.random_length_prob}; must be in [0, 1]")


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar to backpropagate
    num_tokens: int  # tokens the loss was normalised by
    num_masked: int


def _rand(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    dev = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=dev).to(device)


def align_logits(logits: torch.Tensor, shift: bool) -> torch.Tensor:
    """For shifted families (Dream), logits at i-1 predict token i; position 0 keeps its own."""
    if not shift:
        return logits
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def _ce_rows(logits_m: torch.Tensor, targets_m: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """Cross-entropy (float32) of (M, V) logits, the mask token excluded from the vocabulary (SUBS)."""
    logits_m = logits_m.float()
    never = torch.zeros(logits_m.shape[-1], dtype=torch.bool, device=logits_m.device)
    never[mask_token_id] = True
    return F.cross_entropy(logits_m.masked_fill(never, float("-inf")), targets_m, reduction="none")


def masked_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor, mask_token_id: int
) -> torch.Tensor:
    """Per-position cross-entropy (float32) at masked positions, 0 elsewhere. Shapes (B, L, V), (B, L)."""
    ce = torch.zeros(targets.shape, dtype=torch.float32, device=logits.device)
    return ce.masked_scatter(masked, _ce_rows(logits[masked], targets[masked], mask_token_id))


class MaskedDiffusion:
    """Forward process q(x_t | x_0) and the losses that train p(x_0)."""

    def __init__(self, config: DiffusionConfig, mask_token_id: int, *, shift_logits: bool = False):
        if mask_token_id is None:
            raise ConfigError("model.mask_token_id", "masked diffusion needs a mask token id; got None")
        self.config = config
        self.schedule = get_schedule(config.schedule, config.eps)
        self.mask_token_id = int(mask_token_id)
        self.shift_logits = shift_logits
        self.fused = True  # fused chunked head + cross-entropy for dlm Transformers (False: plain logits)

    # ---- time and noise ---------------------------------------------------------------------
    def sample_t(self, batch: int, generator=None, device="cpu", shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
        """t in [eps, 1]; antithetic: u_i = (u + i/B) mod 1.

        shard=(rank, world): this call holds rows rank::world of a global batch of batch*world rows (data
        parallel); t is drawn for the global batch and sliced, so every row gets the t it gets in one process."""
        eps = self.config.eps
        rank, world = shard
        n = batch * world
        if self.config.antithetic:
            u0 = _rand((1,), generator, device)
            u = (u0 + torch.arange(n, device=device) / n) % 1.0
        else:
            u = _rand((n,), generator, device)
        return (eps + (1.0 - eps) * u)[rank::world]

    def add_noise(self, x0, t, generator=None, maskable: torch.Tensor | None = None, shard: tuple[int, int] = (0, 1)):
        """Mask each maskable token with probability 1 - alpha(t). Returns (x_t, masked). `shard` as in
        sample_t: the uniforms are drawn for the global batch and this shard's rows kept."""
        p = self.schedule.mask_prob(t)[:, None]
        rank, world = shard
        u = _rand((x0.shape[0] * world, *x0.shape[1:]), generator, x0.device)[rank::world]
        masked = (u < p) & (x0 != self.mask_token_id)
        if maskable is not None:
            masked &= maskable
        xt = torch.where(masked, torch.full_like(x0, self.mask_token_id), x0)
        return xt, masked

    def _logits(self, model, xt, attention_mask):
        logits = model(xt, attention_mask=attention_mask)
        return align_logits(logits, self.shift_logits)

    def _masked_hidden(self, model, xt, masked, attention_mask):
        h = align_logits(model(xt, attention_mask=attention_mask, return_hidden=True), self.shift_logits)
        return h[masked]

    def masked_ce(self, model, xt, x0, masked, attention_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ce, row) for every masked position, in row-major order. dlm Transformers apply the LM head to
        the masked positions only, chunk by chunk; any other model gives full logits."""
        rows = masked.nonzero()[:, 0]
        weight = getattr(model, "head_weight", None)
        if weight is not None and not torch.is_grad_enabled():
            h = self._masked_hidden(model, xt, masked, attention_mask)
            return chunked_cross_entropy(h, weight, x0[masked], self.mask_token_id), rows
        if hasattr(model, "head"):
            logits_m = model.head(self._masked_hidden(model, xt, masked, attention_mask))
        else:
            logits_m = self._logits(model, xt, attention_mask)[masked]
        return _ce_rows(logits_m, x0[masked], self.mask_token_id), rows

    def weighted_masked_ce(self, model, xt, x0, masked, row_weight, attention_mask=None) -> tuple[torch.Tensor, int]:
        """sum over masked positions of row_weight[row] * CE, and the number of masked positions. With a dlm
        Transformer the head and the cross-entropy run fused, chunk by chunk (no (M, V) logits)."""
        weight = getattr(model, "head_weight", None)
        if weight is not None and self.fused:
            rows = masked.nonzero()[:, 0]
            h = self._masked_hidden(model, xt, masked, attention_mask)
            return weighted_cross_entropy(h, weight, x0[masked], row_weight[rows], self.mask_token_id), int(
                rows.numel()
            )
        ce, rows = self.masked_ce(model, xt, x0, masked, attention_mask)
        return (ce * row_weight[rows]).sum(), int(rows.numel())

    # ---- losses -----------------------------------------------------------------------------
    def weighted_loss(self, logits, x0, masked, t, num_tokens: int) -> torch.Tensor:
        """sum over masked positions of w(t_b) * CE, divided by num_tokens (full logits given)."""
        ce = masked_cross_entropy(logits, x0, masked, self.mask_token_id)
        w = self.schedule.weight(t.float())[:, None]
        return (ce * w).sum() / max(num_tokens, 1)

    def loss(self, model, input_ids, attention_mask=None, generator=None, shard=(0, 1)) -> LossOutput:
        """Pre-training ELBO loss on packed sequences (attention_mask marks real tokens, optional). With
        shard=(rank, world) (data parallel; see sample_t) the mean over ranks equals the one-process loss."""
        if (
            self.config.random_length_prob > 0
            and _rand((1,), generator, input_ids.device).item() < self.config.random_length_prob
        ):
            dev = generator.device if generator is not None else input_ids.device
            new_len = int(torch.randint(1, input_ids.shape[1] + 1, (1,), generator=generator, device=dev).item())
            input_ids = input_ids[:, :new_len]
            attention_mask = attention_mask[:, :new_len] if attention_mask is not None else None
        t = self.sample_t(input_ids.shape[0], generator, input_ids.device, shard)
        maskable = attention_mask.bool() if attention_mask is not None else None
        xt, masked = self.add_noise(input_ids, t, generator, maskable, shard)
        num_tokens = int(maskable.sum()) if maskable is not None else input_ids.numel()
        total, n_masked = self.weighted_masked_ce(
            model, xt, input_ids, masked, self.schedule.weight(t.float()), attention_mask
        )
        return LossOutput(total / max(num_tokens, 1), num_tokens, n_masked)

    def sft_loss(
        self, model, input_ids, prompt_lengths, attention_mask=None, generator=None, shard=(0, 1), answer_mask=None
    ) -> LossOutput:
        """SFT: prompt never masked; answer (with its EOS padding) masked; normalised per answer length per row.
        `answer_mask` (B, L) bool replaces `prompt_lengths` for rows holding several examples (packing)."""
        B, L = input_ids.shape
        if answer_mask is not None:
            answer = answer_mask.to(device=input_ids.device, dtype=torch.bool)
        else:
            answer = torch.arange(L, device=input_ids.device)[None, :] >= prompt_lengths[:, None]
        if attention_mask is not None and attention_mask.dim() == 2:
            answer &= attention_mask.bool()
        t = self.sample_t(B, generator, input_ids.device, shard)
        xt, masked = self.add_noise(input_ids, t, generator, answer, shard)
        answer_len = answer.sum(1).clamp(min=1).float()
        total, n_masked = self.weighted_masked_ce(
            model, xt, input_ids, masked, self.schedule.weight(t.float()) / answer_len, attention_mask
        )
        return LossOutput(total / B, int(answer.sum()), n_masked)

    # ---- likelihood -------------------------------------------------------------------------
    @torch.no_grad()
    def elbo_nll(
        self, model, input_ids, num_samples: int = 8, attention_mask=None, generator=None, maskable=None
    ) -> torch.Tensor:
        """Upper bound on -log p(x) per sequence (nats), Monte-Carlo over t, stratified in [eps, 1]. With
        `maskable` (B, L) bool only those positions are noised and scored: -log p(x_maskable | the rest), e.g.
        an SFT answer given its prompt."""
        if num_samples < 1:
            raise InputError("num_samples", f"got {num_samples}; must be >= 1")
        B = input_ids.shape[0]
        eps = self.config.eps
        if maskable is None:
            maskable = attention_mask.bool() if attention_mask is not None else None
        total = torch.zeros(B, dtype=torch.float64, device=input_ids.device)
        offset = _rand((1,), generator, input_ids.device)
        for k in range(num_samples):
            u = (offset + k / num_samples) % 1.0
            t = (eps + (1.0 - eps) * u).expand(B)
            xt, masked = self.add_noise(input_ids, t, generator, maskable)
            ce, rows = self.masked_ce(model, xt, input_ids, masked, attention_mask)
            total.index_add_(0, rows, (ce * self.schedule.weight(t.float())[rows]).double())
        return total * (1.0 - eps) / num_samples

    @torch.no_grad()
    def log_likelihood(
        self, model, prompt_ids, answer_ids, mc_samples: int = 64, batch_size: int = 16, generator=None
    ) -> float:
        """Monte-Carlo estimate (lower bound) of log p(answer | prompt), LLaDA's estimator:
        mask l ~ U{1..A} answer tokens, score masked CE scaled by A / l, average."""
        prompt = torch.as_tensor(prompt_ids, dtype=torch.long)
        answer = torch.as_tensor(answer_ids, dtype=torch.long)
        A = answer.numel()
        if A == 0:
            raise InputError("answer_ids", "must hold at least one token")
        if mc_samples < 1 or batch_size < 1:
            raise InputError("mc_samples", "mc_samples and batch_size must be >= 1")
        device = next(model.parameters()).device if hasattr(model, "parameters") else "cpu"
        seq = torch.cat([prompt, answer]).to(device)
        P = prompt.numel()
        total, done = 0.0, 0
        dev = generator.device if generator is not None else device
        while done < mc_samples:
            n = min(batch_size, mc_samples - done)
            x0 = seq[None].expand(n, -1).clone()
            n_mask = torch.randint(1, A + 1, (n,), generator=generator, device=dev).to(device)
            ranks = torch.rand((n, A), generator=generator, device=dev).to(device).argsort(1).argsort(1)
            masked = torch.zeros_like(x0, dtype=torch.bool)
            masked[:, P:] = ranks < n_mask[:, None]
            xt = torch.where(masked, torch.full_like(x0, self.mask_token_id), x0)
            ce, rows = self.masked_ce(model, xt, x0, masked)
            total += float((ce * A / n_mask.float()[rows]).sum())
            done += n
        return -total / mc_samples


def perplexity(nll_sum: float, num_tokens: int) -> float:
    return math.exp(nll_sum / max(num_tokens, 1))
