"""Continuous embedding diffusion (Diffusion-LM, arXiv 2205.14217; CDCD, 2211.15089; SED, 2211.04236).

Forward: a token's point in embedding space is e(w), the network's own input embedding L2-normalised and scaled
to norm sqrt(d) (a component has unit scale; CDCD normalises so the embeddings cannot grow away from the noise);
the noisy latent is z = e(x) + sigma(t) eps, with sigma(t) = sigma_min (sigma_max / sigma_min)^t (variance
exploding, log-uniform in t). The network (`model.noise_conditioning`) reads z / sqrt(1 + sigma^2), its noise
level (log sigma / 4 per position; a clean position, the prompt's, reads its clean embedding at level
log(1e-3) / 4) and, with self-conditioning, its own previous estimate of e(x).

Loss (CDCD's score interpolation): the cross-entropy of the clean token from the logits at every noised
position; the x0 estimate is then x0_hat = sum_w p(w | z) e(w). Diffusion-LM's x0-prediction is this estimate;
its rounding is the argmax at the end.
Time warping (CDCD): training draws t from a learned density proportional to d loss / d t: the loss is tracked
in `time_warp` bins of t (an exponential moving average), made monotone, and its normalised curve inverted
(uniform u -> t), mixed with 10 % uniform so every level keeps some draws. Levels where the loss changes fastest
get the most draws; levels where it is flat (all clean, all noise) few.
Self-conditioning (SED, after Chen et al. 2208.04202): with probability `self_condition`, a first pass without
gradient estimates x0_hat, which the second pass gets as input (zeros otherwise, and at sampling's first step).

Likelihood bound (VDM, Kingma et al. 2107.00630, written for variance exploding): with decoder p(x | z_min) the
network's softmax at sigma_min,
    -log p(x) <= -log p(x | z_min) + int_{sigma_min}^{sigma_max} sigma^-3 |e(x) - x0_hat(z_sigma)|^2 dsigma
                 + |e(x)|^2 / (2 sigma_max^2)                      (the prior N(0, sigma_max^2 I)),
the integral estimated with log sigma stratified uniform (dsigma = sigma dlog sigma).

Reverse step (t -> s on each block's grid 1 - i/steps): p from the logits (temperature, top-k/top-p); x0_hat its
expected embedding, or with `clamp` (Diffusion-LM's clamping trick) the embedding of its argmax. Temperature 0:
DDIM, z_s = x0_hat + (sigma_s / sigma_t)(z_t - x0_hat); else ancestral, z_s ~ N(x0_hat + r^2 (z_t - x0_hat),
sigma_s^2 (1 - r^2)), r = sigma_s / sigma_t. Positions stay noisy until the block's last step, which rounds each to
the argmax of its logits (always a vocabulary token). The latent lives here, per row and slot; the sampler
loop only asks `forward_inputs` what the network reads (no cache: each step changes every latent).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError
from .base import LossOutput, NoiseProcess, ReverseProcess, StepContext, StepResult, rand, register_process
from .policies import top_k_top_p_filter

CLEAN_SIGMA = 1e-3  # the level a clean (prompt) position reads


def noise_input(sigma: torch.Tensor) -> torch.Tensor:
    """The network's noise-level input for noise scale sigma (0 = clean)."""
    return torch.log(sigma.float().clamp_min(CLEAN_SIGMA)) / 4.0


