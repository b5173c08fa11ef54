"""The masked (absorbing-state) diffusion process: noising, ELBO and SFT losses, likelihood estimates.

The model is any callable (input_ids, attention_mask=...) -> logits (B, L, V). This module owns
everything about noise; the network knows nothing of it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError, check_choice
from ..model.masks import build_mask
from .base import DiffusionConfig, LossOutput, NoiseProcess, ReverseProcess, StepContext, StepResult, rand
from .base import register_process
from .fused_ce import chunked_cross_entropy, token_reweight, weighted_cross_entropy
from .policies import StepInputs, get_policy, top_k_top_p_filter


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


def suffix_uniforms(u: torch.Tensor, units: torch.Tensor, maskable: torch.Tensor | None = None) -> torch.Tensor:
    """Uniforms that mask suffixes: for the k-th of the n maskable slots of a unit (counted from 0, left to right),
    (n - 1 - k + v) / n, with v the unit's first slot's draw in `u` (B, L). Then `u' < p` (p constant over the
    unit) masks the last ⌊n·p + 1 - v⌋ (at most n) maskable slots: a suffix, and each slot k is masked with
    probability clamp(n·p - (n - 1 - k), 0, 1), whose sum over the unit is n·p, as independent masking's."""
    B, L = u.shape
    m = torch.ones_like(u, dtype=torch.long) if maskable is None else maskable.long()
    slots = torch.arange(L, device=u.device).expand(B, L)
    n_units = int(units.max()) + 1
    count = m.new_zeros(B, n_units).scatter_add(1, units, m)
    before = m.cumsum(1) - m  # maskable slots before each slot in its row
    start = slots.new_full((B, n_units), L).scatter_reduce(1, units, slots, "amin")  # each unit's first slot
    k = before - before.gather(1, start.clamp(max=L - 1)).gather(1, units)
    n = count.gather(1, units).clamp(min=1)
    v = u.gather(1, start.clamp(max=L - 1)).gather(1, units)
    return (n - 1 - k + v) / n


