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
    config = config or GenerationConfig()
    config.validate()
    policy = get_policy(config.policy, config)
    mask_id = mask_token_id if mask_token_id is not None else _model_attr(model, "mask_token_id")
    if mask_id is None:
        raise ConfigError("mask_token_id", "the model config has no mask token id; pass mask_token_id=")
    eos_id = eos_token_id if eos_token_id is not None else _model_attr(model, "eos_token_id")
    shift = bool(_model_attr(model, "shift_logits", False))
    max_length = max_length or _model_attr(model, "max_seq_len")
    if streamer is not None and not isinstance(streamer, Streamer):
        streamer = CallbackStreamer(streamer)
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    if not prompts:
        raise InputError("prompts", "pass at least one prompt")
    suffixes = suffixes if suffixes is not None else [[] for _ in prompts]
    if len(suffixes) != len(prompts):
        raise InputError("suffixes", f"got {len(suffixes)} suffixes for {len(prompts)} prompts")
    device = next(model.parameters()).device if hasattr(model, "parameters") else torch.device("cpu")

    t0 = time.perf_counter()
    G, bl = config.gen_length, config.block_size
    rows_tokens = []
    for i, (p, s) in enumerate(zip(prompts, suffixes)):
        p, s = [int(t) for t in p], [int(t) for t in s]
        total = len(p) + G + len(s)
        if max_length and total > max_length:
            raise InputError(
                f"prompts[{i}]",
                f"prompt ({len(p)}) + gen_length ({G}) + suffix ({len(s)}) = {total} tokens exceeds the model's "
                f"max_seq_len {max_length}",
            )
        rows_tokens.append(p + [mask_id] * G + s)
    B = len(rows_tokens)
    L = max(len(r) for r in rows_tokens)
    pad_id = _model_attr(model, "pad_token_id") or 0
    canvas = torch.full((B, L), pad_id, dtype=torch.long, device=device)
    attn = torch.zeros((B, L), dtype=torch.long, device=device)
    pads = torch.tensor([L - len(r) for r in rows_tokens], device=device)
    for i, r in enumerate(rows_tokens):
        canvas[i, L - len(r) :] = torch.tensor(r, device=device)
        attn[i, L - len(r) :] = 1
    start = pads + torch.tensor([len(p) for p in prompts], device=device)  # first generated position
    ar_L = torch.arange(L, device=device)
    in_gen = (ar_L[None] >= start[:, None]) & (ar_L[None] < start[:, None] + G)
    text_masks = (canvas == mask_id) & ~in_gen & attn.bool()
    hide = attn.bool() & ~in_gen & ~text_masks  # what CFG's unconditional pass hides: prompt and suffix
    gens = _row_generators(B, config.seed, device)
    runner = ModelRunner(model, config, mask_id, L, device)
    policy.reset(B, L, device)
    nb, spb = config.num_blocks, config.steps_per_block
    forwards_per_step = 2 if config.cfg_scale > 0 else 1
    eos_on = eos_id is not None and config.stop_at_eos

    # outputs, indexed by batch row
    out_canvas = canvas.clone()
    nfe = torch.zeros(B, dtype=torch.long)
    steps_taken = torch.zeros(B, dtype=torch.long)
    finished_early = torch.zeros(B, dtype=torch.bool)
    # live rows: every per-row tensor below is compacted when rows finish
    rid = torch.arange(B, device=device)
    x, am, hd, tm, st, pad = canvas, attn, hide, text_masks, start, pads
    pos = (am.cumsum(1) - 1).clamp(min=0)
    full_row = tm.any(1)  # rows with masks inside their text: block 0 spans the whole row
    blk = torch.zeros(B, dtype=torch.long, device=device)  # current block
    stp = torch.zeros(B, dtype=torch.long, device=device)  # step inside it
    count0 = torch.zeros(B, dtype=torch.long, device=device)  # masks in the active region at block start
    step_counter = 0

    for _ in range(nb * spb + 1):
        R = rid.numel()
        if R == 0:
            break
        # active region of each row: its block; rows with in-text masks, during block 0: the block + those masks
        bs = st + blk * bl
        full = full_row & (blk == 0)
        region = ((ar_L[None] >= bs[:, None]) & (ar_L[None] < (bs + bl)[:, None])) | (full[:, None] & tm)
        region_masked = (x == mask_id) & region
        remaining = region_masked.sum(1)
        count0 = torch.where(stp == 0, remaining, count0)
        # only the still-masked positions of the region get logits (LM head, softmax, policy): right-aligned
        # per row in slot order, so what a row computes and draws never depends on the rest of the batch
        Q = max(int(remaining.max()), 1)
        q_slots = torch.argsort(region_masked.to(torch.int8), dim=1, stable=True)[:, -Q:]
        cand = region_masked.gather(1, q_slots)
        idx = (q_slots - 1).clamp(min=0) if shift else q_slots

        refresh = ws = we = None
        if runner.cache is not None:
            refresh = runner.needs_refresh(stp) | full
            ws, we = runner.window((bs - int(shift)).clamp(min=0), bs + bl, pos)
        logits = runner.logits(x, am, pos, hd, idx, refresh, ws, we)
        logits[..., mask_id] = float("-inf")  # never propose the mask token
        for proc in logits_processors:
            logits = proc(x, logits, q_slots)
        # confidence comes from the full (processed) distribution; top-k/top-p only narrow the choice
        probs = torch.softmax(logits, dim=-1)
        rows = rid.tolist()
        if config.temperature > 0:
            filtered = top_k_top_p_filter(logits, config.top_k, config.top_p)
            u = _per_row_uniform(gens, rows, cand, (logits.shape[-1],), device)
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
            uniform=lambda rows=rows, cand=cand: _per_row_uniform(gens, rows, cand, (), device),
            rows=rid,
            positions=q_slots,
            step=stp,
        )
        commit = policy(s) & cand
        last = stp == spb - 1  # a block's last step commits whatever a policy left masked
        commit = torch.where(last[:, None], cand, commit)
        none = (commit.sum(1) == 0) & (remaining > 0)  # always at least one per row that still has masks
        best = x0_prob.masked_fill(~cand, -1.0).argmax(1)
        commit = commit | (torch.nn.functional.one_hot(best, Q).bool() & none[:, None])
        x = x.scatter(1, q_slots, torch.where(commit, x0, x.gather(1, q_slots)))
        nfe[rid.cpu()] += forwards_per_step
        steps_taken[rid.cpu()] += 1

        # move on: a row whose active region has no mask left starts its next block
        block_done = ~((x == mask_id) & region).any(1)
        blk_before = blk
        blk = blk + block_done.long()
        stp = torch.where(block_done, 0, stp + 1)
        done = blk >= nb
        if eos_on:
            eos_done, x = _finish_at_eos(x, tm, st, G, mask_id, eos_id)
            filled = eos_done & ~done
            finished_early[rid[filled].cpu()] = True
            done = done | eos_done
        if streamer is not None:
            _emit(streamer, step_counter, rows, blk_before, q_slots, commit, x0, x, pad, rid[done].tolist(), mask_id)
        step_counter += 1
        if bool(done.any()):
            out_canvas[rid[done]] = x[done]
            keep = torch.nonzero(~done).flatten()
            runner.select_rows(keep, R)
            rid, x, am, hd, tm, st, pad, pos, full_row, blk, stp, count0 = (
                t[keep] for t in (rid, x, am, hd, tm, st, pad, pos, full_row, blk, stp, count0)
            )
    if rid.numel():  # only reachable if a custom policy broke the one-commit rule; keep what there is
        out_canvas[rid] = x

    if streamer is not None:
        streamer.on_end()
    sequences, canvases = [], []
    for r in range(B):
        row = out_canvas[r, int(pads[r]) :].tolist()
        canvases.append(row)
        gen = out_canvas[r, int(start[r]) : int(start[r]) + G].tolist()
        if config.trim_at_eos and eos_id is not None and eos_id in gen:
            gen = gen[: gen.index(eos_id)]
        sequences.append(gen)
    return GenerationOutput(
        sequences,
        canvases,
        nfe.tolist(),
        steps_taken.tolist(),
        time.perf_counter() - t0,
        finished_early.tolist(),
    )


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
