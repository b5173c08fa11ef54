"""The reverse (denoising) loop for masked diffusion LMs: LLaDA-style semi-autoregressive blocks.

Works with any model callable as `model(input_ids, attention_mask=..., logits_index=...) -> logits`
whose `config` carries mask/eos ids and the `shift_logits` family property (prefix/dual caches need the
canvas-cache hook of `dlm.model.Transformer`). Rows of a batch are independent: each has its own random
generator, block, step counter, schedule, cache refreshes and stopping, so a batch gives exactly the tokens
each prompt gives alone, and a row that needs fewer steps moves on to its next block without waiting.
Finished rows leave the batch (every per-row tensor and the cache are compacted).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..errors import ConfigError, InputError
from .config import GenerationConfig
from .forward import ModelRunner
from .policies import StepInputs, get_policy
from .processors import top_k_top_p_filter
from .streamer import CallbackStreamer, StepEvent, Streamer


@dataclass
class GenerationOutput:
    sequences: list[list[int]]  # generated tokens per row (trimmed at EOS when configured)
    canvases: list[list[int]]  # whole canvas per row: prompt + generated + suffix, masks in text filled
    nfe: list[int]  # network evaluations each row took part in (CFG counts 2)
    steps: list[int]  # denoising steps each row took
    seconds: float = 0.0
    finished_early: list[bool] = field(default_factory=list)


def _row_generators(n: int, seed: int | Sequence[int] | None, device) -> list[torch.Generator]:
    if seed is None:
        seeds = torch.randint(0, 2**62, (n,)).tolist()
    elif isinstance(seed, int):
        seeds = [seed] * n
    else:
        seeds = list(seed)
        if len(seeds) != n:
            raise InputError("seed", f"got {len(seeds)} seeds for {n} prompts")
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def _per_row_uniform(gens, rows, valid: torch.Tensor, extra: tuple[int, ...], device) -> torch.Tensor:
    """Uniforms (R, A, *extra): row r draws only for its valid positions (right-aligned), so what it
    draws never depends on the rest of the batch. (One generator call per row: the price of per-row
    streams; only sampling with temperature > 0 and random-order policies draw.)"""
    R, A = valid.shape
    out = torch.full((R, A, *extra), 0.5, device=device)
    counts = valid.sum(1).tolist()
    for i, r in enumerate(rows):
        n = counts[i]
        if n:
            out[i, A - n :] = torch.rand((n, *extra), generator=gens[r], device=gens[r].device).to(device)
    return out


def _model_attr(model, name, default=None):
    cfg = getattr(model, "config", None)
    return getattr(cfg, name, default) if cfg is not None else default


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig | None = None,
    *,
    suffixes: Sequence[Sequence[int]] | None = None,
    mask_token_id: int | None = None,
    eos_token_id: int | None = None,
    streamer: Streamer | Callable[[StepEvent], None] | None = None,
    logits_processors: Sequence[Callable] = (),
    max_length: int | None = None,
) -> GenerationOutput:
    """Fill `gen_length` masks after each prompt (and before its optional suffix: infilling).

    Mask tokens already inside a prompt or suffix are filled in place, together with the first block.
    Prompts of different lengths are left-padded and carry an attention mask.
    """
    d = Denoiser(model, config, mask_token_id=mask_token_id, eos_token_id=eos_token_id, streamer=streamer,
                 logits_processors=logits_processors, max_length=max_length)  # fmt: skip
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    t0 = time.perf_counter()
    handles = d.add(prompts, suffixes)
    while d.live:
        d.step()
    if d.streamer is not None:
        d.streamer.on_end()
    res = [d.pop_result(h) for h in handles]
    return GenerationOutput(
        [r["sequence"] for r in res],
        [r["canvas"] for r in res],
        [r["nfe"] for r in res],
        [r["steps"] for r in res],
        time.perf_counter() - t0,
        [r["finished_early"] for r in res],
    )


class Denoiser:
    """The reverse loop one step at a time, for a batch whose rows come and go: `add()` joins rows (between
    steps), `step()` advances every live row by one denoising step, `cancel()` drops rows, and finished rows'
    results wait in `pop_result()`. Every row is independent (its own generator, block, step counter, schedule,
    cache refreshes and stopping), so a row gives the same tokens whichever rows share its steps: `generate()`
    is `add(all prompts)` then `step()` until none is live. All rows share the GenerationConfig (except the seed).
    """

    def __init__(
        self,
        model,
        config: GenerationConfig | None = None,
        *,
        mask_token_id: int | None = None,
        eos_token_id: int | None = None,
        streamer: Streamer | Callable[[StepEvent], None] | None = None,
        logits_processors: Sequence[Callable] = (),
        max_length: int | None = None,
    ):
        config = config or GenerationConfig()
        config.validate()
        self.model, self.config = model, config
        self.policy = get_policy(config.policy, config)
        self.mask_id = mask_token_id if mask_token_id is not None else _model_attr(model, "mask_token_id")
        if self.mask_id is None:
            raise ConfigError("mask_token_id", "the model config has no mask token id; pass mask_token_id=")
        self.eos_id = eos_token_id if eos_token_id is not None else _model_attr(model, "eos_token_id")
        self.shift = bool(_model_attr(model, "shift_logits", False))
        self.max_length = max_length or _model_attr(model, "max_seq_len")
        if streamer is not None and not isinstance(streamer, Streamer):
            streamer = CallbackStreamer(streamer)
        self.streamer = streamer
        self.logits_processors = logits_processors
        self.device = next(model.parameters()).device if hasattr(model, "parameters") else torch.device("cpu")
        self.pad_id = _model_attr(model, "pad_token_id") or 0
        self.G, self.bl = config.gen_length, config.block_size
        self.nb, self.spb = config.num_blocks, config.steps_per_block
        self.forwards_per_step = 2 if config.cfg_scale > 0 else 1
        self.eos_on = self.eos_id is not None and config.stop_at_eos
        self.L = 0
        self.runner: ModelRunner | None = None
        self.gens: dict[int, torch.Generator] = {}
        self.results: dict[int, dict] = {}
        self.next_handle = 0
        self.step_counter = 0
        dev = self.device
        z = torch.zeros(0, dtype=torch.long, device=dev)
        self.rid = z
        self.x = self.am = self.pos = torch.zeros((0, 0), dtype=torch.long, device=dev)
        self.hd = self.tm = torch.zeros((0, 0), dtype=torch.bool, device=dev)
        self.st, self.pad, self.blk, self.stp, self.count0 = z, z, z, z, z
        self.full_row = torch.zeros(0, dtype=torch.bool, device=dev)
        self.nfe, self.steps_taken = z.cpu(), z.cpu()

    @property
    def live(self) -> int:
        return int(self.rid.numel())

    def add(
        self, prompts: Sequence[Sequence[int]], suffixes: Sequence[Sequence[int]] | None = None, seeds=None
    ) -> list[int]:
        """Join rows (prompt ids, optional suffix ids); returns their handles. `seeds`: None = the config's
        seed rule (an int seeds every row alike; None draws a random seed per row), or one seed per prompt."""
        if not prompts:
            raise InputError("prompts", "pass at least one prompt")
        suffixes = suffixes if suffixes is not None else [[] for _ in prompts]
        if len(suffixes) != len(prompts):
            raise InputError("suffixes", f"got {len(suffixes)} suffixes for {len(prompts)} prompts")
        mask_id, G, dev = self.mask_id, self.G, self.device
        rows_tokens, plens = [], []
        for i, (p, s) in enumerate(zip(prompts, suffixes)):
            p, s = [int(t) for t in p], [int(t) for t in s]
            total = len(p) + G + len(s)
            if self.max_length and total > self.max_length:
                raise InputError(
                    f"prompts[{i}]",
                    f"prompt ({len(p)}) + gen_length ({G}) + suffix ({len(s)}) = {total} tokens exceeds the "
                    f"model's max_seq_len {self.max_length}",
                )
            rows_tokens.append(p + [mask_id] * G + s)
            plens.append(len(p))
        n = len(rows_tokens)
        gens = _row_generators(n, self.config.seed if seeds is None else seeds, dev)
        handles = list(range(self.next_handle, self.next_handle + n))
        self.next_handle += n
        for h, g in zip(handles, gens):
            self.gens[h] = g
        L = max(self.L, max(len(r) for r in rows_tokens))
        grow = L - self.L
        if grow:  # existing rows (if any) are left-padded further: their slots move right
            self._left_pad(grow)
        canvas = torch.full((n, L), self.pad_id, dtype=torch.long, device=dev)
        attn = torch.zeros((n, L), dtype=torch.long, device=dev)
        pads = torch.tensor([L - len(r) for r in rows_tokens], device=dev)
        for i, r in enumerate(rows_tokens):
            canvas[i, L - len(r) :] = torch.tensor(r, device=dev)
            attn[i, L - len(r) :] = 1
        start = pads + torch.tensor(plens, device=dev)
        ar_L = torch.arange(L, device=dev)
        in_gen = (ar_L[None] >= start[:, None]) & (ar_L[None] < start[:, None] + G)
        text_masks = (canvas == mask_id) & ~in_gen & attn.bool()
        hide = attn.bool() & ~in_gen & ~text_masks
        live = self.live
        if self.runner is None:
            self.runner = ModelRunner(self.model, self.config, mask_id, L, dev)
            self.policy.reset(self.next_handle, L, dev)
        else:
            self.runner.grow(grow, live, n)
            self.policy.extend(self.next_handle, L, grow)
        zeros = torch.zeros(n, dtype=torch.long, device=dev)
        cat = torch.cat
        self.rid = cat([self.rid, torch.tensor(handles, device=dev)])
        self.x, self.am = cat([self.x, canvas]), cat([self.am, attn])
        self.hd, self.tm = cat([self.hd, hide]), cat([self.tm, text_masks])
        self.st, self.pad = cat([self.st, start]), cat([self.pad, pads])
        self.pos = cat([self.pos, (attn.cumsum(1) - 1).clamp(min=0)])
        self.full_row = cat([self.full_row, text_masks.any(1)])
        self.blk, self.stp, self.count0 = cat([self.blk, zeros]), cat([self.stp, zeros]), cat([self.count0, zeros])
        self.nfe = cat([self.nfe, torch.zeros(n, dtype=torch.long)])
        self.steps_taken = cat([self.steps_taken, torch.zeros(n, dtype=torch.long)])
        self.L = L
        return handles

    def _left_pad(self, k: int) -> None:
        F = torch.nn.functional
        self.x = F.pad(self.x, (k, 0), value=self.pad_id)
        self.am = F.pad(self.am, (k, 0), value=0)
        self.pos = F.pad(self.pos, (k, 0), value=0)
        self.hd = F.pad(self.hd, (k, 0), value=False)
        self.tm = F.pad(self.tm, (k, 0), value=False)
        self.st, self.pad = self.st + k, self.pad + k

    def cancel(self, handles) -> None:
        """Drop rows (a disconnected client): they leave the batch now and produce no result."""
        drop = torch.tensor(sorted(set(handles)), device=self.device, dtype=torch.long)
        if not drop.numel() or not self.live:
            return
        gone = torch.isin(self.rid, drop)
        for h in self.rid[gone].tolist():
            self.gens.pop(h, None)
        self._keep(torch.nonzero(~gone).flatten())

    def _keep(self, keep: torch.Tensor) -> None:
        R = self.live
        self.runner.select_rows(keep, R)
        for name in ("rid", "x", "am", "hd", "tm", "st", "pad", "pos", "full_row", "blk", "stp", "count0"):
            setattr(self, name, getattr(self, name)[keep])
        kc = keep.cpu()
        self.nfe, self.steps_taken = self.nfe[kc], self.steps_taken[kc]

    def generated(self) -> dict[int, list[int]]:
        """Each live row's generated region as it stands (mask ids where still masked), by handle."""
        G = self.G
        idx = self.st[:, None] + torch.arange(G, device=self.device)[None]
        return dict(zip(self.rid.tolist(), self.x.gather(1, idx).tolist()))

    def pop_result(self, handle: int) -> dict:
        return self.results.pop(handle)

    def _finish(self, rows: torch.Tensor, early: torch.Tensor) -> None:
        G = self.G
        for j, r in enumerate(rows.tolist()):
            h = int(self.rid[r])
            row = self.x[r, int(self.pad[r]) :].tolist()
            s0 = int(self.st[r]) - int(self.pad[r])
            gen = row[s0 : s0 + G]
            if self.config.trim_at_eos and self.eos_id is not None and self.eos_id in gen:
                gen = gen[: gen.index(self.eos_id)]
            self.results[h] = {
                "sequence": gen,
                "canvas": row,
                "nfe": int(self.nfe[r]),
                "steps": int(self.steps_taken[r]),
                "finished_early": bool(early[j]),
            }
            self.gens.pop(h, None)

    def step(self) -> list[int]:
        """One denoising step for every live row; returns the handles that finished (results in pop_result)."""
        if not self.live:
            return []
        config, mask_id, dev = self.config, self.mask_id, self.device
        bl, nb, spb, G = self.bl, self.nb, self.spb, self.G
        rid, x, am, hd, tm, st, pad, pos = self.rid, self.x, self.am, self.hd, self.tm, self.st, self.pad, self.pos
        blk, stp = self.blk, self.stp
        ar_L = torch.arange(self.L, device=dev)
        runner = self.runner
        # active region of each row: its block; rows with in-text masks, during block 0: the block + those masks
        bs = st + blk * bl
        full = self.full_row & (blk == 0)
        region = ((ar_L[None] >= bs[:, None]) & (ar_L[None] < (bs + bl)[:, None])) | (full[:, None] & tm)
        region_masked = (x == mask_id) & region
        remaining = region_masked.sum(1)
        count0 = torch.where(stp == 0, remaining, self.count0)
        # only the still-masked positions of the region get logits (LM head, softmax, policy): right-aligned
        # per row in slot order, so what a row computes and draws never depends on the rest of the batch
        Q = max(int(remaining.max()), 1)
        q_slots = torch.argsort(region_masked.to(torch.int8), dim=1, stable=True)[:, -Q:]
        cand = region_masked.gather(1, q_slots)
        idx = (q_slots - 1).clamp(min=0) if self.shift else q_slots

        refresh = ws = we = None
        if runner.cache is not None:
            refresh = runner.needs_refresh(stp) | full
            ws, we = runner.window((bs - int(self.shift)).clamp(min=0), bs + bl, pos)
        logits = runner.logits(x, am, pos, hd, idx, refresh, ws, we)
        logits[..., mask_id] = float("-inf")  # never propose the mask token
        for proc in self.logits_processors:
            logits = proc(x, logits, q_slots)
        # confidence comes from the full (processed) distribution; top-k/top-p only narrow the choice
        probs = torch.softmax(logits, dim=-1)
        rows = rid.tolist()
        gens = [self.gens[h] for h in rows]
        if config.temperature > 0:
            filtered = top_k_top_p_filter(logits, config.top_k, config.top_p)
            u = _per_row_uniform(gens, range(len(rows)), cand, (logits.shape[-1],), dev)
            gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))
            x0 = torch.argmax(filtered / config.temperature + gumbel, dim=-1)
        else:
            x0 = torch.argmax(logits, dim=-1)
        x0_prob = probs.gather(-1, x0[..., None]).squeeze(-1)

        # the schedule's count (LLaDA): c0 // spb per step, the first c0 % spb steps one more
        k = count0 // spb + (stp < count0 % spb).long()
        k = torch.minimum(k.clamp(min=1), remaining)
        s = StepInputs(
            logits=logits,
            probs=probs,
            x0=x0,
            x0_prob=x0_prob,
            candidates=cand,
            num_to_commit=k,
            uniform=lambda cand=cand: _per_row_uniform(gens, range(len(rows)), cand, (), dev),
            rows=rid,
            positions=q_slots,
            step=stp,
        )
        commit = self.policy(s) & cand
        last = stp == spb - 1  # a block's last step commits whatever a policy left masked
        commit = torch.where(last[:, None], cand, commit)
        none = (commit.sum(1) == 0) & (remaining > 0)  # always at least one per row that still has masks
        best = x0_prob.masked_fill(~cand, -1.0).argmax(1)
        commit = commit | (torch.nn.functional.one_hot(best, Q).bool() & none[:, None])
        x = x.scatter(1, q_slots, torch.where(commit, x0, x.gather(1, q_slots)))
        self.nfe += self.forwards_per_step
        self.steps_taken += 1

        # move on: a row whose active region has no mask left starts its next block
        block_done = ~((x == mask_id) & region).any(1)
        blk_before = blk
        blk = blk + block_done.long()
        stp = torch.where(block_done, 0, stp + 1)
        done = blk >= nb
        early = torch.zeros_like(done)
        if self.eos_on:
            eos_done, x = _finish_at_eos(x, tm, st, G, mask_id, self.eos_id)
            early = eos_done & ~done
            done = done | eos_done
        # a row past its step budget (only a custom policy that broke the one-commit rule) ends with what it has
        done = done | (self.steps_taken.to(dev) > nb * spb)
        self.x, self.blk, self.stp, self.count0 = x, blk, stp, count0
        finished = rid[done].tolist()
        if self.streamer is not None:
            _emit(self.streamer, self.step_counter, rows, blk_before, q_slots, commit, x0, x, pad, finished, mask_id)
        self.step_counter += 1
        if finished:
            f = torch.nonzero(done).flatten()
            self._finish(f, early[f])
            self._keep(torch.nonzero(~done).flatten())
        return finished


