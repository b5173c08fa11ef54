"""The spindle noise schedule of DiffusionBERT (He et al., arXiv 2211.15029): masked diffusion in which informative
(rare) tokens are masked earlier than frequent ones.

Each token gets its own survival probability, a linear schedule bent by a sine that vanishes at both ends:

    alpha_i(t) = 1 - t - lambda * sin(pi t) * c_i,      c_i = h(x_i) - mean_j h(x_j)  (j: the row's maskable tokens)

h(v) in [0, 1] is token v's informativeness: its surprisal -log p(v) under the training corpus's unigram
frequencies (add-one smoothed), scaled to [0, 1] over the vocabulary. A token rarer than its row's average
(c_i > 0) survives less at every t in (0, 1): it is masked earlier and, in the reverse direction, decided later,
after the frequent words around it. With 0 <= lambda <= 1/pi every alpha_i falls monotonically from 1 to 0.

Training loss: the masked ELBO's cross-entropy at the masked positions with each token's own weight
w_i(t) = -alpha_i'(t) / (1 - alpha_i(t)) = (1 + lambda pi cos(pi t) c_i) / (t + lambda sin(pi t) c_i), normalised by
the number of tokens (lambda = 0 gives the masked process's 1/t). Because the schedule depends on the clean tokens,
this is the per-token weighting of the masked bound, not an exact bound of the spindle process (whose exact ELBO
also scores *when* each token is unmasked, as MD4's state-dependent schedule does). The held-out likelihood
(`elbo_nll`) is therefore the plain masked bound (linear schedule): a true upper bound for any time-agnostic
denoiser, comparable with the masked family's.

Decoding is time-agnostic (the network gets no t) and needs no token statistics: the masked process's reverse step
(unmask policies, commit schedules) as it is. The token counts come from the training split once (`fit`, called by
the trainer) and travel in the process's `state_dict` (the run's checkpoints).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ConfigError, InputError
from .base import DiffusionConfig, register_process
from .masked import MaskedDiffusion

COUNT_CHUNK = 1 << 24  # tokens counted per bincount call (a memmap is read in pieces)


def token_counts(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """(vocab_size,) int64 occurrences of each id in a (memory-mapped) token array of any shape."""
    flat = tokens.reshape(-1)
    counts = np.zeros(vocab_size, dtype=np.int64)
    for a in range(0, flat.shape[0], COUNT_CHUNK):
        part = np.asarray(flat[a : a + COUNT_CHUNK], dtype=np.int64)
        counts += np.bincount(part[(part >= 0) & (part < vocab_size)], minlength=vocab_size)
    return counts


def informativeness(counts) -> torch.Tensor:
    """(V,) float32 in [0, 1]: each token's surprisal -log p under add-one-smoothed unigram frequencies, scaled so
    the most frequent token has 0 and the rarest (or an unseen one) 1."""
    c = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
    surprisal = -torch.log((c + 1.0) / (c.sum() + c.numel()))
    lo, hi = surprisal.min(), surprisal.max()
    return ((surprisal - lo) / (hi - lo).clamp(min=1e-12)).float()


@register_process
class SpindleDiffusion(MaskedDiffusion):
    """Masked diffusion with DiffusionBERT's token-dependent spindle schedule (`diffusion.spindle_lambda`)."""

    name = "spindle"

    def __init__(self, config: DiffusionConfig, mask_token_id: int, *, shift_logits: bool = False, vocab_size=0):
        super().__init__(config, mask_token_id, shift_logits=shift_logits, vocab_size=vocab_size)
        if config.schedule != "linear":
            raise ConfigError("diffusion.schedule", f"got {config.schedule!r}; the spindle process bends 'linear'")
        lam = config.spindle_lambda
        if not 0.0 <= lam <= 1.0 / math.pi:
            raise ConfigError("diffusion.spindle_lambda", f"got {lam}; must be in [0, 1/pi = {1 / math.pi:.4f}]")
        self.lam = float(lam)
        self.plain = MaskedDiffusion(config, mask_token_id, shift_logits=shift_logits, vocab_size=vocab_size)
        self.counts: np.ndarray | None = None
        self.info: torch.Tensor | None = None

    # ---- token statistics ----------------------------------------------------------------------
    def fit(self, dataset) -> None:
        """Count the training split's tokens (`dataset.tokens`, any shape) once: the informativeness table."""
        self.set_counts(token_counts(np.asarray(dataset.tokens), self.vocab_size))

    def set_counts(self, counts) -> None:
        counts = np.asarray(counts, dtype=np.int64)
        if counts.shape != (self.vocab_size,) or (counts < 0).any():
            raise InputError("token_counts", f"must be {self.vocab_size} non-negative counts, got shape {counts.shape}")
        self.counts, self.info = counts, informativeness(counts)

    def state_dict(self) -> dict:
        return {} if self.counts is None else {"token_counts": self.counts.tolist()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("token_counts") is not None:
            self.set_counts(state["token_counts"])

    # ---- the schedule --------------------------------------------------------------------------
    def centred(self, x0: torch.Tensor, maskable: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) c_i = h(x_i) minus the mean of h over the row's maskable tokens (all when `maskable` is None)."""
        if self.info is None:
            raise InputError("token_counts", "no token frequencies yet: fit(train_dataset) first (dlm train does)")
        h = self.info.to(x0.device)[x0.clamp(0, self.vocab_size - 1)]
        keep = torch.ones_like(h) if maskable is None else maskable.to(h.dtype)
        mean = (h * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp(min=1.0)
        return h - mean

    def alpha(self, x0, t, maskable=None) -> tuple[torch.Tensor, torch.Tensor]:
        """((B, L) alpha_i(t), (B, L) alpha_i'(t)) for levels t (B,) or (B, L)."""
        t = t.float()
        t = t[:, None] if t.dim() == 1 else t
        c = self.centred(x0, maskable)
        a = 1.0 - t - self.lam * torch.sin(math.pi * t) * c
        da = -1.0 - self.lam * math.pi * torch.cos(math.pi * t) * c
        return a, da

    def mask_prob(self, x0, t, maskable=None) -> torch.Tensor:
        return (1.0 - self.alpha(x0, t, maskable)[0]).clamp(0.0, 1.0)

    def loss_weight(self, x0, t, maskable=None) -> torch.Tensor:
        a, da = self.alpha(x0, t, maskable)
        return -da / (1.0 - a).clamp(min=1e-12)

    # ---- likelihood ----------------------------------------------------------------------------
    @torch.no_grad()
    def elbo_nll(self, model, input_ids, num_samples: int = 8, attention_mask=None, generator=None, maskable=None):
        """The plain masked ELBO (linear schedule): an upper bound on -log p(x) for this time-agnostic network,
        comparable with the masked family's (see the module docstring)."""
        return self.plain.elbo_nll(model, input_ids, num_samples, attention_mask, generator, maskable)
