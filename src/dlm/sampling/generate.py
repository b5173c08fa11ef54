"""The reverse (denoising) loop for masked diffusion LMs: LLaDA-style semi-autoregressive blocks.

Works with any model callable as `model(input_ids, attention_mask=..., logits_index=...) -> logits`
whose `config` carries mask/eos ids and the `shift_logits` family property. Rows of a batch are
independent: each has its own random generator, schedule and stopping, so a batch gives exactly the
tokens each prompt gives alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..errors import ConfigError, InputError
from .config import GenerationConfig
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
    draws never depends on the rest of the batch."""
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
    policy = get_policy(config.policy)
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
    pos = torch.arange(L, device=device)
    in_gen = (pos[None] >= start[:, None]) & (pos[None] < start[:, None] + G)
    text_masks = (canvas == mask_id) & ~in_gen & attn.bool()
    has_text_masks = bool(text_masks.any())
    prompt_tokens = attn.bool() & ~in_gen & ~text_masks  # what CFG's unconditional pass hides

    gens = _row_generators(B, config.seed, device)
    alive = torch.ones(B, dtype=torch.bool, device=device)
    nfe = [0] * B
    steps_taken = [0] * B
    finished_early = [False] * B
    spb = config.steps_per_block
    step_counter = 0

    for b in range(config.num_blocks):
        block_pos = start[:, None] + b * bl + torch.arange(bl, device=device)[None]  # (B, bl)
        full = has_text_masks and b == 0
        if full:  # positions from each row's first real token to the end (right-aligned, valid mask)
            A = L - int(pads.min())
            act = torch.arange(L - A, L, device=device)[None].expand(B, A)
            act_valid = act >= pads[:, None]
            in_block = torch.zeros((B, L), dtype=torch.bool, device=device)
            in_block.scatter_(1, block_pos, True)
            act_cand_region = in_block.gather(1, act) | text_masks.gather(1, act)
        else:
            act, act_valid = block_pos, torch.ones_like(block_pos, dtype=torch.bool)
            act_cand_region = act_valid
        region = act_cand_region & act_valid
        count0 = ((canvas.gather(1, act) == mask_id) & region).sum(1)  # masked at block start, per row

        for i in range(spb):
            still = ((canvas.gather(1, act) == mask_id) & region).sum(1)
            rows_t = torch.nonzero(alive & (still > 0)).flatten()
            if rows_t.numel() == 0:
                break
            rows = rows_t.tolist()
            x, am = canvas[rows_t], attn[rows_t]
            a_idx, a_valid, a_region = act[rows_t], act_valid[rows_t], region[rows_t]
            model_idx = (a_idx - 1).clamp(min=0) if shift else a_idx
            if config.cfg_scale > 0:
                x_un = x.masked_fill(prompt_tokens[rows_t], mask_id)
                both = model(
                    torch.cat([x, x_un]),
                    attention_mask=torch.cat([am, am]),
                    logits_index=torch.cat([model_idx, model_idx]),
                ).float()
                cond, uncond = both.chunk(2)
                logits = uncond + (config.cfg_scale + 1.0) * (cond - uncond)
            else:
                logits = model(x, attention_mask=am, logits_index=model_idx).float()
            never = torch.zeros(logits.shape[-1], dtype=torch.bool, device=device)
            never[mask_id] = True
            logits = logits.masked_fill(never, float("-inf"))  # never propose the mask token
            for proc in logits_processors:
                logits = proc(x, logits, a_idx)
            # confidence comes from the full (processed) distribution; top-k/top-p only narrow the choice
            probs = torch.softmax(logits, dim=-1)
            if config.temperature > 0:
                filtered = top_k_top_p_filter(logits, config.top_k, config.top_p)
                u = _per_row_uniform(gens, rows, a_valid, (logits.shape[-1],), device)
                gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))
                x0 = torch.argmax(filtered / config.temperature + gumbel, dim=-1)
            else:
                x0 = torch.argmax(logits, dim=-1)
            x0_prob = probs.gather(-1, x0[..., None]).squeeze(-1)
            cand = (x.gather(1, a_idx) == mask_id) & a_region
            remaining = cand.sum(1)
            c0 = count0[rows_t]
            k = c0 // spb + (i < c0 % spb).long()
            k = torch.minimum(k.clamp(min=1), remaining) if i < spb - 1 else remaining
            s = StepInputs(
                logits=logits,
                probs=probs,
                x0=x0,
                x0_prob=x0_prob,
                candidates=cand,
                num_to_commit=k,
                uniform=lambda rows=rows, a_valid=a_valid: _per_row_uniform(gens, rows, a_valid, (), device),
            )
            commit = policy(s) & cand
            if i == spb - 1:  # the block's last step commits whatever a policy left masked
                commit = cand
            else:  # always at least one per row that still has masks
                none = (commit.sum(1) == 0) & (remaining > 0)
                if none.any():
                    best = x0_prob.masked_fill(~cand, -1.0).argmax(1)
                    commit[none, best[none]] = True
            new_vals = torch.where(commit, x0, x.gather(1, a_idx))
            canvas[rows_t] = x.scatter(1, a_idx, new_vals)
            for r in rows:
                nfe[r] += 2 if config.cfg_scale > 0 else 1
                steps_taken[r] += 1

            finished: list[int] = []
            if eos_id is not None and config.stop_at_eos:
                finished, filled = _finish_rows_at_eos(canvas, rows_t, text_masks, start, G, mask_id, eos_id)
                for r in finished:
                    alive[r] = False
                for r in filled:
                    finished_early[r] = True
            if streamer is not None:
                cpos = [
                    [int(a_idx[j, q]) - int(pads[r]) for q in torch.nonzero(commit[j]).flatten().tolist()]
                    for j, r in enumerate(rows)
                ]
                ctok = [
                    [int(x0[j, q]) for q in torch.nonzero(commit[j]).flatten().tolist()] for j, r in enumerate(rows)
                ]
                masked = [(torch.nonzero(canvas[r] == mask_id).flatten() - pads[r]).tolist() for r in rows]
                streamer.on_step(StepEvent(step_counter, b, rows, cpos, ctok, masked, finished))
            step_counter += 1

    if streamer is not None:
        streamer.on_end()
    sequences, canvases = [], []
    for r in range(B):
        row = canvas[r, int(pads[r]) :].tolist()
        canvases.append(row)
        gen = canvas[r, int(start[r]) : int(start[r]) + G].tolist()
        if config.trim_at_eos and eos_id is not None and eos_id in gen:
            gen = gen[: gen.index(eos_id)]
        sequences.append(gen)
    return GenerationOutput(sequences, canvases, nfe, steps_taken, time.perf_counter() - t0, finished_early)


