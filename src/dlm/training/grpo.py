"""diffu-GRPO (d1: Zhao et al., arXiv 2504.12216): reinforcement learning with verifier rewards for a masked
diffusion model, after SFT.

One outer step:
1. **Rollouts.** `prompts_per_step` training prompts of a task, `group_size` completions each, from dlm's own
   sampler at `temperature` (each completion with its own seed).
2. **Rewards** from the task's exact verifier (1 right, 0 wrong); **group-relative advantages** A = r - mean(r)
   over the completions of one prompt (no division by the group's standard deviation: it would weigh prompts
   that are almost always solved or almost never solved up; Dr. GRPO, arXiv 2503.20783).
3. **Per-token log-probabilities in one forward** (d1's estimator): the whole completion masked, each prompt
   token masked with probability `prompt_mask_prob`; log pi(o_k | masked prompt, all-masked completion) at
   every completion position. Each of the `inner_steps` updates draws a fresh prompt mask, so the updates see
   the prompt under different masks (d1's regulariser).
4. **Loss** per completion token: -min(rho A, clip(rho, 1 - eps, 1 + eps) A) + beta KL, rho =
   pi_theta / pi_old (pi_old: the weights that made the rollouts, under the same mask), KL the k3 estimator
   exp(ref - logp) - (ref - logp) - 1 against the model before RL; averaged over each completion's tokens,
   then over completions.

`train_grpo()` runs it on a DiffusionLM and a task suite (`dlm rl`); `grpo_loss()`, `group_advantages()` and
`completion_logprobs()` are the pieces, each checked by hand in tests/unit/test_grpo.py.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..diffusion.masked import masked_cross_entropy
from ..errors import ConfigError, InputError


@dataclass
class GRPOConfig:
    steps: int = 50  # outer steps: one batch of rollouts each
    prompts_per_step: int = 4
    group_size: int = 8  # completions per prompt (G)
    inner_steps: int = 2  # gradient updates per batch of rollouts (d1's mu), each with a fresh prompt mask
    prompt_mask_prob: float = 0.15  # d1's random prompt masking for the log-probability forward
    clip_eps: float = 0.2
    beta: float = 0.04  # weight of the KL to the model before RL
    lr: float = 1e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 = off
    temperature: float = 1.0  # rollout sampling temperature
    steps_per_answer: int | None = None  # denoising steps per rollout (None: one token per forward)
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "prompts_per_step", "inner_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(name, f"got {v!r}; must be an integer >= 1")
        if not isinstance(self.group_size, int) or self.group_size < 2:
            raise ConfigError("group_size", f"got {self.group_size!r}; must be an integer >= 2 (advantages compare "
                              "completions of one prompt)")  # fmt: skip
        if not 0.0 <= self.prompt_mask_prob < 1.0:
            raise ConfigError("prompt_mask_prob", f"got {self.prompt_mask_prob}; must be in [0, 1)")
        if not 0.0 < self.clip_eps < 1.0:
            raise ConfigError("clip_eps", f"got {self.clip_eps}; must be in (0, 1)")
        if self.beta < 0 or self.lr <= 0 or self.temperature < 0:
            raise ConfigError("beta/lr/temperature", "beta >= 0, lr > 0 and temperature >= 0 are required")


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """A_i = r_i - mean of its group; rewards (P * G,) with each prompt's G completions adjacent."""
    if rewards.numel() % group_size:
        raise InputError("rewards", f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)
    return (r - r.mean(1, keepdim=True)).view(-1)


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip_eps: float, beta: float) -> torch.Tensor:
    """The clipped surrogate with a KL penalty. logp, old_logp, ref_logp: (N, L) per-token log-probabilities of
    N completions (only `logp` carries gradients); advantages (N,); mask (N, L) bool marks completion tokens.
    Per token -min(rho A, clip(rho) A) + beta * k3(ref, logp); mean over each row's tokens, then over rows."""
    ratio = torch.exp(logp - old_logp)
    a = advantages[:, None].to(logp.dtype)
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)
    d = ref_logp - logp
    kl = torch.exp(d) - d - 1
    per_token = (-surrogate + beta * kl) * mask
    return (per_token.sum(1) / mask.sum(1).clamp(min=1)).mean()


def completion_logprobs(
    lm, rows: torch.Tensor, prompt_mask: torch.Tensor, completion: torch.Tensor, key_mask: torch.Tensor,
    prompt_mask_prob: float, generator: torch.Generator,
) -> torch.Tensor:
    """(N, L) log pi(token | noisy input) at the completion positions (0 elsewhere), from one forward of the
    rows with every completion token masked and each prompt token masked with probability prompt_mask_prob
    (the mask token is never a prediction, as in training)."""
    mask_id = lm.model.config.mask_token_id
    u = torch.rand(rows.shape, generator=generator, device=rows.device)
    hide = completion | (prompt_mask & (u < prompt_mask_prob))
    xt = torch.where(hide, torch.full_like(rows, mask_id), rows)
    logits = lm.process.denoise(lm.model, xt, rows, attention_mask=key_mask)
    return -masked_cross_entropy(logits, rows, completion, mask_id)


