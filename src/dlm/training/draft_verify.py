"""The `draft_verify` objective: one causal network that is both an AR model and its own diffusion drafter
(TiDAR, arXiv 2511.08923: "think in diffusion, talk in autoregression").

One forward runs over two copies of each row (`dlm.model.masks.draft_verify_mask`): the clean copy with causal
attention, trained by next-token cross-entropy (the AR model, exactly what `ar` trains), and a fully masked copy
cut into blocks of `generation.draft_block` slots; each block sees every clean token before it and itself, and
is trained to predict the block's tokens at once (the drafter: masked diffusion at its last level, t = 1, which is
the only state the drafter meets when sampling). With shifted predictions, as the AR head's: the masked slot i
predicts token i + 1 inside its block; a block's first token is the AR head's (the clean slot before it).

loss = CE_AR + distill.draft_weight × CE_draft, each averaged over its targets (the answer's only, for SFT).

The network stays causal: `dlm.load` gives an AR model (exact likelihood, `generate_autoregressive`), and
`GenerationConfig.draft_block` turns on `dlm.sampling.speculative`: each forward verifies the last drafts with the
AR head and drafts the next ones, so the output is the AR head's greedy text, token for token.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from ..diffusion.fused_ce import weighted_cross_entropy
from ..errors import ConfigError
from ..model.masks import draft_verify_mask, key_positions
from .objectives import Autoregressive, answer_positions, register_objective


def _mean_ce(net, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the LM head on `hidden` (N, d) against `targets` (N,) (fused with the head when it
    is a plain matrix); 0 with a graph when there are no targets."""
    n = targets.numel()
    weight = getattr(net, "head_weight", None)
    if weight is not None:
        rw = torch.full((n,), 1.0 / max(n, 1), device=hidden.device)
        return weighted_cross_entropy(hidden, weight, targets, rw, None)
    if n == 0:
        return hidden.sum() * 0.0
    return F.cross_entropy(net.head(hidden).float(), targets)


@register_objective
class DraftVerify(Autoregressive):
    """Next-token CE on the causal clean stream + the drafter's CE on fully masked blocks; exact NLL (the AR
    head's), as `ar`."""

    name = "draft_verify"
    attention = "causal"

    def __init__(self, run_config, model_config):
        super().__init__(run_config, model_config)
        self.block_size = int(run_config.generation.draft_block)
        if self.block_size < 2:
            raise ConfigError(
                "generation.draft_block",
                f"the draft_verify objective trains drafting blocks of this size; got {self.block_size}, must be >= 2",
            )
        self.draft_weight = float(run_config.distill.draft_weight)
        mask_id = getattr(self.model_config, "mask_token_id", None)
        if mask_id is None:
            raise ConfigError("model.mask_token_id", "the draft_verify objective needs a mask token to draft with")
        self.mask_token_id = int(mask_id)

    def fit_model(self, model_config, init_from=None):
        """Causal, whatever `train.init_from` was (a block-causal student converts back: its clean stream becomes
        the AR model)."""
        return replace(model_config, attention="causal")

    def normalizer_tokens(self, batch):
        return None

    def loss(self, net, batch, generator=None, shard=(0, 1), normalizer=None):
        ids = batch["input_ids"]
        B, L = ids.shape
        segments = getattr(net, "segment_ids", None)
        if segments is not None:  # a packed view: its network, and positions counted per example
            base, positions = net.net, net.positions
        else:
            base, positions = net, key_positions(None, L, ids.device)
        mask = draft_verify_mask(L, self.block_size, segment_ids=segments, positions=positions, device=ids.device)
        pos2 = torch.cat([positions, positions], 1).expand(B, 2 * L)
        masked = torch.full_like(ids, self.mask_token_id)
        hidden = base(torch.cat([ids, masked], 1), attention_mask=mask, position_ids=pos2, return_hidden=True)
        # slot i predicts token i + 1: kept inside an example (and the answer, for SFT); the drafter's inside a block
        keep = torch.ones((B, L - 1), dtype=torch.bool, device=ids.device)
        if segments is not None:
            keep &= (segments[:, 1:] == segments[:, :-1]).expand(B, -1)
        answer = answer_positions(batch)
        if answer is not None:
            keep &= answer[:, 1:]
        blocks = (positions // self.block_size).expand(B, L)
        in_block = keep & (blocks[:, 1:] == blocks[:, :-1])
        targets = ids[:, 1:]
        ar = _mean_ce(base, hidden[:, : L - 1][keep], targets[keep])
        draft = _mean_ce(base, hidden[:, L : 2 * L - 1][in_block], targets[in_block])
        return ar + self.draft_weight * draft