def _finish_at_eos(x, tm, st, G, mask_id, eos_id) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose generated region holds a committed EOS with everything before it final (and no in-text mask
    left) are done: their remaining masks become EOS. Returns (done (R,), canvas)."""
    gen_idx = st[:, None] + torch.arange(G, device=x.device)[None]
    g = x.gather(1, gen_idx)
    is_eos, is_mask = g == eos_id, g == mask_id
    has_eos = is_eos.any(1)
    first_eos = torch.where(has_eos, is_eos.float().argmax(1), G)
    before = torch.arange(G, device=x.device)[None] < first_eos[:, None]
    done = has_eos & ~(is_mask & before).any(1) & ~(tm & (x == mask_id)).any(1)
    fill = done[:, None] & is_mask
    if bool(fill.any()):
        x = x.scatter(1, gen_idx, g.masked_fill(fill, eos_id))
    return done, x


def _emit(streamer, step, rows, blk, slots, commit, x0, x, pad, finished, mask_id) -> None:
    """One StepEvent (positions counted without left padding)."""
    positions, tokens, masked = [], [], []
    for j in range(len(rows)):
        q = torch.nonzero(commit[j]).flatten()
        positions.append((slots[j, q] - pad[j]).tolist())
        tokens.append(x0[j, q].tolist())
        masked.append((torch.nonzero(x[j] == mask_id).flatten() - pad[j]).tolist())
    blocks = blk.tolist()
    streamer.on_step(StepEvent(step, min(blocks), rows, positions, tokens, masked, finished, blocks))
