"""Block diffusion (BD3-LM) on the training side: the three-part two-stream mask against a brute-force rule, the
two-stream forward against the block-causal canvas the sampler runs, per-block noise levels, the loss by hand."""

import pytest
import torch

from dlm.diffusion import DiffusionConfig, build_process
from dlm.diffusion.block import BlockDiffusion, block_ids
from dlm.errors import ConfigError
from dlm.model import ModelConfig, Transformer
from dlm.model.masks import key_positions, two_stream_mask
from dlm.training.module import Segmented


def brute_force(L, bs, key_mask=None, segment_ids=None):
    """The rule written out slot by slot (BD3-LM's M_BD | M_OBC | M_BC)."""
    B = 1 if key_mask is None and segment_ids is None else (key_mask if key_mask is not None else segment_ids).shape[0]
    out = torch.zeros(B, 1, 2 * L, 2 * L, dtype=torch.bool)
    for b in range(B):
        real = [True] * L if key_mask is None else [bool(v) for v in key_mask[b]]
        seg = [0] * L if segment_ids is None else segment_ids[b].tolist()
        pos, count = [], {}
        for i in range(L):  # position: real tokens before it in its segment
            s = seg[i]
            pos.append(max(count.get(s, 0) - (0 if real[i] else 1), 0) if not real[i] else count.get(s, 0))
            count[s] = count.get(s, 0) + (1 if real[i] else 0)
        for q in range(2 * L):
            for k in range(2 * L):
                qi, ki = q % L, k % L
                bq, bk = pos[qi] // bs, pos[ki] // bs
                noisy_q, noisy_k = q < L, k < L
                if noisy_q and noisy_k:
                    s = bq == bk
                elif noisy_q:
                    s = bk < bq
                elif noisy_k:
                    s = False
                else:
                    s = bk <= bq
                ok = s and seg[qi] == seg[ki] and real[ki]
                out[b, 0, q, k] = ok or (q == k and key_mask is not None)
    return out


@pytest.mark.parametrize("bs", [1, 2, 3, 4, 8])
def test_two_stream_mask_matches_the_rule_slot_by_slot(bs):
    L = 8
    assert torch.equal(two_stream_mask(L, bs), brute_force(L, bs))
    seg = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1, 1]])
    assert torch.equal(two_stream_mask(L, bs, segment_ids=seg), brute_force(L, bs, segment_ids=seg))
    km = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    assert torch.equal(two_stream_mask(L, bs, key_mask=km), brute_force(L, bs, key_mask=km))


def test_block_ids_restart_with_each_packed_example():
    pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]])
    seg = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, 1]])
    assert block_ids(pos, 2, seg).tolist() == [[0, 0, 1, 1, 2, 3, 3, 4, 4]]
    assert block_ids(torch.arange(6)[None], 4).tolist() == [[0, 0, 0, 0, 1, 1]]


def tiny(shift=False, block_size=4):
    torch.manual_seed(0)
    mc = ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, max_seq_len=64, mask_token_id=39,
                     attention="block_causal", block_size=block_size, shift_logits=shift)  # fmt: skip
    return Transformer(mc).eval(), build_process(DiffusionConfig(process="block"), mc)


@pytest.mark.parametrize("shift", [False, True])
def test_two_stream_output_is_the_block_causal_canvas_the_sampler_sees(shift):
    """Block b's noisy outputs given clean blocks < b (one two-stream forward over the whole sequence) equal a
    block-causal forward over the canvas x0[:b] ⊕ xt[b] — the sampler's canvas when block b is active."""
    net, proc = tiny(shift)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, 39, (2, 12), generator=g)
    xt = torch.where(torch.rand(x0.shape, generator=g) < 0.5, torch.full_like(x0, 39), x0)
    with torch.no_grad():
        both = proc.denoise(net, xt, x0)
        for b in range(3):
            lo, hi = 4 * b, 4 * b + 4
            canvas = torch.cat([x0[:, :lo], xt[:, lo:hi]], 1)
            alone = net(canvas)
            if shift:  # the state at i-1 predicts token i; position 0 keeps its own
                alone = torch.cat([alone[:, :1], alone[:, :-1]], 1)
            torch.testing.assert_close(both[:, lo:hi], alone[:, lo:hi], rtol=1e-5, atol=1e-5)


def test_packed_two_stream_forward_equals_each_example_alone():
    net, proc = tiny()
    g = torch.Generator().manual_seed(2)
    a, b = torch.randint(0, 39, (1, 7), generator=g), torch.randint(0, 39, (1, 5), generator=g)
    at = a.masked_fill(torch.rand(a.shape, generator=g) < 0.5, 39)
    bt = b.masked_fill(torch.rand(b.shape, generator=g) < 0.5, 39)
    seg = torch.tensor([[0] * 7 + [1] * 5])
    pos = torch.tensor([list(range(7)) + list(range(5))])
    with torch.no_grad():
        packed = proc.denoise(Segmented(net, seg, pos), torch.cat([at, bt], 1), torch.cat([a, b], 1))
        torch.testing.assert_close(packed[:, :7], proc.denoise(net, at, a), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed[:, 7:], proc.denoise(net, bt, b), rtol=1e-5, atol=1e-5)