def network_input(z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """What the network (and a guidance classifier) reads of latents z (..., d) at noise scales sigma (...):
    z / sqrt(1 + sigma^2), unit scale at every level."""
    return z / torch.sqrt(1.0 + sigma.float() ** 2)[..., None]


def embedding_table(model) -> torch.Tensor:
    """(V, d): the token points e(w) of the network's input embedding (unit rows times sqrt(d))."""
    w = model.embed_tokens.weight
    return F.normalize(w.float(), dim=-1) * math.sqrt(w.shape[-1])


@register_process
class ContinuousDiffusion(NoiseProcess):
    name = "continuous"
    guide = None  # plug-and-play control: a dlm.diffusion.control.Guidance nudges the latents at each step

    def __init__(self, config, mask_token_id=None, *, shift_logits: bool = False, vocab_size: int = 0):
        for field in ("token_reweighting", "train_t"):
            if getattr(config, field) is not None:
                raise ConfigError(f"diffusion.{field}", "the continuous process does not use it; set it to null")
        if shift_logits:
            raise ConfigError("diffusion.shift_logits", "the continuous process predicts each position's own token")
        super().__init__(config, vocab_size=vocab_size, mask_token_id=mask_token_id, shift_logits=False)
        c = config
        self.sigma_min, self.sigma_max = float(c.sigma_range[0]), float(c.sigma_range[1])
        bins = int(c.time_warp)
        self.warp_loss = torch.zeros(bins, dtype=torch.float64)  # EMA of the loss per bin of t
        self.warp_seen = torch.zeros(bins, dtype=torch.bool)

    @classmethod
    def resolve(cls, config, model_config):
        from dataclasses import replace

        config, model_config = super().resolve(config, model_config)
        if model_config is not None and not getattr(model_config, "noise_conditioning", False):
            model_config = replace(model_config, noise_conditioning=True)
        return config, model_config

    def reverse(self, config) -> "ContinuousReverse":
        return ContinuousReverse(self, config)

    # ---- noise levels ---------------------------------------------------------------------
    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t.double()

    def state_dict(self) -> dict:
        return {"warp_loss": self.warp_loss.tolist(), "warp_seen": self.warp_seen.tolist()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.warp_loss = torch.tensor(state["warp_loss"], dtype=torch.float64)
            self.warp_seen = torch.tensor(state["warp_seen"], dtype=torch.bool)

    def warp_cdf(self) -> torch.Tensor | None:
        """(bins + 1,) the learned CDF of t at the bin edges (None until every bin has a loss): each bin's mass is
        how much the (monotone) loss curve rises into it, mixed with 10 % uniform."""
        n = len(self.warp_loss)
        if not n or not bool(self.warp_seen.all()):
            return None
        curve = torch.cummax(self.warp_loss, 0).values
        rise = torch.diff(curve, prepend=curve[:1])
        uniform = torch.full((n,), 1.0 / n, dtype=torch.float64)
        total = float(rise.sum())
        density = uniform if total <= 0 else 0.9 * rise / total + 0.1 * uniform
        return torch.cat([torch.zeros(1, dtype=torch.float64), density.cumsum(0)]).clamp(max=1.0)

    def warp(self, u: torch.Tensor) -> torch.Tensor:
        """Uniform u in [0, 1) -> t through the inverse learned CDF (identity while the CDF is not learned)."""
        cdf = self.warp_cdf()
        if cdf is None:
            return u
        n = len(cdf) - 1
        k = (torch.searchsorted(cdf.to(u.device), u.double().contiguous(), right=True) - 1).clamp(0, n - 1)
        lo, hi = cdf.to(u.device)[k], cdf.to(u.device)[k + 1]
        frac = ((u.double() - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
        return ((k.double() + frac) / n).to(u.dtype)

    def observe(self, t: torch.Tensor, per_row_loss: torch.Tensor) -> None:
        """Fold a batch's per-row losses into the warp's bins (EMA 0.99 once a bin has a value)."""
        n = len(self.warp_loss)
        if not n:
            return
        k = (t.detach().double().cpu() * n).long().clamp(0, n - 1)
        loss = per_row_loss.detach().double().cpu()
        for b in k.unique().tolist():
            v = float(loss[k == b].mean())
            self.warp_loss[b] = 0.99 * self.warp_loss[b] + 0.01 * v if self.warp_seen[b] else v
            self.warp_seen[b] = True

    def draw_t(self, batch: int, generator, device, shard) -> torch.Tensor:
        if shard[1] > 1 and len(self.warp_loss):
            raise ConfigError("diffusion.time_warp", "time warping learns from one process's losses: 0 under torchrun")
        return self.warp(self.sample_t(batch, generator, device, shard))

    # ---- forward corruption and the network's view --------------------------------------
    def add_noise(self, x0, t, generator=None, maskable=None, shard=(0, 1), table=None):
        """(z, sigma per position): z = e(x0) + sigma(t) eps at maskable positions (all real ones by default), the
        clean e(x0) elsewhere (sigma 0). `table` is `embedding_table(model)`: the embeddings are the network's."""
        if table is None:
            raise InputError("table", "continuous noise needs the network's embedding table (embedding_table(model))")
        rank, world = shard
        shape = (x0.shape[0] * world, x0.shape[1], table.shape[1])
        eps = torch.randn(shape, generator=generator, device=generator.device if generator is not None else x0.device)
        eps = eps.to(x0.device)[rank::world]
        noised = torch.ones_like(x0, dtype=torch.bool) if maskable is None else maskable.bool()
        sigma = torch.where(noised, self.sigma(t)[:, None].float(), 0.0)
        return table[x0] + sigma[..., None] * eps, sigma

    def denoise(self, model, z, sigma, attention_mask=None, self_condition=None, return_hidden=False):
        """The network's output for latents z (B, L, d) at noise scales sigma (B, L)."""
        return model(inputs_embeds=network_input(z, sigma), attention_mask=attention_mask,
                     noise_level=noise_input(sigma), self_condition=self_condition,
                     return_hidden=return_hidden)  # fmt: skip

    def estimate(self, model, z, sigma, attention_mask, table, generator=None) -> torch.Tensor | None:
        """Self-conditioning's first pass: x0_hat (B, L, d) without gradient for the rows drawn to get it
        (zeros for the others); None when self-conditioning is off."""
        p = self.config.self_condition
        if not p:
            return None
        use = rand((z.shape[0],), generator, z.device) < p
        with torch.no_grad():
            probs = torch.softmax(self.denoise(model, z, sigma, attention_mask).float(), dim=-1)
            x0_hat = probs @ table.detach()
        return torch.where(use[:, None, None], x0_hat, 0.0)

    def _ce(self, model, x0, noised, t, attention_mask, generator, shard=(0, 1), table=None, self_condition=True):
        """(per-position CE at the noised positions (B, L), zeros elsewhere); with `self_condition`, the
        training's self-conditioning first pass (`estimate`) feeds it."""
        table = embedding_table(model) if table is None else table
        z, sigma = self.add_noise(x0, t, generator, noised, shard, table)
        sc = self.estimate(model, z, sigma, attention_mask, table, generator) if self_condition else None
        logits = self.denoise(model, z, sigma, attention_mask, sc)
        ce = F.cross_entropy(logits.float().flatten(0, 1), x0.flatten(), reduction="none").view(x0.shape)
        return ce * noised

    # ---- losses -----------------------------------------------------------------------------
    def loss(self, model, input_ids, attention_mask=None, generator=None, shard=(0, 1)) -> LossOutput:
        scored = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        return self._scored_loss(model, input_ids, scored, attention_mask, generator, shard, per_row=False)

    def sft_loss(self, model, input_ids, prompt_lengths, attention_mask=None, generator=None, shard=(0, 1),
                 answer_mask=None) -> LossOutput:  # fmt: skip
        answer = self.answer_positions(input_ids, prompt_lengths, attention_mask, answer_mask)
        return self._scored_loss(model, input_ids, answer, attention_mask, generator, shard, per_row=True)

    def _scored_loss(self, model, x0, scored, attention_mask, generator, shard, per_row: bool) -> LossOutput:
        B = x0.shape[0]
        t = self.draw_t(B, generator, x0.device, shard)
        ce = self._ce(model, x0, scored, t, attention_mask, generator, shard)
        counts = scored.sum(1).clamp(min=1)
        row_mean = ce.sum(1) / counts
        if torch.is_grad_enabled():
            self.observe(t, row_mean)
        num = int(scored.sum())
        loss = row_mean.sum() / B if per_row else ce.sum() / max(num, 1)
        return LossOutput(loss, num, num)

    @torch.no_grad()
    def elbo_nll(self, model, input_ids, num_samples: int = 8, attention_mask=None, generator=None, maskable=None):
        """Upper bound on -log p(x_maskable | the rest) per sequence (nats): decoder term at sigma_min, the
        diffusion integral over log sigma (stratified, `num_samples` levels) and the prior term."""
        if num_samples < 1:
            raise InputError("num_samples", f"got {num_samples}; must be >= 1")
        if maskable is None:
            maskable = (
                attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
            )
        B, table = input_ids.shape[0], embedding_table(model)
        clean = table[input_ids]
        ones = torch.ones(B, device=input_ids.device)
        # decoder: -log p(x | z at sigma_min)
        ce = self._ce(model, input_ids, maskable, 0.0 * ones, attention_mask, generator, table=table,
                      self_condition=False)
        total = ce.sum(1).double()
        span = math.log(self.sigma_max / self.sigma_min)
        offset = rand((1,), generator, input_ids.device)
        for k in range(num_samples):
            t = ((offset + k / num_samples) % 1.0).expand(B)
            z, sigma = self.add_noise(input_ids, t, generator, maskable, table=table)
            probs = torch.softmax(self.denoise(model, z, sigma, attention_mask).float(), dim=-1)
            err = ((probs @ table - clean) ** 2).sum(-1) * maskable
            s = self.sigma(t).float()[:, None]
            total += (err / s**2).sum(1).double() * span / num_samples  # sigma^-3 dsigma = sigma^-2 dlog sigma
        prior = (clean**2).sum(-1) * maskable / (2 * self.sigma_max**2)
        return total + prior.sum(1).double()


class ContinuousReverse(ReverseProcess):
    """The reverse SDE/ODE on the latents of the generated region; rounding at each block's last step."""

    feeds_inputs = True

    def __init__(self, process, config):
        super().__init__(process, config)
        self.latent: dict[int, torch.Tensor] = {}  # handle -> (L, d) latents of its slots
        self.estimate: dict[int, torch.Tensor] = {}  # handle -> (L, d) last x0_hat (self-conditioning)
        self.generated: dict[int, torch.Tensor] = {}  # handle -> (L,) bool: the slots that hold a latent
        self.length, self.table = 0, None

    def init_canvas(self, length, generator):
        return [0] * length  # placeholder ids: the network reads the latents of these slots, never these ids

    def reset(self, batch, length, device):
        self.latent, self.estimate, self.generated, self.length = {}, {}, {}, length

    def extend(self, batch, length, shift):
        pad = lambda v: F.pad(v, (0, 0, shift, 0))  # noqa: E731
        self.latent = {h: pad(v) for h, v in self.latent.items()}
        self.estimate = {h: pad(v) for h, v in self.estimate.items()}
        self.generated = {h: F.pad(v, (shift, 0)) for h, v in self.generated.items()}
        self.length = length

    def _sigma_t(self, step, steps) -> torch.Tensor:
        return self.process.sigma(1.0 - step.double() / steps).float()

    def forward_inputs(self, model, tokens, noisy, region, rows, step, steps, generators) -> dict:
        """What the network reads this step: the latents of noisy slots (the active block's at its level, later
        blocks' at sigma_max), clean embeddings elsewhere. A row's latents are drawn (sigma_max N(0, I), from its
        own generator, for its noisy slots in order: its left padding changes nothing) the first time it is seen."""
        p = self.process
        if self.table is None:
            if not getattr(getattr(model, "config", None), "noise_conditioning", False):
                raise ConfigError("model.noise_conditioning", "the continuous process needs a network that reads "
                                  "noise levels (one trained with diffusion.process: continuous)")  # fmt: skip
            self.table = embedding_table(model).detach()
        d, dev = self.table.shape[1], tokens.device
        live = set(rows.tolist())
        for h in [h for h in self.latent if h not in live]:  # rows that finished or left
            self.latent.pop(h)
            self.estimate.pop(h, None)
            self.generated.pop(h, None)
        for i, h in enumerate(rows.tolist()):
            if h not in self.latent:
                g = generators[i]
                eps = torch.randn(int(noisy[i].sum()), d, generator=g, device=g.device).to(dev)
                self.latent[h] = torch.zeros(tokens.shape[1], d, device=dev)
                self.latent[h][noisy[i]] = eps * p.sigma_max
                self.generated[h] = noisy[i].clone()
                self.estimate[h] = torch.zeros(tokens.shape[1], d, device=dev)
        z = torch.stack([self.latent[h] for h in rows.tolist()])
        sigma = torch.where(region, self._sigma_t(step, steps)[:, None], p.sigma_max) * noisy
        z = torch.where(noisy[..., None], z, self.table[tokens])
        if p.guide is not None:  # classifier guidance (dlm.diffusion.control): moves the active block's latents
            z = p.guide.apply(self, z, sigma, noisy & region, rows)
        sc = torch.stack([self.estimate[h] for h in rows.tolist()]) if p.config.self_condition else None
        return {"inputs_embeds": network_input(z, sigma), "noise_level": noise_input(sigma),
                "self_condition": sc}  # fmt: skip

    def step(self, ctx: StepContext) -> StepResult:
        cfg, table = self.config, self.table
        logits = ctx.logits
        if cfg.temperature == 0:
            probs = torch.softmax(logits, dim=-1)
        else:
            probs = torch.softmax(top_k_top_p_filter(logits / cfg.temperature, cfg.top_k, cfg.top_p), dim=-1)
        top = logits.argmax(-1)
        x0_hat = table[top] if self.process.config.clamp else probs @ table
        sig_t = self._sigma_t(ctx.step, ctx.steps)[:, None, None]
        sig_s = self._sigma_t(ctx.step + 1, ctx.steps)[:, None, None]
        for i, h in enumerate(ctx.rows.tolist()):
            w = ctx.candidates[i]
            if not bool(w.any()):
                continue
            slots = ctx.positions[i, w]
            z_t, xh = self.latent[h][slots], x0_hat[i, w]
            r = sig_s[i] / sig_t[i]
            if cfg.temperature == 0:
                z_s = xh + r * (z_t - xh)
            else:
                g = ctx.generators[i]
                eps = torch.randn(z_t.shape, generator=g, device=g.device).to(z_t.device)
                z_s = xh + r**2 * (z_t - xh) + sig_s[i] * torch.sqrt(1.0 - r**2) * eps
            self.latent[h][slots] = z_s
            self.estimate[h][slots] = (probs[i, w] @ table)
        last = ctx.last_step[:, None]
        noisy = ctx.candidates & ~last
        return StepResult(tokens=torch.where(ctx.candidates, top, ctx.tokens), noisy=noisy, changed=ctx.candidates)
