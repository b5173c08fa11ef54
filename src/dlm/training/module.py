"""What the parallel wrappers wrap: the network with its objective (`TrainingModule`), and the network seen
through a packed batch (`Segmented`)."""

from __future__ import annotations

import torch
from torch import nn

from ..model.masks import build_mask
from .objectives import Objective


class Segmented:
    """The network seen through a packed batch: each example attends only within itself, with the attention
    kind the objective trains (default: the network's own; `causal=True` is short for attention="causal"), and
    has its own positions (block-causal blocks are counted on them). Stands in for the network in the loss
    functions, which call it and read `head_weight` / `head` as they do on the network."""

    def __init__(
        self,
        net,
        segment_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention: str | None = None,
        *,
        block_size: int | None = None,
        causal: bool = False,
    ):
        config = getattr(net, "config", None)
        attention = "causal" if causal else attention or getattr(config, "attention", "bidirectional")
        block_size = block_size or getattr(config, "block_size", 1)
        self.net, self.positions, self.segment_ids = net, position_ids, segment_ids
        self.mask = build_mask(
            attention, segment_ids.shape[1], segment_ids=segment_ids, positions=position_ids, block_size=block_size
        )

    @property
    def embed_tokens(self):
        return self.net.embed_tokens

    def __call__(self, input_ids=None, attention_mask=None, **kw):
        return self.net(input_ids, attention_mask=self.mask, position_ids=self.positions, **kw)

    @property
    def head_weight(self):
        return getattr(self.net, "head_weight", None)

    def head(self, hidden):
        return self.net.head(hidden)


class TrainingModule(nn.Module):
    """What DDP and FSDP2 wrap: the network with its objective, so that every use of the weights (the fused
    head + cross-entropy included) happens inside one forward. `shard` = (rank, world): this process holds
    rows rank::world of each global batch, and the noise is drawn for the global batch (see MaskedDiffusion).
    Packed SFT batches (data.pack) bring answer_mask, segment_ids and position_ids."""

    def __init__(self, net: nn.Module, objective: Objective, shard=(0, 1), compiled=None):
        super().__init__()
        self.net = net
        self.objective = objective
        self.shard = shard
        object.__setattr__(self, "_call", net if compiled is None else compiled)  # compiled view, not a submodule

    def forward(
        self,
        input_ids,
        prompt_lengths=None,
        generator=None,
        normalizer=None,
        eval_samples: int = 0,
        answer_mask=None,
        segment_ids=None,
        position_ids=None,
    ):
        """The loss (training), or with `eval_samples` the batch's summed held-out NLL (no compiled view)."""
        net = self.net if eval_samples else self._call
        if segment_ids is not None:
            mc = self.objective.model_config
            net = Segmented(net, segment_ids, position_ids, mc.attention, block_size=mc.block_size)
        batch = {"input_ids": input_ids, "prompt_lengths": prompt_lengths, "answer_mask": answer_mask}
        batch = {k: v for k, v in batch.items() if v is not None}
        if eval_samples:
            return self.objective.nll(net, batch, eval_samples, generator)
        return self.objective.loss(net, batch, generator, self.shard, normalizer)
