"""Self-speculative decoding: a causal network drafts with masked blocks and verifies with its AR head in the same
forward (TiDAR, arXiv 2511.08923), for networks trained by the `draft_verify` objective.

A row's state between forwards: its committed tokens, all K/V-cached but the last one, c, and up to k - 1 drafts
d_1 .. d_m for what follows c (k = `GenerationConfig.draft_block`). One forward runs over

    c, d_1 .. d_m   (causal: the AR head's next-token logits a_1 .. a_{m+1})
    m + 1 blocks of k masks, block j placed right after c, d_1 .. d_j and seeing only those clean tokens

The drafts are verified greedily: j = the number of leading d_i equal to a_i; c, d_1 .. d_j go into the cache and
d_1 .. d_j, a_{j+1} are committed (1 .. k tokens per forward). Block j is the one that was drafted after exactly
that prefix: its slots' shifted predictions (slot s predicts the token after it) are the next drafts, for the k - 1
positions after a_{j+1}. The committed text is the AR head's greedy decoding token for token, whatever the drafts
are: only the speed depends on how well the network drafts. Greedy only.

Batches: every row keeps its K/V in one canvas buffer (`CanvasCache`, a window per round at the row's own length),
so rows that accepted different numbers of drafts need no copying: a round writes its slots' K/V after the row's
verified keys and attends to those and its own; what was not accepted is masked out and overwritten next round.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Sequence

import torch

from ..errors import InputError
from ..model import CanvasCache
from .config import GenerationConfig
from .generate import GenerationOutput, _model_attr
from .streamer import CallbackStreamer, StepEvent, Streamer


def speculates(config: GenerationConfig, templates=None, constraints=None, logits_processors=()) -> bool:
    """Whether a causal model's request runs self-speculatively: `draft_block` set and nothing the greedy
    verification cannot keep (sampling, n-gram blocking, answer templates, grammars, logits processors). Otherwise
    it decodes one token per forward, which gives the text the same request would get anyway: `draft_block` is a
    speed setting only."""
    extras = (templates, constraints, logits_processors)
    if any(x and any(v is not None for v in x) for x in extras):
        return False
    return config.draft_block >= 2 and config.temperature == 0 and not config.no_repeat_ngram_size


def draft_round_layout(past: int, drafts: int, k: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(position ids (1, Q), attention mask (1, 1, Q, past + Q) bool) of one round's forward: 1 + `drafts` clean
    slots (c and the drafts, causal) at positions past.., then drafts + 1 blocks of k masks, block j at positions
    past + j + 1 .. past + j + k, seeing every cached key, the clean slots 0 .. j, and its own block."""
    n = 1 + drafts
    q = n + n * k
    clean = torch.arange(n, device=device)
    block = torch.arange(n, device=device).repeat_interleave(k)  # block j of each mask slot
    offset = torch.arange(k, device=device).repeat(n)
    positions = torch.cat([past + clean, past + block + 1 + offset])[None]
    mask = torch.zeros((q, past + q), dtype=torch.bool, device=device)
    mask[:, :past] = True
    mask[:n, past : past + n] = clean[None, :] <= clean[:, None]
    mask[n:, past : past + n] = clean[None, :] <= block[:, None]
    mask[n:, past + n :] = block[None, :] == block[:, None]
    return positions, mask[None, None]


@torch.no_grad()
def generate_speculative(
    model,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    *,
    eos_token_id: int | None = None,
    mask_token_id: int | None = None,
    streamer: Streamer | Callable[[StepEvent], None] | None = None,
    max_length: int | None = None,
) -> GenerationOutput:
    k = config.draft_block
    if k < 2:
        raise InputError("draft_block", f"got {k}; self-speculative decoding drafts blocks of >= 2 tokens")
    if config.temperature > 0:
        raise InputError("temperature", "self-speculative decoding (draft_block) is greedy: set temperature 0")
    if config.no_repeat_ngram_size:
        raise InputError("no_repeat_ngram_size", "not available with draft_block (the drafts are verified greedily)")
    if _model_attr(model, "attention") not in (None, "causal"):
        raise InputError("draft_block", "self-speculative decoding needs a causal model (train.objective draft_verify)")
    eos_id = eos_token_id if eos_token_id is not None else _model_attr(model, "eos_token_id")
    mask_id = mask_token_id if mask_token_id is not None else _model_attr(model, "mask_token_id")
    if mask_id is None:
        raise InputError("mask_token_id", "self-speculative decoding drafts with a mask token; the model has none")
    max_length = max_length or _model_attr(model, "max_seq_len")
    prompts = [[int(t) for t in p] for p in prompts]
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InputError("prompts", "self-speculative decoding needs at least one non-empty prompt")
    for i, p in enumerate(prompts):
        # a round reaches k positions past its last committed token (the blocks' masks)
        if max_length and len(p) + config.gen_length + k > max_length:
            raise InputError(
                f"prompts[{i}]",
                f"prompt ({len(p)}) + gen_length ({config.gen_length}) + draft_block ({k}) exceeds the model's "
                f"max_seq_len {max_length}",
            )
    if streamer is not None and not isinstance(streamer, Streamer):
        streamer = CallbackStreamer(streamer)
    device = next(model.parameters()).device
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if config.dtype == "bfloat16" else contextlib.nullcontext()
    t0 = time.perf_counter()
    out, nfe, rounds, done = _decode(model, prompts, config, k, eos_id, int(mask_id), device, amp, streamer)
    if streamer is not None:
        streamer.on_end()
    sequences = []
    for seq in out:
        if config.trim_at_eos and eos_id is not None and eos_id in seq:
            seq = seq[: seq.index(eos_id)]
        sequences.append(seq)
    canvases = [p + o for p, o in zip(prompts, out)]
    return GenerationOutput(sequences, canvases, nfe, rounds, time.perf_counter() - t0, done)


