"""Training objectives: what a batch's loss and held-out NLL are, as objects built from the run config.

An objective is one class registered by name (`train.objective`); `build_objective` is the one factory and the
trainer never asks which objective it runs. A batch is a dict of tensors on the device: `input_ids` (B, L) and,
for SFT, `prompt_lengths` (B,) or (packed rows) `answer_mask` (B, L); the network `net` the methods get is
already the packed view of the network when the batch is packed (see `module.Segmented`).

- `ar`: next-token cross-entropy (the autoregressive twin; causal attention). SFT: answer tokens only, averaged
  over the global batch's answer tokens (the trainer counts them over the ranks: `normalizer_tokens`).
- `diffusion`: the noise process of `config.diffusion` (`dlm.diffusion.build_process`): its ELBO loss, its SFT
  loss (prompt kept clean), its likelihood bound.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..diffusion import PROCESSES, NoiseProcess, build_process
from ..diffusion.fused_ce import weighted_cross_entropy
from ..errors import ConfigError, check_choice
from ..eval.nll import next_token_nll

OBJECTIVES: dict[str, type["Objective"]] = {}


def register_objective(cls):
    OBJECTIVES[cls.name] = cls
    return cls


def answer_positions(batch: dict) -> torch.Tensor | None:
    """(B, L) bool: the answer positions of an SFT batch (packed: `answer_mask`; else at and after each prompt
    length); None for pretraining batches."""
    if "answer_mask" not in batch and "prompt_lengths" not in batch:
        return None
    return NoiseProcess.answer_positions(
        batch["input_ids"], batch.get("prompt_lengths"), answer_mask=batch.get("answer_mask")
    )


class Objective:
    """What training minimises and evaluation reports, for one kind of model.

    Subclasses set `name` (the `train.objective` value) and `attention` (the attention kind the objective
    trains; None: the model's own) and implement `loss`, `nll` and `scored_tokens`."""

    name: ClassVar[str] = ""
    attention: ClassVar[str | None] = None
    needs_sft: ClassVar[bool] = False  # trains on SFT batches only (a pretraining batch is a ConfigError)

    def __init__(self, run_config, model_config):
        self.run_config = run_config
        self.model_config = self.fit_model(model_config, run_config.train.init_from)

    def fit_model(self, model_config, init_from: str | None = None):
        """The network config this objective trains: a fresh network gets the objective's attention; a
        pretrained one (`train.init_from`) must already have it."""
        if self.attention is None or model_config.attention == self.attention:
            return model_config
        if init_from:
            raise ConfigError(
                "train.objective",
                f"{self.name} needs a {self.attention} model; {init_from} is {model_config.attention}",
            )
        return replace(model_config, attention=self.attention)

    @property
    def process(self) -> NoiseProcess | None:
        """The noise process, for diffusion objectives."""
        return None

    @property
    def diffusion_config(self):
        """The diffusion settings saved with the exported model (None: not a diffusion model)."""
        return None if self.process is None else self.process.config

    def at_step(self, step: int) -> None:
        """The trainer's optimizer step about to run (for objectives whose training changes with it)."""
        if self.process is not None:
            self.process.at_step(step)

    def normalizer_tokens(self, batch: dict) -> torch.Tensor | None:
        """This rank's count of the tokens the loss averages over when that average must be over the global batch
        (the trainer sums it over the ranks and passes it back to `loss` as `normalizer`, divided by the world
        size); None when the loss normalises itself."""
        return None

    def loss(self, net, batch: dict, generator=None, shard=(0, 1), normalizer=None) -> torch.Tensor:
        """The scalar to backpropagate for this rank's rows `shard` = (rank, world) of a global batch; the mean
        over ranks is the one-process loss."""
        raise NotImplementedError

    def nll(self, net, batch: dict, samples: int, generator=None) -> torch.Tensor:
        """Summed NLL (nats) of the batch's scored tokens: exact or an upper bound (`samples` Monte-Carlo draws);
        for SFT rows, of the answers given their prompts."""
        raise NotImplementedError

    def scored_tokens(self, batch: dict) -> int:
        """The number of tokens `nll` covers (its denominator for the per-token NLL)."""
        raise NotImplementedError


def answer_targets(input_ids, prompt_lengths) -> torch.Tensor:
    """(B, L-1) 1.0 where a next-token target is an answer token (SFT), else 0.0."""
    pos = torch.arange(1, input_ids.shape[1], device=input_ids.device)[None]
    return (pos >= prompt_lengths.to(input_ids.device)[:, None]).float()


def ar_loss(
    model, input_ids, attention_mask=None, prompt_lengths=None, normalizer=None, answer_mask=None
) -> torch.Tensor:
    """Mean next-token cross-entropy. With a dlm Transformer the LM head and the cross-entropy run fused,
    chunk by chunk, without the (B, L, V) logits (as the diffusion loss does). With `prompt_lengths` (SFT)
    only the answer's tokens (and the EOS padding after it, as in the diffusion SFT loss) are predicted,
    summed and divided by `normalizer` (default: their number here; data parallel passes the global number
    over the world size, so the ranks' mean is the one-process loss). `answer_mask` (B, L) marks the answer
    tokens directly (packed rows)."""
    targets = input_ids[:, 1:].reshape(-1)
    if answer_mask is not None:
        keep = answer_mask[:, 1:].float().reshape(-1)
        rw = keep / (keep.sum().clamp(min=1.0) if normalizer is None else normalizer)
    elif prompt_lengths is None:
        rw = torch.full((targets.numel(),), 1.0 / max(targets.numel(), 1), device=input_ids.device)
    else:
        keep = answer_targets(input_ids, prompt_lengths).reshape(-1)
        rw = keep / (keep.sum().clamp(min=1.0) if normalizer is None else normalizer)
    weight = getattr(model, "head_weight", None)
    if weight is not None:
        h = model(input_ids, attention_mask=attention_mask, return_hidden=True)[:, :-1]
        return weighted_cross_entropy(h.reshape(-1, h.shape[-1]), weight, targets, rw, None)
    logits = model(input_ids, attention_mask=attention_mask)
    ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets, reduction="none")
    return (ce * rw).sum()


