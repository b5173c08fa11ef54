"""The `certainty` objective: dParallel's certainty-forcing distillation (arXiv 2509.26488) for a masked or block
diffusion student trained on a teacher's completions (`dlm distill data`, `data.task: sft`).

Per SFT example the answer is masked at a drawn level t (the process's own noise), and with
`distill.complementary` also with the complementary mask (the answer tokens the first view kept), so every answer
token is predicted once per pair. The loss per view is the process's SFT loss — w · CE over the masked positions,
per answer length, averaged over rows (w the schedule's ELBO weight; the complement's, 1 / its mask rate) —
plus `distill.certainty_weight` times the mean entropy of the student's distribution at the masked positions
whose argmax is already the target: certainty is forced only where the student is right, so it learns to commit
those tokens early and many at once, without being pushed to be sure of its mistakes. The views are averaged.

`distill.mask_order: left_to_right` (the pseudo-trajectory masking of d3LLM, hao-ai-lab/d3LLM, for a teacher that
writes left to right) masks a suffix of each block (of the answer, for a full-attention student) instead of
independent tokens: the student then trains on the states a prefix-committing sampler (`threshold_prefix`) meets.
`distill.curriculum_steps` is d3LLM's noise curriculum: the drawn levels are scaled by a cap that rises linearly
from `distill.curriculum_start` to 1 over that many optimizer steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .objectives import Diffusion, register_objective


@register_objective
class CertaintyForcing(Diffusion):
    name = "certainty"
    needs_sft = True

    def __init__(self, run_config, model_config):
        super().__init__(run_config, model_config)
        if getattr(self.process, "mask_token_id", None) is None or self.process.name not in ("masked", "block"):
            raise ConfigError("diffusion.process", "the certainty objective trains masked or block students")
        self.options = run_config.distill
        self.cap = 1.0  # the noise curriculum's cap on t at this step

    def at_step(self, step: int) -> None:
        super().at_step(step)
        o = self.options
        if o.curriculum_steps:
            self.cap = min(1.0, o.curriculum_start + (1.0 - o.curriculum_start) * step / o.curriculum_steps)

    def views(self, ids, answer, generator, shard, net):
        """[(x_t, masked, per-position weight)]: the drawn mask, and with `complementary` its complement."""
        p = self.process
        t = p.training_t(net, ids, None, generator, shard)
        if self.cap < 1:
            t = (t * self.cap).clamp(min=p.config.eps)
        units = p.noise_units(net, ids) if self.options.mask_order == "left_to_right" else None
        xt, masked = p.add_noise(ids, t, generator, answer, shard, units=units)
        answer_len = answer.sum(1).clamp(min=1).float()[:, None]
        w = p.schedule.weight(t.float())
        w = (w[:, None] if w.dim() == 1 else w).expand(ids.shape)
        out = [(xt, masked, w / answer_len)]
        if self.options.complementary:
            rate = p.schedule.mask_prob(t.float())
            rate = (rate[:, None] if rate.dim() == 1 else rate).expand(ids.shape)
            kept = answer & ~masked
            out.append(
                (ids.masked_fill(kept, p.mask_token_id), kept, 1.0 / (1.0 - rate).clamp(min=p.config.eps) / answer_len)
            )
        return out

    def loss(self, net, batch, generator=None, shard=(0, 1), normalizer=None):
        ids = batch["input_ids"]
        if "prompt_lengths" not in batch and "answer_mask" not in batch:
            raise ConfigError("data.task", "the certainty objective trains on SFT data (dlm distill data); set sft")
        p = self.process
        answer = p.answer_positions(ids, batch.get("prompt_lengths"), answer_mask=batch.get("answer_mask"))
        views = self.views(ids, answer, generator, shard, net)
        total = ids.new_zeros((), dtype=torch.float32)
        for xt, masked, w in views:
            h = p.denoise(net, xt, ids, return_hidden=True)[masked]
            logits = net.head(h).float()
            logits[:, p.mask_token_id] = float("-inf")
            logp = F.log_softmax(logits, dim=-1)
            target = ids[masked]
            ce = -logp.gather(1, target[:, None]).squeeze(1)
            total = total + (ce * w[masked]).sum() / ids.shape[0]
            if self.options.certainty_weight:
                right = (logits.argmax(-1) == target).detach()
                entropy = -(logp.exp() * logp.clamp(min=-1e4)).sum(-1)
                total = total + self.options.certainty_weight * (entropy * right).sum() / right.sum().clamp(min=1)
        return total / len(views)
