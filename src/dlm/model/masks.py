"""Attention masks, built in one place: an attention kind (bidirectional | causal | block_causal) composed
with padding (a key mask) and packing (segment ids: several examples per row, each with its own positions).

Rule for a query at key slot q and a key at slot k (True = may attend):

    real(k) & same_segment(q, k) & structure(q, k)      or q == k (a query always sees itself)

with structure: bidirectional → always; causal → k <= q (slots); block_causal → block(pos k) <= block(pos q),
block(p) = p // block_size on positions, so left padding and packing never move block boundaries: each segment
counts its own blocks from its own position 0. The network (`build_attention_mask`) and the trainer's packed
view (`dlm.training.module.Segmented`) both call `build_mask`.
"""

from __future__ import annotations

import torch

from ..errors import check_choice
from .config import ATTENTION_KINDS


def key_positions(key_mask: torch.Tensor | None, k_len: int, device, segment_ids: torch.Tensor | None = None):
    """(B|1, K) long: the position of each key slot: the number of real keys (key_mask) before it in its segment
    (left padding keeps a prompt's positions; a packed example starts at 0). Padding slots repeat a neighbour's."""
    if key_mask is None and segment_ids is None:
        return torch.arange(k_len, device=device)[None]
    real = torch.ones_like(segment_ids, dtype=torch.long) if key_mask is None else key_mask.long()
    count = real.cumsum(-1)  # real keys up to and including each slot
    if segment_ids is not None:
        start = torch.ones_like(segment_ids, dtype=torch.bool)
        start[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
        before = count - real  # nondecreasing, so cummax carries each segment start's value forward
        count = count - torch.where(start, before, torch.zeros_like(before)).cummax(-1).values
    return (count - 1).clamp(min=0)


def _gather(per_key: torch.Tensor, q_slots: torch.Tensor) -> torch.Tensor:
    rows = max(per_key.shape[0], q_slots.shape[0])
    return per_key.expand(rows, -1).gather(1, q_slots.expand(rows, -1))


def build_mask(
    kind: str,
    k_len: int,
    *,
    q_slots: torch.Tensor | None = None,
    key_mask: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    block_size: int = 1,
    device=None,
) -> torch.Tensor | None:
    """Boolean (B|1, 1, Q, K) mask, True = may attend; None when nothing is masked (bidirectional, no padding,
    no packing: attention's fast path).

    q_slots (B|1, Q): the key slots the queries sit at (default: every slot, Q = K). key_mask (B, K): 1 for real
    keys. segment_ids (B, K): packing; a query sees only keys of its own segment. positions (B, K): the keys'
    positions for block_causal (default: `key_positions`, per segment). Rows that are all padding stay finite:
    with a key mask a query always attends to itself.
    """
    device = (
        device
        if device is not None
        else next((t.device for t in (q_slots, key_mask, segment_ids, positions) if t is not None), None)
    )
    if q_slots is None:
        q_slots = torch.arange(k_len, device=device)[None]
    qi = q_slots[:, :, None]  # (B|1, Q, 1)
    kj = torch.arange(k_len, device=device)[None, None, :]  # (1, 1, K)
    allowed = None
    if kind == "causal":
        allowed = kj <= qi
    elif kind == "block_causal":
        if positions is None:
            positions = key_positions(key_mask, k_len, device, segment_ids)
        blocks = positions // block_size
        allowed = blocks[:, None, :] <= _gather(blocks, q_slots)[:, :, None]
    else:
        check_choice("model.attention", kind, ATTENTION_KINDS)
    if segment_ids is not None:
        same = segment_ids[:, None, :] == _gather(segment_ids, q_slots)[:, :, None]
        allowed = same if allowed is None else same & allowed
    if key_mask is None:
        return None if allowed is None else allowed[:, None]
    keys = key_mask.to(torch.bool)[:, None, :]  # (B, 1, K)
    mask = keys if allowed is None else keys & allowed
    return (mask | (kj == qi))[:, None]


def two_stream_mask(
    length: int,
    block_size: int,
    *,
    key_mask: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    device=None,
) -> torch.Tensor:
    """BD3-LM's mask over the two-stream input x_t ⊕ x_0 (2L slots: the noisy copy first, then the clean copy,
    both at the same positions): boolean (B|1, 1, 2L, 2L), True = may attend.

    With block(p) = p // block_size on positions (per segment, as in `build_mask`):
    noisy q → noisy k: same block (bidirectional within a noisy block); noisy q → clean k: block(k) < block(q)
    (every earlier clean block); clean q → clean k: block(k) <= block(q) (block-causal); clean q → noisy k:
    never. Composed with padding (`key_mask` (B, L), 1 = real) and packing (`segment_ids` (B, L)) as `build_mask`
    composes them; a query always sees itself.
    """
    device = (
        device
        if device is not None
        else next((t.device for t in (key_mask, segment_ids, positions) if t is not None), None)
    )
    if positions is None:
        positions = key_positions(key_mask, length, device, segment_ids)
    blocks = positions // block_size  # (B|1, L)
    bq, bk = blocks[:, :, None], blocks[:, None, :]
    never = torch.zeros_like(bq == bk)
    allowed = torch.cat([torch.cat([bq == bk, bk < bq], -1), torch.cat([never, bk <= bq], -1)], 1)
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, :, None] == segment_ids[:, None, :]).repeat(1, 2, 2)
    if key_mask is not None:
        allowed = allowed & key_mask.to(torch.bool).repeat(1, 2)[:, None, :]
        allowed = allowed | torch.eye(2 * length, dtype=torch.bool, device=device)[None]
    return allowed[:, None]


def draft_verify_mask(
    length: int,
    block_size: int,
    *,
    segment_ids: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    device=None,
) -> torch.Tensor:
    """The training mask of a causal network that also learns to draft (`train.objective: draft_verify`, TiDAR's
    layout, arXiv 2511.08923) over x_0 ⊕ x_masked (2L slots: the clean copy first, then a fully masked copy at the
    same positions): boolean (B|1, 1, 2L, 2L), True = may attend.

    clean q → clean k: causal (k <= q), so the clean stream is the AR model and its K/V are an AR KV cache;
    masked q → clean k: every clean key before the query's block (block(k) < block(q), block(p) = p // block_size);
    masked q → masked k: same block (a block of masks is drafted at once, bidirectionally); clean q → masked k:
    never. Composed with packing (`segment_ids`, per-segment `positions`) as `build_mask` composes it.
    """
    device = device if device is not None else next((t.device for t in (segment_ids, positions) if t is not None), None)
    if positions is None:
        positions = key_positions(None, length, device, segment_ids)
    blocks = positions // block_size
    bq, bk = blocks[:, :, None], blocks[:, None, :]
    same_block = bq == bk
    slot = torch.arange(length, device=device)
    causal = (slot[None, :] <= slot[:, None])[None].expand_as(same_block)
    same = torch.ones_like(causal) if segment_ids is None else segment_ids[:, :, None] == segment_ids[:, None, :]
    never = torch.zeros_like(causal)
    allowed = torch.cat([torch.cat([causal, never], -1), torch.cat([bk < bq, same_block], -1)], 1)
    return (allowed & same.repeat(1, 2, 2))[:, None]
