"""Unmask policies: the masked process's strategy for which masked positions to commit at a step. One small
class each, registered by name.

A policy scores candidate positions (`scores`: higher = commit sooner) and says how many to commit this step
(`commit_count`, the one hook parallel decoding needs); `select` commits that many of the best-scoring
candidates. The default count is the commit schedule's k (`even`: LLaDA's even split, at least one per step;
`dream`: Dream's floor(n (alpha_s - alpha_t) / (1 - alpha_t)), which may be zero); parallel-decoding policies
(threshold, factor, entropy_bound, credit) count from confidences (at least one), so `steps` becomes an upper
bound. `posterior` (Dream's alg `origin`, MDLM's ancestral step) decides positions before tokens are drawn.
The masked process adds one rule whatever a policy returns: a block's last step commits everything left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..sampling.config import GenerationConfig

POLICIES: dict[str, type["UnmaskPolicy"]] = {}


def register_policy(cls):
    POLICIES[cls.name] = cls
    return cls


@dataclass
class StepInputs:
    logits: torch.Tensor  # (R, A, V) processed logits at active positions (float32)
    probs: torch.Tensor  # (R, A, V) softmax of logits
    x0: torch.Tensor  # (R, A) proposed tokens
    x0_prob: torch.Tensor  # (R, A) probability of the proposed token
    candidates: torch.Tensor  # (R, A) bool: still masked and in the active block
    num_to_commit: torch.Tensor  # (R,) long: count from the schedule
    uniform: Callable[[], torch.Tensor]  # per-row uniforms (R, A) from each row's own generator
    rows: torch.Tensor | None = None  # (R,) long: each row's index in the generate() batch (for per-row state)
    positions: torch.Tensor | None = None  # (R, A) long: canvas slots of the active positions
    step: torch.Tensor | None = None  # (R,) long: step index inside each row's current block
    fraction: torch.Tensor | None = None  # (R,) float32: the schedule's unmask probability this step


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of distributions over the last dim."""
    return -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1)


def _sorted_candidates(scores: torch.Tensor, s: StepInputs, descending: bool = True) -> torch.Tensor:
    """Candidate scores sorted per row (non-candidates last, as -inf / +inf)."""
    fill = float("-inf") if descending else float("inf")
    return scores.masked_fill(~s.candidates, fill).sort(dim=1, descending=descending, stable=True).values


class UnmaskPolicy:
    """Base class: a policy is built per generate() call with its GenerationConfig (settings live there)."""

    name = "base"
    positions_first = False  # True: `choose_positions(s)` runs before tokens are proposed (s.x0 is None)

    def __init__(self, config: "GenerationConfig | None" = None):
        if config is None:
            from ..sampling.config import GenerationConfig

            config = GenerationConfig()
        self.config = config

    def reset(self, batch: int, length: int, device) -> None:
        """Start of a generate() call over `batch` rows of `length` canvas slots (allocate per-row state)."""

    def extend(self, batch: int, length: int, shift: int) -> None:
        """Rows joined a running batch (continuous batching): per-row state must now cover `batch` row handles
        and `length` slots, existing rows' slots moved right by `shift` (more left padding)."""

    def scores(self, s: StepInputs) -> torch.Tensor:
        raise NotImplementedError

    def commit_count(self, scores: torch.Tensor, s: StepInputs) -> torch.Tensor:
        """How many candidates each row commits this step, (R,) long. Default: the schedule's k."""
        return s.num_to_commit

    def select(self, scores: torch.Tensor, s: StepInputs) -> torch.Tensor:
        """Commit the commit_count best-scoring candidates of each row (stable on ties)."""
        n = self.commit_count(scores, s)
        scores = scores.masked_fill(~s.candidates, float("-inf"))
        order = torch.argsort(scores, dim=1, descending=True, stable=True)
        ranks = torch.argsort(order, dim=1, stable=True)
        return (ranks < n[:, None]) & s.candidates

    def __call__(self, s: StepInputs) -> torch.Tensor:
        return self.select(self.scores(s), s)


@register_policy
class LowConfidence(UnmaskPolicy):
    """LLaDA's default: commit the positions whose proposed token is most probable."""

    name = "low_confidence"

    def scores(self, s):
        return s.x0_prob


@register_policy
class RandomPolicy(UnmaskPolicy):
    """Commit uniformly random masked positions (MDLM/LLaDA 'random' remasking)."""

    name = "random"

    def scores(self, s):
        return s.uniform()


@register_policy
class Margin(UnmaskPolicy):
    """Commit where the top-1 probability beats the top-2 by the widest margin."""

    name = "margin"

    def scores(self, s):
        top2 = s.probs.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]


@register_policy
class Entropy(UnmaskPolicy):
    """Commit where the predictive distribution has the lowest entropy."""

    name = "entropy"

    def scores(self, s):
        return -entropy(s.probs)


@register_policy
class LeftToRight(UnmaskPolicy):
    """Commit the leftmost masked positions of the active block (the schedule's count): AR order inside a block,
    the natural order for a model converted from an AR one (block diffusion with shifted prediction)."""

    name = "left_to_right"

    def scores(self, s):
        slots = s.positions if s.positions is not None else torch.arange(s.candidates.shape[1]).expand_as(s.x0_prob)
        return -slots.to(device=s.x0_prob.device, dtype=torch.float32)


# ---- parallel decoding: the count comes from the confidences, not from the schedule -------------------------