def _decode(model, prompts, config, k, eos_id, mask_id, device, amp, streamer):
    """(generated tokens, forwards, rounds, ended at EOS) per row."""
    B, G = len(prompts), config.gen_length
    longest = max(len(p) for p in prompts)
    cache = CanvasCache(longest + G + k + k * k, lazy=True)
    lengths = [len(p) - 1 for p in prompts]  # verified keys in the cache, per row
    nfe = [0] * B
    if longest > 1:  # prefill every prompt but its last token (right-padded: padding lands past a row's length)
        pad = longest - 1
        ids = torch.tensor([p[:-1] + [mask_id] * (pad - len(p) + 1) for p in prompts], device=device)
        slots = torch.arange(pad, device=device)[None].expand(B, pad)
        causal = torch.ones((pad, pad), dtype=torch.bool, device=device).tril()[None, None]
        with amp:
            model(
                ids,
                attention_mask=causal,
                position_ids=slots,
                cache=cache.window(slots, pad),
                logits_index=slots[:, :1],
            )
        nfe = [int(len(p) > 1) for p in prompts]
    c = [p[-1] for p in prompts]
    drafts: list[list[int]] = [[] for _ in range(B)]
    out: list[list[int]] = [[] for _ in range(B)]
    done, rounds = [False] * B, [0] * B
    live = list(range(B))  # rows still writing, in cache-row order
    layouts: dict[int, tuple] = {}  # per number of drafts: positions, mask and head slots of a round
    step = 0
    while live:
        m = len(drafts[live[0]])  # 0 in the first round, k - 1 after: the same for every live row
        n = 1 + m
        if m not in layouts:
            rel_pos, layout = draft_round_layout(0, m, k, device)
            # the head runs where a prediction is read: the clean slots, and block j's slots 0 .. k-2 (the tokens
            # after a_{j+1}); a block's last slot only gives the others context
            clean = torch.arange(n, device=device)
            heads = torch.cat([clean, n + (clean[:, None] * k + torch.arange(k - 1, device=device)[None]).flatten()])
            layouts[m] = rel_pos, layout[0, 0], heads[None]
        rel_pos, layout, heads = layouts[m]
        q = rel_pos.shape[1]
        base = torch.tensor([lengths[r] for r in live], device=device)  # (R,)
        keys = int(base.max()) + q
        rel = torch.arange(keys, device=device)[None] - base[:, None]  # (R, K): key slot relative to the round start
        inside = (rel >= 0) & (rel < q)
        mask = (rel < 0)[:, None, :] | (inside[:, None, :] & layout[:, rel.clamp(0, q - 1)].transpose(0, 1))
        tokens = torch.tensor([[c[r], *drafts[r]] + [mask_id] * (n * k) for r in live], device=device)
        with amp:
            logits = model(
                tokens,
                attention_mask=mask[:, None],
                position_ids=base[:, None] + rel_pos,
                cache=cache.window(base[:, None] + torch.arange(q, device=device)[None], keys),
                logits_index=heads.expand(len(live), -1),
            ).float()
        verify = logits[:, :n].argmax(-1).tolist()  # verify[i][t]: the AR head's token after clean slot t
        drafted = logits[:, n:].unflatten(1, (n, k - 1))  # block j's predictions of the k - 1 tokens after a_{j+1}
        drafted[..., mask_id] = float("-inf")
        drafted = drafted.argmax(-1).tolist()
        finished, rows, at, committed = [], [], [], []
        for i, r in enumerate(live):
            j = 0
            while j < m and drafts[r][j] == verify[i][j]:
                j += 1
            lengths[r] += 1 + j
            new = (drafts[r][:j] + [verify[i][j]])[: G - len(out[r])]
            if eos_id is not None and config.stop_at_eos and eos_id in new:
                new, done[r] = new[: new.index(eos_id) + 1], True
            at.append(list(range(len(prompts[r]) + len(out[r]), len(prompts[r]) + len(out[r]) + len(new))))
            out[r].extend(new)
            nfe[r] += 1
            rounds[r] += 1
            rows.append(r)
            committed.append(new)
            c[r], drafts[r] = new[-1], drafted[i][j]
            if done[r] or len(out[r]) >= G:
                finished.append(r)
        if streamer is not None:
            streamer.on_step(StepEvent(step, 0, rows, at, committed, [], [r for r in finished if done[r]]))
        step += 1
        if finished:
            keep = [i for i, r in enumerate(live) if r not in finished]
            live = [live[i] for i in keep]
            if live:
                cache.select_rows(torch.tensor(keep, device=device))
    return out, nfe, rounds, done