@register_objective
class Autoregressive(Objective):
    """Next-token prediction with causal attention (the AR twin); exact NLL."""

    name = "ar"
    attention = "causal"

    def normalizer_tokens(self, batch):
        answer = answer_positions(batch)
        return None if answer is None else answer[:, 1:].float()

    def loss(self, net, batch, generator=None, shard=(0, 1), normalizer=None):
        return ar_loss(
            net,
            batch["input_ids"],
            prompt_lengths=batch.get("prompt_lengths"),
            normalizer=normalizer,
            answer_mask=batch.get("answer_mask"),
        )

    def nll(self, net, batch, samples, generator=None):
        nll = next_token_nll(net, batch["input_ids"])
        answer = answer_positions(batch)
        return (nll if answer is None else nll * answer[:, 1:]).sum()

    def scored_tokens(self, batch):
        answer = answer_positions(batch)  # next-token targets 1..L-1 (of the answers, for SFT)
        return int(answer[:, 1:].sum()) if answer is not None else batch["input_ids"][:, 1:].numel()


@register_objective
class Diffusion(Objective):
    """The noise process of `config.diffusion` trains the network; its ELBO bounds the NLL. The network keeps
    its own attention unless the process fits it (`NoiseProcess.resolve`: the block process makes it
    block-causal, which from a causal `train.init_from` checkpoint is the AR → block-diffusion conversion)."""

    name = "diffusion"

    def __init__(self, run_config, model_config):
        super().__init__(run_config, model_config)
        self._process = build_process(run_config.diffusion, self.model_config)

    def fit_model(self, model_config, init_from=None):
        return PROCESSES[self.run_config.diffusion.process].resolve(self.run_config.diffusion, model_config)[1]

    @property
    def process(self) -> NoiseProcess:
        return self._process

    def loss(self, net, batch, generator=None, shard=(0, 1), normalizer=None):
        ids = batch["input_ids"]
        if "prompt_lengths" in batch or "answer_mask" in batch:
            out = self.process.sft_loss(
                net,
                ids,
                batch.get("prompt_lengths"),
                generator=generator,
                shard=shard,
                answer_mask=batch.get("answer_mask"),
            )
        else:
            out = self.process.loss(net, ids, generator=generator, shard=shard)
        return out.loss

    def nll(self, net, batch, samples, generator=None):
        ids = batch["input_ids"]
        return self.process.elbo_nll(net, ids, samples, generator=generator, maskable=answer_positions(batch)).sum()

    def scored_tokens(self, batch):
        answer = answer_positions(batch)  # every position (the answers', for SFT)
        return int(answer.sum()) if answer is not None else batch["input_ids"].numel()


def build_objective(run_config, model_config) -> Objective:
    """The one factory: the objective named by `run_config.train.objective`, for a network of `model_config`
    (before the objective fits it: read the result's `model_config`)."""
    check_choice("train.objective", run_config.train.objective, OBJECTIVES)
    return OBJECTIVES[run_config.train.objective](run_config, model_config)


from . import certainty  # noqa: E402, F401  (registers the certainty objective; it builds on Diffusion)
from . import draft_verify  # noqa: E402, F401  (registers draft_verify; it builds on Autoregressive)
