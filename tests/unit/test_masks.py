"""The one attention-mask builder against a brute-force double loop over (query, key): every attention kind
x packed / unpacked x left padding x queries at every slot or the last few (a cache's window)."""

from __future__ import annotations

import itertools

import pytest
import torch

from dlm.model import ATTENTION_KINDS, Transformer
from dlm.model.masks import build_mask, key_positions
from dlm.model.transformer import build_attention_mask

from ..conftest import tiny_config

BLOCK = 3


def brute_force(kind, B, k_len, q_slots, key_mask, segment_ids, positions, block=BLOCK):
    """The rule, spelled out one (q, k) pair at a time for B rows; positions counted by hand when not given."""
    Q = q_slots.shape[1]
    real = [[True] * k_len if key_mask is None else [bool(v) for v in key_mask[b]] for b in range(B)]
    seg = [[0] * k_len if segment_ids is None else [int(v) for v in segment_ids[b]] for b in range(B)]
    pos = []
    for b in range(B):
        if positions is not None:
            pos.append([int(v) for v in positions[b]])
            continue
        row, count = [], 0
        for k in range(k_len):
            if k and seg[b][k] != seg[b][k - 1]:
                count = 0  # a new packed example starts at position 0
            row.append(max(count + real[b][k] - 1, 0))
            count += real[b][k]
        pos.append(row)
    out = torch.zeros(B, 1, Q, k_len, dtype=torch.bool)
    for b in range(B):
        for i in range(Q):
            q = int(q_slots[min(b, q_slots.shape[0] - 1), i])
            for k in range(k_len):
                if kind == "causal":
                    structure = k <= q
                elif kind == "block_causal":
                    structure = pos[b][k] // block <= pos[b][q] // block
                else:
                    structure = True
                ok = real[b][k] and seg[b][k] == seg[b][q] and structure
                out[b, 0, i, k] = ok or (key_mask is not None and k == q)
    return out


def full(mask, B, Q, K):
    """None (no masking) as the all-True mask, broadcast to (B, 1, Q, K)."""
    return torch.ones(B, 1, Q, K, dtype=torch.bool) if mask is None else mask.expand(B, 1, Q, K)


@pytest.mark.parametrize(
    "kind, packed, padded, window, explicit_positions",
    [
        (kind, packed, padded, window, explicit)
        for kind, packed, padded, window, explicit in itertools.product(
            ATTENTION_KINDS, (False, True), (False, True), (False, True), (False, True)
        )
        if packed or not explicit  # explicit positions are how packed rows come
    ],
)
def test_build_mask_matches_the_brute_force(kind, packed, padded, window, explicit_positions):
    g = torch.Generator().manual_seed(0)
    B, K = 3, 14
    key_mask = segment_ids = positions = None
    if padded:  # left padding of 0, 2 and 5 slots
        key_mask = torch.ones(B, K, dtype=torch.long)
        key_mask[1, :2] = 0
        key_mask[2, :5] = 0
    if packed:  # contiguous segments of random lengths; the last one runs to the end of the row
        segment_ids = torch.zeros(B, K, dtype=torch.long)
        for b in range(B):
            cuts = sorted(torch.randperm(K - 1, generator=g)[:2].add(1).tolist())
            for c in cuts:
                segment_ids[b, c:] += 1
        if explicit_positions:
            positions = key_positions(None, K, "cpu", segment_ids)
            positions[0] += 1  # any given positions are used as they are, not recounted
    q_slots = torch.arange(K - 5, K)[None] if window else torch.arange(K)[None]
    got = build_mask(
        kind, K, q_slots=q_slots, key_mask=key_mask, segment_ids=segment_ids, positions=positions, block_size=BLOCK
    )
    want = brute_force(kind, B, K, q_slots, key_mask, segment_ids, positions)
    assert torch.equal(full(got, B, q_slots.shape[1], K), want)
    if kind == "bidirectional" and not packed and not padded:
        assert got is None  # nothing masked: attention's fast path
    if packed:
        assert got is not None and not got[:, 0].all(-1).all()  # packing always cuts something


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_network_mask_is_the_builders(kind):
    """build_attention_mask (the network's) is build_mask with the model's kind, block size and the last q_len
    slots; a 4-D mask passes through."""
    cfg = tiny_config(attention=kind, block_size=BLOCK)
    key_mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 9])
    for mask in (None, key_mask):
        got = build_attention_mask(cfg, mask, 4, 9, "cpu")
        want = brute_force(kind, 2, 9, torch.arange(5, 9)[None], mask, None, None)
        assert torch.equal(full(got, 2, 4, 9), want)
    four_d = torch.rand(2, 1, 4, 9) > 0.5
    assert torch.equal(build_attention_mask(cfg, four_d, 4, 9, "cpu"), four_d)


def test_left_padding_keeps_block_causal_outputs():
    """Left padding moves no block boundary: a padded row's outputs at its real tokens are those it has alone."""
    torch.manual_seed(0)
    net = Transformer(tiny_config(attention="block_causal", block_size=BLOCK)).eval()
    x = torch.randint(4, 64, (1, 8))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)], 1)
    with torch.no_grad():
        torch.testing.assert_close(net(padded, attention_mask=mask)[:, 3:], net(x), rtol=0, atol=1e-5)