@register_process
class MaskedDiffusion(NoiseProcess):
    """Absorbing-state diffusion: forward process q(x_t | x_0), the losses that train p(x_0), the likelihood
    bound, and (`reverse`) the reverse transition with its unmask policies and commit schedules."""

    name = "masked"

    def __init__(self, config: DiffusionConfig, mask_token_id: int, *, shift_logits: bool = False, vocab_size=0):
        if mask_token_id is None:
            raise ConfigError(
                "model.mask_token_id",
                "masked diffusion needs a mask token id; got None (a checkpoint whose vocabulary has no mask token: "
                "name an unused token of it with tokenizer.mask_token)",
            )
        super().__init__(config, vocab_size=vocab_size, mask_token_id=mask_token_id, shift_logits=shift_logits)

    def reverse(self, config) -> "MaskedReverse":
        return MaskedReverse(self, config)

    # ---- noise ------------------------------------------------------------------------------
    def add_noise(self, x0, t, generator=None, maskable: torch.Tensor | None = None, shard: tuple[int, int] = (0, 1),
                  units: torch.Tensor | None = None):  # fmt: skip
        """Mask each maskable token with probability 1 - alpha(t) (`mask_prob`); t is (B,) or (B, L). Returns (x_t,
        masked). `shard` as in sample_t: the uniforms are drawn for the global batch and this shard's rows kept.
        `units` ((B|1, L) ids, e.g. `noise_units`): trajectory-ordered masking instead (d3LLM's pseudo-trajectory
        for a left-to-right teacher): inside each unit the maskable tokens are masked from the last one back, so a
        unit's masked set is always a suffix of them, of expected size mask_prob × their count (see
        `suffix_uniforms`): the states a left-to-right decoder of the unit passes through."""
        p = self.mask_prob(x0, t, maskable)
        rank, world = shard
        u = rand((x0.shape[0] * world, *x0.shape[1:]), generator, x0.device)[rank::world]
        if units is not None:
            u = suffix_uniforms(u, units.expand_as(x0), maskable)
        masked = (u < p) & (x0 != self.mask_token_id)
        if maskable is not None:
            masked &= maskable
        xt = torch.where(masked, torch.full_like(x0, self.mask_token_id), x0)
        return xt, masked

    def noise_units(self, model, input_ids, attention_mask=None) -> torch.Tensor:
        """(B|1, L) ids of the spans that trajectory-ordered masking orders (`add_noise(units=...)`): the row, or
        each packed example of a packed view."""
        segments = getattr(model, "segment_ids", None)
        return segments if segments is not None else torch.zeros_like(input_ids[:1])

    def mask_prob(self, x0, t, maskable=None) -> torch.Tensor:
        """(B, 1) or (B, L): the probability 1 - alpha(t) that a token is masked at level t, one level per row or
        (B, L) per position (the block process). A process whose schedule depends on the tokens (the spindle
        process) computes it per token of `x0`."""
        p = self.schedule.mask_prob(t)
        return p[:, None] if p.dim() == 1 else p

    def loss_weight(self, x0, t, maskable=None) -> torch.Tensor:
        """The ELBO weight w(t) = -alpha'(t) / (1 - alpha(t)) of each masked token's cross-entropy in the training
        losses: (B,) per row, or (B, L) per position (per block, or per token for the spindle process)."""
        return self.schedule.weight(t.float())

    def training_t(self, model, input_ids, attention_mask=None, generator=None, shard=(0, 1)) -> torch.Tensor:
        """A training batch's noise levels: (B,), one per row. A process whose levels vary along a row (the block
        process: one per block) returns (B, L); the losses below take either."""
        return self.sample_t(input_ids.shape[0], generator, input_ids.device, shard)

    def denoise(self, model, xt, x0, attention_mask=None, return_hidden=False) -> torch.Tensor:
        """The network's (B, L, ·) output for the noisy canvas `xt`, aligned so that position i predicts token i:
        logits, or final hidden states with `return_hidden`. `x0` (the clean sequence) is there for processes
        whose network also sees it (the block process's two streams); this one does not."""
        opened = self.anneal_open(xt.shape[1], xt.device)
        if opened is not None:  # annealing from causal: the network's own mask, narrowed
            if getattr(model, "segment_ids", None) is not None or getattr(model, "config", None) is None:
                raise ConfigError("diffusion.anneal_steps", "annealing needs a dlm network without data.pack")
            key_mask = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
            cfg = model.config
            own = build_mask(cfg.attention, xt.shape[1], key_mask=key_mask, block_size=cfg.block_size, device=xt.device)
            attention_mask = opened[None, None] if own is None else own & opened
        return align_logits(model(xt, attention_mask=attention_mask, return_hidden=return_hidden), self.shift_logits)

    def _logits(self, model, xt, x0, attention_mask):
        return self.denoise(model, xt, x0, attention_mask)

    def _masked_hidden(self, model, xt, x0, masked, attention_mask):
        return self.denoise(model, xt, x0, attention_mask, return_hidden=True)[masked]

    def masked_ce(self, model, xt, x0, masked, attention_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ce, row) for every masked position, in row-major order. dlm Transformers apply the LM head to
        the masked positions only, chunk by chunk; any other model gives full logits."""
        rows = masked.nonzero()[:, 0]
        weight = getattr(model, "head_weight", None)
        if weight is not None and not torch.is_grad_enabled():
            h = self._masked_hidden(model, xt, x0, masked, attention_mask)
            return chunked_cross_entropy(h, weight, x0[masked], self.mask_token_id), rows
        if hasattr(model, "head"):
            logits_m = model.head(self._masked_hidden(model, xt, x0, masked, attention_mask))
        else:
            logits_m = self._logits(model, xt, x0, attention_mask)[masked]
        return _ce_rows(logits_m, x0[masked], self.mask_token_id), rows

    def weighted_masked_ce(self, model, xt, x0, masked, row_weight, attention_mask=None) -> tuple[torch.Tensor, int]:
        """sum over masked positions of weight * CE, and the number of masked positions; `row_weight` is (B,) per
        row or (B, L) per position. With a dlm Transformer the head and the cross-entropy run fused, chunk by
        chunk (no (M, V) logits). With diffusion.token_reweighting each CE is MGDM's focal reweighting of it."""
        weight = getattr(model, "head_weight", None)
        rows = masked.nonzero()[:, 0]
        w = row_weight[masked] if row_weight.dim() == 2 else row_weight[rows]
        focal = self.config.token_reweighting
        if weight is not None and self.fused:
            h = self._masked_hidden(model, xt, x0, masked, attention_mask)
            return weighted_cross_entropy(h, weight, x0[masked], w, self.mask_token_id, focal=focal), int(rows.numel())
        ce, _ = self.masked_ce(model, xt, x0, masked, attention_mask)
        ce = token_reweight(ce, *focal) if focal is not None else ce
        return (ce * w).sum(), int(rows.numel())

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
            and rand((1,), generator, input_ids.device).item() < self.config.random_length_prob
        ):
            dev = generator.device if generator is not None else input_ids.device
            new_len = int(torch.randint(1, input_ids.shape[1] + 1, (1,), generator=generator, device=dev).item())
            input_ids = input_ids[:, :new_len]
            attention_mask = attention_mask[:, :new_len] if attention_mask is not None else None
        t = self.training_t(model, input_ids, attention_mask, generator, shard)
        maskable = attention_mask.bool() if attention_mask is not None else None
        xt, masked = self.add_noise(input_ids, t, generator, maskable, shard)
        num_tokens = int(maskable.sum()) if maskable is not None else input_ids.numel()
        total, n_masked = self.weighted_masked_ce(
            model, xt, input_ids, masked, self.loss_weight(input_ids, t, maskable), attention_mask
        )
        return LossOutput(total / max(num_tokens, 1), num_tokens, n_masked)

    def sft_loss(
        self, model, input_ids, prompt_lengths, attention_mask=None, generator=None, shard=(0, 1), answer_mask=None
    ) -> LossOutput:
        """SFT: prompt never masked; answer (with its EOS padding) masked; normalised per answer length per row.
        `answer_mask` (B, L) bool replaces `prompt_lengths` for rows holding several examples (packing)."""
        B = input_ids.shape[0]
        answer = self.answer_positions(input_ids, prompt_lengths, attention_mask, answer_mask)
        t = self.training_t(model, input_ids, attention_mask, generator, shard)
        maskable = answer
        if self.config.suffix_mask_prob > 0:
            t, maskable = self.suffix_rows(t, answer, generator, shard)
        xt, masked = self.add_noise(input_ids, t, generator, maskable, shard)
        answer_len = answer.sum(1).clamp(min=1).float()
        w = self.loss_weight(input_ids, t, maskable)
        w = w / (answer_len if w.dim() == 1 else answer_len[:, None])
        total, n_masked = self.weighted_masked_ce(model, xt, input_ids, masked, w, attention_mask)
        return LossOutput(total / B, int(answer.sum()), n_masked)

    def suffix_rows(self, t, answer, generator=None, shard=(0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
        """diffusion.suffix_mask_prob: ((B, L) noise levels, (B, L) maskable) where a drawn share of rows has its
        answer cut at a uniform position: from the cut on t = 1 (every token masked, ELBO weight w(1)), before it
        nothing maskable (clean); the other rows keep their level t and the whole answer."""
        B, L = answer.shape
        rank, world = shard
        u = rand((B * world, 2), generator, answer.device)[rank::world]
        chosen = (u[:, 0] < self.config.suffix_mask_prob)[:, None]
        cut = (u[:, 1] * answer.sum(1)).floor()[:, None]  # 0 .. n-1: at least one token is masked
        suffix = answer & ((answer.cumsum(1) - 1) >= cut)
        t = t[:, None].expand(B, L) if t.dim() == 1 else t
        return torch.where(chosen, torch.ones_like(t), t), torch.where(chosen, suffix, answer)

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
        offset = rand((1,), generator, input_ids.device)
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


COMMIT_SCHEDULES = ("even", "dream", "cosine")
PROPOSALS = ("gumbel", "categorical")


class MaskedReverse(ReverseProcess):
    """The masked reverse step: propose tokens at the still-masked positions of the active region, then commit
    some of them (the unmask policy, counting with the commit schedule) and leave the rest masked.

    Commit schedules (GenerationConfig.schedule): `even` — LLaDA: the block's masks split evenly over its steps
    (the first c % steps steps one more, at least one per step); `dream` — Dream: on the float32 time grid
    t = linspace(1, schedule_eps, steps + 1), step i commits floor(n_masked * f_i) with f_i the noise schedule's
    (alpha_s - alpha_t) / (1 - alpha_t) (1 - s/t for the linear schedule, Dream's own expression), everything
    at the last step; `cosine` — MaskGIT (Chang et al. 2022; pictures): after step i of S,
    floor(c cos(pi/2 (i+1)/S)) of the block's c masks are left, so few commits come first and many at the end (at
    least one a step). Proposals (GenerationConfig.proposal), for temperature > 0: `gumbel` — LLaDA: Gumbel-max
    over the top-k/top-p filtered logits / T, confidences from the untempered distribution; `categorical` —
    Dream: logits / T, then top-p, then top-k, tokens drawn from that distribution with the row's generator,
    confidences from it too. Greedy (T = 0) is the argmax in both."""

    def __init__(self, process: "MaskedDiffusion", config):
        super().__init__(process, config)
        if config.steps > config.gen_length:  # every step commits at least one token (other processes may take more)
            raise ConfigError("steps", f"got {config.steps}; must be <= gen_length={config.gen_length}")
        check_choice("schedule", config.schedule, COMMIT_SCHEDULES)
        check_choice("proposal", config.proposal, PROPOSALS)
        self.mask_id = process.mask_token_id
        self.policy = get_policy(config.policy, config)
        self.revises = config.remask > 0
        steps = config.steps_per_block
        grid = torch.linspace(1, config.schedule_eps, steps + 1)
        self.fraction = process.schedule.unmask_fraction(grid[:-1], grid[1:]).float()
        self.fraction[-1] = 1.0

    def init_canvas(self, length, generator):
        return [self.mask_id] * length

    def noisy_in_text(self, tokens):
        return tokens == self.mask_id

    def unconditional(self, tokens, hide):
        return tokens.masked_fill(hide, self.mask_id)

    def reset(self, batch, length, device):
        self.policy.reset(batch, length, device)

    def extend(self, batch, length, shift):
        self.policy.extend(batch, length, shift)

    def commit_count(self, ctx: StepContext, remaining: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
        if self.config.schedule == "even":
            c0, steps = ctx.noisy_at_block_start, ctx.steps
            k = c0 // steps + (ctx.step < c0 % steps).long()
            return torch.minimum(k.clamp(min=1), remaining)
        if self.config.schedule == "cosine":
            left = torch.floor(ctx.noisy_at_block_start * torch.cos(math.pi / 2 * (ctx.step + 1) / ctx.steps))
            return torch.minimum((remaining - left.long()).clamp(min=1), remaining)
        return (remaining.float() * fraction).long()

    def propose(self, logits: torch.Tensor, ctx: StepContext, where: torch.Tensor):
        """(x0, x0_prob, probs) at the query slots; tokens are drawn only where `where` holds."""
        cfg = self.config
        if cfg.temperature == 0:
            probs = torch.softmax(logits, dim=-1)
            x0_prob, x0 = probs.max(dim=-1)
            return x0, x0_prob, probs
        if cfg.proposal == "gumbel":
            probs = torch.softmax(logits, dim=-1)
            filtered = top_k_top_p_filter(logits, cfg.top_k, cfg.top_p)
            gumbel = -torch.log(-torch.log(ctx.uniform(where, logits.shape[-1]).clamp(1e-20, 1.0 - 1e-7)))
            x0 = torch.argmax(filtered / cfg.temperature + gumbel, dim=-1)
            return x0, probs.gather(-1, x0[..., None]).squeeze(-1), probs
        tempered = top_k_top_p_filter(top_k_top_p_filter(logits / cfg.temperature, 0, cfg.top_p), cfg.top_k, 1.0)
        probs = torch.softmax(tempered, dim=-1)
        x0 = probs.argmax(dim=-1)
        for i, g in enumerate(ctx.generators):
            w = where[i]
            if bool(w.any()):
                p = probs[i, w]
                p = p / p.sum(-1, keepdim=True)  # torch.distributions.Categorical's normalisation
                x0[i, w] = torch.multinomial(p.to(g.device), 1, True, generator=g).squeeze(-1).to(x0.device)
        return x0, probs.gather(-1, x0[..., None]).squeeze(-1), probs

    def step(self, ctx: StepContext) -> StepResult:
        logits, cand = ctx.logits, ctx.candidates
        logits[..., self.mask_id] = float("-inf")  # never propose the mask token
        remaining = cand.sum(1)
        fraction = self.fraction.to(logits.device)[ctx.step.clamp(max=ctx.steps - 1)]
        remask = self._remask(ctx) if self.revises else None
        count = self.commit_count(ctx, remaining, fraction)
        if remask is not None:  # what goes back is committed again elsewhere: the schedule's progress holds
            count = torch.minimum(count + remask.sum(1), remaining)
        s = StepInputs(
            logits=logits, probs=None, x0=None, x0_prob=None, candidates=cand,
            num_to_commit=count, uniform=lambda: ctx.uniform(cand),
            rows=ctx.rows, positions=ctx.positions, step=ctx.step, fraction=fraction,
        )  # fmt: skip
        if self.policy.positions_first:
            commit = self.policy.choose_positions(s) & cand
            commit = torch.where(ctx.last_step[:, None], cand, commit)
            s.x0, s.x0_prob, s.probs = self.propose(logits, ctx, commit)
        else:
            s.x0, s.x0_prob, s.probs = self.propose(logits, ctx, cand)
            commit = self.policy(s) & cand
            commit = torch.where(ctx.last_step[:, None], cand, commit)  # a block's last step commits the rest
        if self.config.schedule == "even":  # LLaDA's rule: at least one commit per row and step
            none = (commit.sum(1) == 0) & (remaining > 0)
            best = s.x0_prob.masked_fill(~cand, -1.0).argmax(1)
            commit = commit | (F.one_hot(best, cand.shape[1]).bool() & none[:, None])
        tokens = torch.where(commit, s.x0, ctx.tokens)
        if remask is None:
            return StepResult(tokens=tokens, noisy=cand & ~commit, changed=commit)
        tokens = tokens.masked_fill(remask, self.mask_id)
        return StepResult(tokens=tokens, noisy=(cand & ~commit) | remask, changed=commit | remask)

    def _remask(self, ctx: StepContext) -> torch.Tensor:
        """(R, A) bool: settled tokens that go back to mask this step: the `remask` least probable under this
        step's forward, among those below `remask_below`; none on a block's last step."""
        settled = ctx.settled & ~ctx.last_step[:, None]
        conf = torch.softmax(ctx.logits, dim=-1).gather(-1, ctx.tokens[..., None]).squeeze(-1)
        low = settled & (conf < self.config.remask_below)
        order = conf.masked_fill(~low, float("inf")).argsort(dim=1, stable=True)
        ranks = torch.arange(order.shape[1], device=order.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(1, order, ranks)
        return low & (rank < self.config.remask)


def perplexity(nll_sum: float, num_tokens: int) -> float:
    return math.exp(nll_sum / max(num_tokens, 1))
