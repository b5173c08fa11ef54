"""Uniform-state discrete diffusion (D3PM uniform transitions; the continuous-time ELBO of UDLM / DUO).

Forward: each token stays itself with probability alpha(t), else becomes a token drawn uniformly from the
vocabulary (N tokens): q_t(z | x) = alpha δ(z, x) + (1 - alpha) / N. There is no mask token, so every position
is always a real token and any of them can change at any step: committed tokens get revised.

Loss (continuous-time ELBO, in the denoising-score-entropy form of SEDD / UDLM): with the forward rate
beta = -alpha'/alpha (jumps to each other token at beta/N), per position
    l(t) = beta/N * sum_{y != z} [ s_y - a_y log s_y + K(a_y) ],   K(a) = a (log a - 1),
where a_y = q_t(y | x) / q_t(z | x) is the true ratio and s_y = sum_x' p_theta(x' | z_t) q_t(y | x') / q_t(z | x')
the model's (x0-parameterisation). With r = 1 + alpha N / (1 - alpha):
    s_y = 1 + p_y (r - 1) + p_z (1/r - 1);  a_y = 1/r (z = x), else r at y = x and 1 elsewhere.
-log p(x) <= integral over t in [0, 1] of the summed l(t) (+ a prior term that is 0 when alpha(1) = 0); like
the masked process, the bound here integrates over [eps, 1]. A model that knows x exactly scores 0.
The network is time-agnostic (it infers the noise level from the canvas, as MDLM's masked models do).

Reverse step (t -> s on the grid 1 - i/steps of each block): z_s ~ q(z_s | z_t, x = p_theta), i.e.
    p(z_s = y) ∝ (alpha_{t|s} δ(y, z_t) + (1 - alpha_{t|s}) / N) (alpha_s p_y + (1 - alpha_s) / N),
drawn from each row's own generator (greedy, T = 0: p = one-hot argmax); the last step (s = 0) settles the block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError
from .base import LossOutput, NoiseProcess, ReverseProcess, StepContext, StepResult, rand, register_process
from .masked import align_logits
from .policies import top_k_top_p_filter


def _rows_integrand(logits: torch.Tensor, z, x, alpha, beta, want_grad: bool):
    """l(t) (float64) for a chunk of rows, and with want_grad its gradient w.r.t. the logits (float32)."""
    N = logits.shape[-1]
    p = torch.softmax(logits.float(), dim=-1)
    a = alpha.double()
    r = 1.0 + a * N / (1.0 - a).clamp_min(1e-12)
    c1, c2 = r - 1.0, 1.0 / r - 1.0
    p_z = p.gather(-1, z[:, None]).squeeze(-1).double()
    s = (p * c1.float()[:, None] + (1.0 + p_z * c2).float()[:, None]).clamp_min(1e-30)  # s_y for y != z
    log_s = torch.log(s)
    at_z = F.one_hot(z, N).bool()
    sum_log = log_s.masked_fill(at_z, 0.0).sum(-1).double()  # over y != z
    same = z == x
    log_s_x = log_s.gather(-1, x[:, None]).squeeze(-1).double()
    sum_s = (N - 1) + (1.0 - p_z) * c1 + (N - 1) * p_z * c2
    weighted_log = torch.where(same, sum_log / r, c1 * log_s_x + sum_log)
    inv_r = 1.0 / r
    const = torch.where(same, (N - 1) * inv_r * (torch.log(inv_r) - 1.0), r * (torch.log(r) - 1.0) - (N - 2))
    scale = beta.double() / N
    value = scale * (sum_s - weighted_log + const)
    if not want_grad:
        return value, None
    # d l / d p_y = scale * c1 (1 - a_y / s_y) for y != z;  d l / d p_z = scale * c2 ((N-1) - sum_{y != z} a_y / s_y)
    a_y = torch.where(same, inv_r, torch.ones_like(r)).float()[:, None].expand_as(s).clone()
    a_y.scatter_(-1, x[:, None], torch.where(same, inv_r, r).float()[:, None])
    w = (a_y / s).masked_fill_(at_z, 0.0)
    g = c1.float()[:, None] * (1.0 - w)
    g_z = (N - 1) * c2 - c2 * w.sum(-1).double()
    g.scatter_(-1, z[:, None], g_z.float()[:, None])
    grad = p * (g - (p * g).sum(-1, keepdim=True)) * scale.float()[:, None]  # through the softmax
    return value, grad


class _ScoreEntropy(torch.autograd.Function):
    """The integrand for all rows, chunk by chunk, with its gradient computed in the same pass (the (M, N)
    intermediates of one chunk at a time, as a fused cross-entropy does)."""

    @staticmethod
    def forward(ctx, logits, z, x, alpha, beta, chunk: int):
        want = logits.requires_grad
        out = torch.empty(logits.shape[0], dtype=torch.float64, device=logits.device)
        grad = torch.empty(logits.shape, dtype=torch.float32, device=logits.device) if want else None
        for i in range(0, logits.shape[0], chunk):
            sl = slice(i, i + chunk)
            out[sl], g = _rows_integrand(logits[sl], z[sl], x[sl], alpha[sl], beta[sl], want)
            if want:
                grad[sl] = g
        if want:
            ctx.save_for_backward(grad)
            ctx.logits_dtype = logits.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return (grad * grad_out.float()[:, None]).to(ctx.logits_dtype), None, None, None, None, None


def score_entropy(logits: torch.Tensor, z: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor,
                  beta: torch.Tensor, chunk: int = 256) -> torch.Tensor:  # fmt: skip
    """Per-position ELBO integrand l(t) (float64, nats per unit time) for logits (M, N), noisy tokens z (M,),
    clean tokens x (M,), alpha(t) and beta(t) = -alpha'/alpha (M,); differentiable w.r.t. the logits."""
    return _ScoreEntropy.apply(logits, z, x, alpha.float(), beta.float(), chunk)