@register_policy
class Threshold(UnmaskPolicy):
    """Fast-dLLM: commit every candidate whose confidence p(x0) >= `threshold` (at least the most confident)."""

    name = "threshold"

    def scores(self, s):
        return s.x0_prob

    def commit_count(self, scores, s):
        return ((scores >= self.config.threshold) & s.candidates).sum(1).clamp(min=1)


@register_policy
class ThresholdPrefix(LeftToRight):
    """Left to right with parallel commits: the leftmost masked position always, and every following candidate
    while its confidence p(x0) >= `threshold` (the run stops at the first one below). Tokens are committed in
    reading order, as an AR model would write them, several per forward where the model is sure."""

    name = "threshold_prefix"

    def commit_count(self, scores, s):
        order = torch.argsort(scores.masked_fill(~s.candidates, float("-inf")), dim=1, descending=True, stable=True)
        sure = ((s.x0_prob >= self.config.threshold) & s.candidates).gather(1, order)
        run = sure.long().cumprod(1).sum(1)  # leading run of sure candidates, leftmost first
        return run.clamp(min=1)


@register_policy
class Factor(UnmaskPolicy):
    """Fast-dLLM's factor rule: with candidates ranked by confidence (r = 1, 2, ...), commit the longest run of
    ranks with conf_r >= 1 - factor / (r + 1) (at least one)."""

    name = "factor"

    def scores(self, s):
        return s.x0_prob

    def commit_count(self, scores, s):
        conf = _sorted_candidates(scores, s)
        r = torch.arange(1, conf.shape[1] + 1, device=conf.device, dtype=conf.dtype)
        ok = conf >= 1.0 - self.config.factor / (r + 1.0)
        return ok.long().cumprod(1).sum(1).clamp(min=1)


@register_policy
class EntropyBound(UnmaskPolicy):
    """Entropy-bounded: commit candidates lowest-entropy first while their summed entropy stays <= the bound
    (at least one)."""

    name = "entropy_bound"

    def scores(self, s):
        return -entropy(s.probs)

    def commit_count(self, scores, s):
        h = _sorted_candidates(-scores, s, descending=False)  # ascending entropy, non-candidates +inf
        return (h.cumsum(1) <= self.config.entropy_bound).sum(1).clamp(min=1)


@register_policy
class Credit(UnmaskPolicy):
    """dInfer-style credit: a position whose proposal stays the same across steps accumulates credit
    c <- decay * c + p ** gamma (a new proposal restarts it), and its confidence is fused with the credit as
    q = p (1 + c)^alpha / (p (1 + c)^alpha + 1 - p) (the top-1 probability after adding alpha log(1 + c) to its
    logit). Commits every candidate with q >= `threshold` (at least one). dInfer keeps credit for every token of
    the vocabulary; this keeps it for the current proposal only, O(positions) memory."""

    name = "credit"

    def reset(self, batch, length, device):
        self.credit = torch.zeros(batch, length, device=device)
        self.token = torch.full((batch, length), -1, dtype=torch.long, device=device)

    def extend(self, batch, length, shift):
        F = torch.nn.functional
        more = batch - self.credit.shape[0]
        self.credit = F.pad(self.credit, (shift, 0, 0, more), value=0.0)
        self.token = F.pad(self.token, (shift, 0, 0, more), value=-1)

    def scores(self, s):
        c = self.config
        rows = s.rows[:, None].expand_as(s.positions)
        prev_c, prev_t = self.credit[rows, s.positions], self.token[rows, s.positions]
        credit = torch.where(s.x0 == prev_t, c.credit_decay * prev_c, 0.0) + s.x0_prob.pow(c.credit_gamma)
        cand = s.candidates
        self.credit[rows[cand], s.positions[cand]] = credit[cand]
        self.token[rows[cand], s.positions[cand]] = s.x0[cand]
        boosted = s.x0_prob * (1.0 + credit).pow(c.credit_alpha)
        return boosted / (boosted + (1.0 - s.x0_prob)).clamp_min(1e-30)

    def commit_count(self, scores, s):
        return ((scores >= self.config.threshold) & s.candidates).sum(1).clamp(min=1)


@register_policy
class FirstHitting(UnmaskPolicy):
    """BD3-LM / Zheng et al.'s first-hitting sampler: each forward unmasks exactly one position, uniformly at
    random among the masked ones (the row's own generator), with the token sampled from the model — the exact
    masked-diffusion sampler with no forward wasted on a step that commits nothing. NFE = number of masks when
    steps = gen_length (a block's last step still commits whatever is left)."""

    name = "first_hitting"

    def scores(self, s):
        return s.uniform()

    def commit_count(self, scores, s):
        return torch.ones_like(s.num_to_commit)


def top_k_top_p_filter(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus top-p to -inf (the most likely token always stays)."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove_sorted = (cum - sorted_logits.softmax(-1)) >= top_p  # keep the token that crosses p
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


@register_policy
class Posterior(UnmaskPolicy):
    """MDLM's ancestral step, Dream's alg `origin`: each masked position is committed independently with the
    schedule's probability (alpha_s - alpha_t) / (1 - alpha_t) (Dream: 1 - s/t), drawn from the row's own
    generator before any token is drawn (Dream's order), so a step may commit nothing."""

    name = "posterior"
    positions_first = True

    def choose_positions(self, s):
        return (s.uniform() < s.fraction[:, None]) & s.candidates


def get_policy(name: str, config: "GenerationConfig | None" = None) -> UnmaskPolicy:
    from ..errors import ConfigError

    if name not in POLICIES:
        raise ConfigError("policy", f"unknown policy {name!r}; allowed: {', '.join(sorted(POLICIES))}")
    return POLICIES[name](config)
