"""Left-to-right decoding with a KV cache, for causal models (the AR twin every claim is measured against).

Same GenerationConfig, output type, per-row generators and streamer events as the diffusion sampler;
`gen_length` is the number of new tokens and `steps` is ignored (one token per forward); `dtype="bfloat16"`
runs the forwards under autocast. An answer template locks tokens as the diffusion sampler's do: a locked
position takes the template's token instead of a prediction (forced decoding), so both see the same givens.
With `draft_block` set and a request that greedy verification keeps (`speculative.speculates`) it hands over to
`speculative.generate_speculative`: a model trained to draft (`draft_verify`) writes the same text in fewer forwards.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Sequence

import torch

from ..errors import InputError
from ..model import KVCache
from .config import GenerationConfig
from .constraints import Constraint, check_guides
from .generate import GenerationOutput, _model_attr, _row_generators
from .processors import config_processors, top_k_top_p_filter
from .rows import template_locks
from .speculative import generate_speculative, speculates
from .streamer import CallbackStreamer, StepEvent, Streamer


@torch.no_grad()
def generate_autoregressive(
    model,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig | None = None,
    *,
    eos_token_id: int | None = None,
    streamer: Streamer | Callable[[StepEvent], None] | None = None,
    logits_processors: Sequence[Callable] = (),
    max_length: int | None = None,
    templates: Sequence[Sequence[int]] | None = None,
    mask_token_id: int | None = None,
    constraints: Sequence[Constraint | None] | None = None,
) -> GenerationOutput:
    config = config or GenerationConfig()
    if speculates(config, templates, constraints, logits_processors):  # a drafting model: the same text, fewer forwards
        return generate_speculative(model, prompts, config, eos_token_id=eos_token_id, mask_token_id=mask_token_id,
                                    streamer=streamer, max_length=max_length)  # fmt: skip
    eos_id = eos_token_id if eos_token_id is not None else _model_attr(model, "eos_token_id")
    max_length = max_length or _model_attr(model, "max_seq_len")
    if streamer is not None and not isinstance(streamer, Streamer):
        streamer = CallbackStreamer(streamer)
    prompts = [[int(t) for t in p] for p in prompts]
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InputError("prompts", "autoregressive decoding needs at least one non-empty prompt")
    for i, p in enumerate(prompts):
        if max_length and len(p) + config.gen_length > max_length:
            raise InputError(
                f"prompts[{i}]",
                f"prompt ({len(p)}) + gen_length ({config.gen_length}) exceeds the model's max_seq_len {max_length}",
            )
    locks = template_locks(
        templates,
        len(prompts),
        config.gen_length,
        mask_token_id if mask_token_id is not None else _model_attr(model, "mask_token_id"),
    )
    guides = [c.guide() if c is not None else None for c in check_guides(constraints, len(prompts), locks)]
    device = next(model.parameters()).device
    forced = torch.zeros((len(prompts), config.gen_length), dtype=torch.bool, device=device)
    forced_tok = torch.zeros((len(prompts), config.gen_length), dtype=torch.long, device=device)
    for r, lock in enumerate(locks):
        for k, t in lock.items():
            forced[r, k], forced_tok[r, k] = True, t
    t0 = time.perf_counter()
    B, P = len(prompts), max(len(p) for p in prompts)
    pad_id = _model_attr(model, "pad_token_id") or 0
    ids = torch.full((B, P), pad_id, dtype=torch.long, device=device)
    attn = torch.zeros((B, P), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = torch.tensor(p, device=device)
        attn[i, P - len(p) :] = 1
    gens = _row_generators(B, config.seed, device)
    cache = KVCache()
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if config.dtype == "bfloat16" else contextlib.nullcontext()
    with amp:
        logits = model(ids, attention_mask=attn, cache=cache, logits_index=torch.full((B, 1), P - 1, device=device))
    out = [[] for _ in range(B)]
    done = [False] * B
    nfe = [1] * B
    processors = [*logits_processors, *config_processors(config, eos_id)]
    history = torch.where(attn.bool(), ids, -1)  # what processors see: the decided tokens, -1 on padding
    for step in range(config.gen_length):
        logits = logits[:, -1].float()
        if processors:
            at = torch.full((B, 1), history.shape[1], device=device)
            for proc in processors:
                logits = proc(history, logits[:, None], at)[:, 0]
        for r, g in enumerate(guides):  # the grammar's next-token mask (EOS once it has ended)
            if g is not None and not done[r]:
                if g.stopped:
                    logits[r] = torch.where(torch.arange(logits.shape[-1], device=device) == eos_id, 0.0, float("-inf"))
                else:
                    g.mask_(logits[r])
        if config.temperature > 0:
            filtered = top_k_top_p_filter(logits, config.top_k, config.top_p)
            u = torch.stack([torch.rand(logits.shape[-1], generator=g, device=g.device) for g in gens]).to(device)
            gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))
            nxt = torch.argmax(filtered / config.temperature + gumbel, dim=-1)
        else:
            nxt = torch.argmax(logits, dim=-1)
        nxt = torch.where(forced[:, step], forced_tok[:, step], nxt)
        rows, positions, tokens, finished = [], [], [], []
        for r in range(B):
            if done[r]:
                continue
            t = int(nxt[r])
            if guides[r] is not None:
                guides[r].accept([t])
            out[r].append(t)
            rows.append(r)
            positions.append([len(prompts[r]) + len(out[r]) - 1])
            tokens.append([t])
            if eos_id is not None and t == eos_id and config.stop_at_eos:
                done[r] = True
                finished.append(r)
        if streamer is not None:
            streamer.on_step(StepEvent(step, 0, rows, positions, tokens, [], finished))
        if all(done) or step == config.gen_length - 1:
            break
        ids = nxt[:, None]
        if processors:
            history = torch.cat([history, ids], dim=1)
        attn = torch.cat([attn, torch.ones((B, 1), dtype=attn.dtype, device=device)], dim=1)
        with amp:
            logits = model(ids, attention_mask=attn, cache=cache)
        for r in range(B):
            nfe[r] += 0 if done[r] else 1
    if streamer is not None:
        streamer.on_end()
    sequences = []
    for r in range(B):
        seq = out[r]
        if config.trim_at_eos and eos_id is not None and eos_id in seq:
            seq = seq[: seq.index(eos_id)]
        sequences.append(seq)
    canvases = [p + o for p, o in zip(prompts, out)]
    return GenerationOutput(
        sequences, canvases, nfe, [len(o) for o in out], time.perf_counter() - t0, [d for d in done]
    )
