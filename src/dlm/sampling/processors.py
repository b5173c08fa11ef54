"""Logits processors (HF-style): callables that reshape logits at the active positions before sampling."""

from __future__ import annotations

import torch

from ..diffusion.policies import top_k_top_p_filter  # noqa: F401  (re-exported: the filter lives with the proposals)


class LogitsProcessor:
    """`__call__(input_ids (R, L), scores (R, A, V), positions (R, A)) -> scores`. `input_ids` holds each row's
    decoded tokens, -1 at slots that are not decided yet (still noisy) and at left padding; `positions` are the
    slots (indices into `input_ids`, or `L` for the token after them) that `scores` are for."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SuppressTokens(LogitsProcessor):
    """Never propose these token ids (applied before argmax, not after)."""

    def __init__(self, token_ids):
        self.token_ids = sorted(set(int(t) for t in token_ids))

    def __call__(self, input_ids, scores, positions):
        scores = scores.clone()
        scores[..., self.token_ids] = float("-inf")
        return scores


class AllowTokens(LogitsProcessor):
    """Propose only these token ids (everything else -inf): e.g. a picture's slots take image codes only."""

    def __init__(self, token_ids):
        self.token_ids = sorted(set(int(t) for t in token_ids))
        if not self.token_ids:
            raise ValueError("AllowTokens needs at least one token id")

    def __call__(self, input_ids, scores, positions):
        keep = torch.full_like(scores, float("-inf"))
        keep[..., self.token_ids] = 0.0
        return scores + keep


class NoRepeatNGram(LogitsProcessor):
    """Never propose a token that would repeat an n-gram already in the row (Hugging Face's
    `no_repeat_ngram_size`). For slot q and each n-slot window through q whose other n-1 slots are decided,
    every token that sits at q's place in an equal, fully decided n-gram elsewhere in the row is set to -inf
    (left to right this is HF's rule: the n-1 tokens before q; a diffusion canvas also checks windows closed on
    the right, and a token that would make two new windows equal: a run of period < n filled from both ends).
    Undecided slots (-1) break n-grams. Exact when one token is committed at a time; tokens committed in the same
    step are each checked against what was decided before it. `eos_token_id` is never banned (a row
    may always end, and a diffusion canvas's EOS tail stays legal)."""

    def __init__(self, n: int, eos_token_id: int | None = None):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n, self.eos_token_id = int(n), eos_token_id

    def __call__(self, input_ids, scores, positions):
        n, (R, A, _) = self.n, scores.shape
        t = torch.nn.functional.pad(input_ids.long().clamp(min=-1), (n - 1, n), value=-1)  # slot s at s + n - 1
        grams = t[:, : t.shape[1] - n].unfold(1, n, 1)  # (R, W, n): the n-gram starting at each padded index
        decided = (grams >= 0).all(-1)  # (R, W)
        span = torch.arange(n, device=t.device)

        def window(k):  # (R, A, n): the window through q in which q is the k-th slot (padded indices)
            at = positions.long()[..., None] - k + n - 1 + span
            return t.gather(1, at.reshape(R, -1)).reshape(R, A, n)

        wins = [window(k) for k in range(n)]
        rows, cols, bans = [], [], []
        for k in range(n):  # a window through q equal to an n-gram already decided
            other = [j for j in range(n) if j != k]
            ctx = wins[k][..., other]
            match = (grams[:, None, :, other] == ctx[:, :, None, :]).all(-1)  # (R, A, W)
            match &= decided[:, None, :] & (ctx >= 0).all(-1, keepdim=True)
            r, a, w = match.nonzero(as_tuple=True)
            rows.append(r), cols.append(a), bans.append(grams[r, w, k])
        for k1 in range(n):  # two windows through q equal to each other (q fills a run of period < n)
            for k2 in range(k1 + 1, n):
                w1, w2 = wins[k1], wins[k2]  # w2 starts d = k2 - k1 slots before w1; t must equal both q-d, q+d
                other = [j for j in range(n) if j not in (k1, k2)]
                same = ((w1[..., other] == w2[..., other]) & (w1[..., other] >= 0)).all(-1)
                same &= (w2[..., k1] >= 0) & (w2[..., k1] == w1[..., k2])
                r, a = same.nonzero(as_tuple=True)
                rows.append(r), cols.append(a), bans.append(w2[r, a, k1])
        r, a, banned = torch.cat(rows), torch.cat(cols), torch.cat(bans)
        if self.eos_token_id is not None:
            keep = banned != self.eos_token_id
            r, a, banned = r[keep], a[keep], banned[keep]
        if not len(banned):
            return scores
        scores = scores.clone()
        scores[r, a, banned] = float("-inf")
        return scores


def config_processors(config, eos_token_id: int | None = None) -> list[LogitsProcessor]:
    """The processors a GenerationConfig asks for by itself (run after the caller's own)."""
    return [NoRepeatNGram(config.no_repeat_ngram_size, eos_token_id)] if config.no_repeat_ngram_size else []