def _finish_rows_at_eos(canvas, rows_t, text_masks, start, G, mask_id, eos_id) -> tuple[list[int], list[int]]:
    """Rows whose generated region holds a committed EOS with everything before it final: fill the rest
    with EOS. Returns (finished rows, rows whose remaining masks were filled early)."""
    x = canvas[rows_t]
    gen_idx = start[rows_t][:, None] + torch.arange(G, device=x.device)[None]
    g = x.gather(1, gen_idx)
    is_eos = g == eos_id
    is_mask = g == mask_id
    has_eos = is_eos.any(1)
    first_eos = torch.where(has_eos, is_eos.float().argmax(1), torch.full_like(has_eos, G, dtype=torch.long))
    before = torch.arange(G, device=x.device)[None] < first_eos[:, None]
    no_text_mask = ~(text_masks[rows_t] & (x == mask_id)).any(1)
    done = has_eos & ~(is_mask & before).any(1) & no_text_mask
    done_any_mask = is_mask.any(1)
    filled = []
    for j in torch.nonzero(done & done_any_mask).flatten().tolist():
        r = int(rows_t[j])
        canvas[r].scatter_(0, gen_idx[j], g[j].masked_fill(is_mask[j], eos_id))
        filled.append(r)
    finished = [int(rows_t[j]) for j in torch.nonzero(done).flatten().tolist()]
    return finished, filled