def test_noise_levels_are_one_per_block_in_the_clipped_range():
    mc = ModelConfig(vocab_size=40, d_model=32, n_layers=1, n_heads=4, mask_token_id=39)
    proc = build_process(DiffusionConfig(process="block", block_size=4, train_t=[0.3, 0.8]), mc)
    ids = torch.zeros(3, 10, dtype=torch.long)
    t = proc.training_t(None, ids, generator=torch.Generator().manual_seed(0))
    assert t.shape == (3, 10) and float(t.min()) >= 0.3 and float(t.max()) <= 0.8
    for lo, hi in [(0, 4), (4, 8), (8, 10)]:
        assert bool((t[:, lo:hi] == t[:, lo : lo + 1]).all())
    assert len(set(t[:, ::4].flatten().tolist())) == 9  # 3 rows x 3 blocks, all different
    # sharded: each rank gets the levels its rows get in one process
    full = proc.training_t(None, torch.zeros(4, 8, dtype=torch.long), generator=torch.Generator().manual_seed(5))
    part = proc.training_t(None, torch.zeros(2, 8, dtype=torch.long), generator=torch.Generator().manual_seed(5),
                           shard=(1, 2))  # fmt: skip
    assert torch.equal(part, full[1::2])


def test_block_loss_by_hand():
    """loss = sum over masked positions of w(t_block) * CE / tokens, the CE from the two-stream forward."""
    net, proc = tiny()
    x0 = torch.randint(0, 39, (2, 8), generator=torch.Generator().manual_seed(3))
    out = proc.loss(net, x0, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    t = proc.training_t(net, x0, generator=g)
    xt, masked = proc.add_noise(x0, t, g)
    with torch.no_grad():
        logits = proc.denoise(net, xt, x0).float()
    logits[..., 39] = float("-inf")
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 40), x0.reshape(-1), reduction="none").view(2, 8)
    want = float((ce * (1 / t) * masked).sum() / 16)
    assert out.num_masked == int(masked.sum()) > 0
    assert float(out.loss.detach()) == pytest.approx(want, rel=1e-4)


def test_resolve_makes_the_network_block_causal_with_the_process_block_size():
    cfg, mc = BlockDiffusion.resolve(DiffusionConfig(process="block", block_size=8), ModelConfig(attention="causal"))
    assert (mc.attention, mc.block_size, cfg.block_size) == ("block_causal", 8, 8)
    cfg, mc = BlockDiffusion.resolve(DiffusionConfig(process="block"), ModelConfig(block_size=16))
    assert (mc.attention, cfg.block_size) == ("block_causal", 16)
    _, mc = BlockDiffusion.resolve(DiffusionConfig(process="block", shift_logits=True), ModelConfig())
    assert mc.shift_logits
    with pytest.raises(ConfigError, match="diffusion.train_t"):
        DiffusionConfig(train_t=[0.9, 0.2])
    with pytest.raises(ConfigError, match="diffusion.block_size"):
        DiffusionConfig(block_size=0)


def test_elbo_bound_uses_the_two_streams_and_is_finite():
    net, proc = tiny()
    x0 = torch.randint(0, 39, (2, 12), generator=torch.Generator().manual_seed(6))
    nll = proc.elbo_nll(net, x0, 4, generator=torch.Generator().manual_seed(0))
    assert nll.shape == (2,) and bool(torch.isfinite(nll).all()) and bool((nll > 0).all())
    # with key positions from a right-padding mask the bound covers only the real tokens
    km = torch.ones_like(x0)
    km[1, 9:] = 0
    assert key_positions(km, 12, None)[1, -1] == 8
    part = proc.elbo_nll(net, x0, 4, attention_mask=km, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(part).all()


def test_attention_annealing_opens_from_causal_to_the_process_own():
    """DiffuLLaMA's annealing (diffusion.anneal_steps): at step 0 the noisy positions attend causally, at step N
    and in evaluation (no grad) with the process's own attention; in between each later pair opens with
    probability step / N, the same draw for the same step."""
    mc = ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, mask_token_id=39)
    torch.manual_seed(0)
    net = Transformer(mc)
    proc = build_process(DiffusionConfig(anneal_steps=10), mc)
    x = torch.randint(0, 39, (2, 12), generator=torch.Generator().manual_seed(0))
    proc.at_step(0)
    causal = Transformer(ModelConfig(**{**mc.__dict__, "attention": "causal"}))
    causal.load_state_dict(net.state_dict())
    torch.testing.assert_close(proc.denoise(net, x, x), causal(x), rtol=1e-5, atol=1e-5)
    proc.at_step(5)
    half = proc.anneal_open(12, "cpu")
    later = torch.ones(12, 12, dtype=torch.bool).triu(1)
    assert 0 < int((half & later).sum()) < int(later.sum()) and bool(half[~later].all())
    assert torch.equal(half, proc.anneal_open(12, "cpu"))
    with torch.no_grad():
        assert proc.anneal_open(12, "cpu") is None
        torch.testing.assert_close(proc.denoise(net, x, x), net(x))
    proc.at_step(10)
    assert proc.anneal_open(12, "cpu") is None

    bnet, bproc = tiny()
    bproc.config.anneal_steps = 10
    bproc.at_step(0)
    xt = x.masked_fill(torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.5, 39)
    annealed = bproc.denoise(bnet, xt, x)
    bproc.at_step(10)
    opened = bproc.denoise(bnet, xt, x)
    # at step 0 the first noisy position sees only itself (causal), once opened its whole block
    with torch.no_grad():
        alone = bnet(xt[:, :1])[:, 0]
    torch.testing.assert_close(annealed[:, 0], alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(opened[:, 0], alone, rtol=1e-3, atol=1e-3)
    with pytest.raises(ConfigError, match="diffusion.anneal_steps"):
        DiffusionConfig(anneal_steps=-1)