@register_process
class UniformDiffusion(NoiseProcess):
    name = "uniform"

    def __init__(self, config, mask_token_id=None, *, shift_logits: bool = False, vocab_size: int = 0):
        if vocab_size < 2:
            raise InputError("model.vocab_size", f"uniform diffusion needs the vocabulary size; got {vocab_size}")
        if config.token_reweighting is not None:
            raise ConfigError("diffusion.token_reweighting", "reweights masked-token CE; the uniform process has none")
        super().__init__(config, vocab_size=vocab_size, mask_token_id=mask_token_id, shift_logits=shift_logits)

    def reverse(self, config) -> "UniformReverse":
        return UniformReverse(self, config)

    def add_noise(self, x0, t, generator=None, maskable=None, shard=(0, 1)):
        """Replace each maskable token, with probability 1 - alpha(t), by a uniformly drawn token. Returns
        (x_t, resampled)."""
        p = self.schedule.mask_prob(t)[:, None]
        rank, world = shard
        shape = (x0.shape[0] * world, *x0.shape[1:])
        u = rand(shape, generator, x0.device)[rank::world]
        draws = (rand(shape, generator, x0.device)[rank::world] * self.vocab_size).long().clamp(max=self.vocab_size - 1)
        noised = u < p
        if maskable is not None:
            noised &= maskable
        return torch.where(noised, draws, x0), noised

    def _integrand(self, model, xt, x0, positions, t, attention_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(l(t) at every selected position (M,), row of each)."""
        logits = align_logits(model(xt, attention_mask=attention_mask), self.shift_logits)
        rows = positions.nonzero()[:, 0]
        t_rows = t.float()[rows]
        alpha = self.schedule.alpha(t_rows)
        beta = -self.schedule.alpha_prime(t_rows) / alpha.clamp_min(1e-12)
        return score_entropy(logits[positions], xt[positions], x0[positions], alpha, beta), rows

    def loss(self, model, input_ids, attention_mask=None, generator=None, shard=(0, 1)) -> LossOutput:
        t = self.sample_t(input_ids.shape[0], generator, input_ids.device, shard)
        scored = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        xt, noised = self.add_noise(input_ids, t, generator, scored, shard)
        num_tokens = int(scored.sum())
        ell, _ = self._integrand(model, xt, input_ids, scored, t, attention_mask)
        return LossOutput((ell.sum() / max(num_tokens, 1)).float(), num_tokens, int(noised.sum()))

    def sft_loss(self, model, input_ids, prompt_lengths, attention_mask=None, generator=None, shard=(0, 1),
                 answer_mask=None) -> LossOutput:  # fmt: skip
        B = input_ids.shape[0]
        answer = self.answer_positions(input_ids, prompt_lengths, attention_mask, answer_mask)
        t = self.sample_t(B, generator, input_ids.device, shard)
        xt, noised = self.add_noise(input_ids, t, generator, answer, shard)
        ell, rows = self._integrand(model, xt, input_ids, answer, t, attention_mask)
        per_row = torch.zeros(B, dtype=torch.float64, device=input_ids.device).index_add_(0, rows, ell)
        loss = (per_row / answer.sum(1).clamp(min=1)).sum() / B
        return LossOutput(loss.float(), int(answer.sum()), int(noised.sum()))

    @torch.no_grad()
    def elbo_nll(self, model, input_ids, num_samples: int = 8, attention_mask=None, generator=None, maskable=None):
        """Upper bound on -log p(x) per sequence (nats), Monte-Carlo over t stratified in [eps, 1]; `maskable`
        limits noise and scoring to those positions (-log p(x_maskable | the rest))."""
        if num_samples < 1:
            raise InputError("num_samples", f"got {num_samples}; must be >= 1")
        B, eps = input_ids.shape[0], self.config.eps
        if maskable is None:
            maskable = (
                attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
            )
        total = torch.zeros(B, dtype=torch.float64, device=input_ids.device)
        offset = rand((1,), generator, input_ids.device)
        for k in range(num_samples):
            t = (eps + (1.0 - eps) * ((offset + k / num_samples) % 1.0)).expand(B)
            xt, _ = self.add_noise(input_ids, t, generator, maskable)
            ell, rows = self._integrand(model, xt, input_ids, maskable, t, attention_mask)
            total.index_add_(0, rows, ell)
        return total * (1.0 - eps) / num_samples


class UniformReverse(ReverseProcess):
    """Ancestral sampling of the uniform process: every position of the active block is redrawn from the
    posterior at each step (so tokens are revised), and the block settles at its last step (s = 0)."""

    def init_canvas(self, length, generator):
        N = self.process.vocab_size
        return torch.randint(0, N, (length,), generator=generator, device=generator.device).tolist()

    def step(self, ctx: StepContext) -> StepResult:
        cfg, sched, N = self.config, self.process.schedule, self.process.vocab_size
        logits = ctx.logits
        if cfg.temperature == 0:
            p = F.one_hot(logits.argmax(-1), N).float()
        else:
            p = torch.softmax(top_k_top_p_filter(logits / cfg.temperature, cfg.top_k, cfg.top_p), dim=-1)
        t = 1.0 - ctx.step.float() / ctx.steps
        s = (1.0 - (ctx.step + 1).float() / ctx.steps).clamp(min=0.0)
        a_t, a_s = sched.alpha(t), sched.alpha(s)
        a_ts = (a_t / a_s.clamp_min(1e-12))[:, None, None]
        a_s = a_s[:, None, None]
        keep = F.one_hot(ctx.tokens, N).float()
        post = (a_ts * keep + (1.0 - a_ts) / N) * (a_s * p + (1.0 - a_s) / N)
        post = post / post.sum(-1, keepdim=True)
        tokens = ctx.tokens.clone()
        for i, g in enumerate(ctx.generators):
            w = ctx.candidates[i]
            if bool(w.any()):
                draw = torch.multinomial(post[i, w].to(g.device), 1, True, generator=g).squeeze(-1)
                tokens[i, w] = draw.to(tokens.device)
        noisy = ctx.candidates & ~ctx.last_step[:, None]
        changed = ctx.candidates & ((tokens != ctx.tokens) | ctx.last_step[:, None])
        return StepResult(tokens=tokens, noisy=noisy, changed=changed)