def _rollouts(lm, examples, cfg: GRPOConfig, gen_length: int, seeds: list[int]):
    """group_size completions per example: (rows (N, L) right-padded, prompt positions, completion positions,
    key mask, the completions' texts). An example's answer template (`Example.template`) is decoded as in SFT and
    evaluation: its locked tokens stand from the start and are not completion positions (no decision, no score)."""
    from ..sampling.generate import Denoiser

    tok = lm.tokenizer
    G = cfg.group_size
    ids = [tok.encode(tok.apply_chat_template(ex.messages(with_answer=False), add_generation_prompt=True,
                                              tokenize=False)) for ex in examples]  # fmt: skip
    steps = cfg.steps_per_answer or gen_length
    gcfg = lm.make_config(None, gen_length=gen_length, block_length=gen_length, steps=steps,
                          temperature=cfg.temperature)  # fmt: skip
    prompts = [p for p in ids for _ in range(G)]
    tpls = [tok.encode_template(ex.template, f"examples[{i}].template") if ex.template else []
            for i, ex in enumerate(examples)]  # fmt: skip
    templates = [t for t in tpls for _ in range(G)] if any(tpls) else None
    d = Denoiser(lm.model, gcfg, process=lm.process)
    handles = d.add(prompts, seeds=seeds, templates=templates)
    while d.live:
        d.step()
    res = [d.pop_result(h) for h in handles]
    L = max(len(p) + gen_length for p in prompts)
    pad = lm.model.config.pad_token_id if lm.model.config.pad_token_id is not None else 0
    rows = torch.full((len(prompts), L), pad, dtype=torch.long)
    prompt_pos = torch.zeros_like(rows, dtype=torch.bool)
    comp_pos = torch.zeros_like(rows, dtype=torch.bool)
    locked = torch.zeros_like(rows, dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, res)):
        whole = r["canvas"][: len(p) + gen_length]  # the prompt and the whole generated span (its EOS padding too)
        rows[i, : len(whole)] = torch.tensor(whole)
        prompt_pos[i, : len(p)] = True
        comp_pos[i, len(p) : len(whole)] = True
        for k, t in enumerate(templates[i] if templates else []):
            if t != tok.mask_token_id:  # a locked token: given (a clean key), not decided
                comp_pos[i, len(p) + k] = False
                locked[i, len(p) + k] = True
    texts = [tok.decode(r["sequence"], skip_special_tokens=True) for r in res]
    return rows, prompt_pos, comp_pos, prompt_pos | comp_pos | locked, texts


def train_grpo(lm, task, cfg: GRPOConfig, out_dir: str | Path | None = None, log=print) -> dict:
    """diffu-GRPO on `task`'s training split; updates lm.model in place, saves it to out_dir (if given) with
    grpo_history.json (mean reward, loss and seconds per step). Returns that history."""
    from ..tasks import answer_length

    if lm.is_causal:
        raise InputError("model", "diffu-GRPO trains a diffusion model; this one is causal (an AR twin)")
    if lm.model.config.mask_token_id is None:
        raise InputError("model", "the model has no mask token")
    rng = random.Random(f"grpo:{cfg.seed}")
    gen = torch.Generator().manual_seed(cfg.seed)
    pool = task.examples("train", max(cfg.prompts_per_step * cfg.steps, 1))
    gen_length = answer_length(lm, pool[:64], lm.generation_config.block_length or 32)
    ref = copy.deepcopy(lm.model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    model = lm.model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)  # fmt: skip
    history = []
    ref_lm = copy.copy(lm)
    ref_lm.model = ref
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        exs = pool[step * cfg.prompts_per_step : (step + 1) * cfg.prompts_per_step]
        seeds = [rng.randrange(2**62) for _ in range(len(exs) * cfg.group_size)]
        model.eval()
        with torch.no_grad():
            rows, prompt_pos, comp_pos, key_mask, texts = _rollouts(lm, exs, cfg, gen_length, seeds)
        rewards = torch.tensor([float(task.verify(ex, t)) for ex, t in zip(
            [ex for ex in exs for _ in range(cfg.group_size)], texts)])  # fmt: skip
        adv = group_advantages(rewards, cfg.group_size)
        # one prompt mask per inner update, drawn up front: pi_old and the reference are scored under it
        mask_seeds = [int(torch.randint(0, 2**62, (1,), generator=gen)) for _ in range(cfg.inner_steps)]
        with torch.no_grad():
            old = [completion_logprobs(lm, rows, prompt_pos, comp_pos, key_mask, cfg.prompt_mask_prob,
                                       torch.Generator().manual_seed(s)) for s in mask_seeds]  # fmt: skip
            refs = [completion_logprobs(ref_lm, rows, prompt_pos, comp_pos, key_mask, cfg.prompt_mask_prob,
                                        torch.Generator().manual_seed(s)) for s in mask_seeds]  # fmt: skip
        losses = []
        model.train()
        for k, s in enumerate(mask_seeds):
            if not adv.abs().sum() and cfg.beta == 0:
                break  # every group agreed: nothing to learn from this batch
            logp = completion_logprobs(lm, rows, prompt_pos, comp_pos, key_mask, cfg.prompt_mask_prob,
                                       torch.Generator().manual_seed(s))  # fmt: skip
            loss = grpo_loss(logp, old[k], refs[k], adv, comp_pos, cfg.clip_eps, cfg.beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
        model.eval()
        rec = {"step": step + 1, "reward": float(rewards.mean()), "loss": sum(losses) / len(losses) if losses else
               math.nan, "seconds": time.perf_counter() - t0}  # fmt: skip
        history.append(rec)
        log(json.dumps(rec))
    if out_dir is not None:
        out = Path(out_dir)
        lm.save_pretrained(out)
        (out / "grpo_history.json").write_text(json.dumps({"config": asdict(cfg), "task": task.name,
                                                           "history": history}, indent=1))  # fmt: skip
    return {"config": asdict(cfg), "history": history}
