"""Self-speculative decoding (TiDAR's draft-and-verify in one forward) and the draft_verify objective: the round's
layout against its definition, the output = the AR head's greedy text (on a random network and on the shipped AR
twin, where drafts are sometimes accepted), the loss by hand, and a trained drafter commits more tokens per forward
than the same network trained as a plain AR model on a fixed synthetic task."""

import pytest
import torch
import torch.nn.functional as F

from dlm.errors import ConfigError, InputError
from dlm.model import Transformer
from dlm.model.masks import draft_verify_mask
from dlm.sampling import GenerationConfig
from dlm.sampling.autoregressive import generate_autoregressive
from dlm.sampling.speculative import draft_round_layout, generate_speculative, speculates
from dlm.training.config import load_run_config
from dlm.training.objectives import build_objective

from ..conftest import EOS, MASK, tiny_config


def test_a_rounds_layout_is_its_definition():
    past, drafts, k = 5, 2, 3
    pos, mask = draft_round_layout(past, drafts, k)
    n = 1 + drafts
    assert pos.tolist() == [[5, 6, 7] + [6, 7, 8] + [7, 8, 9] + [8, 9, 10]]
    m = mask[0, 0]
    assert m.shape == (n + n * k, past + n + n * k)
    for q in range(m.shape[0]):
        for key in range(m.shape[1]):
            if key < past:
                want = True
            elif q < n:  # clean: causal among the clean slots, never a mask slot
                want = key - past <= q
            elif key - past < n:  # block j sees the clean slots 0 .. j
                want = key - past <= (q - n) // k
            else:  # and its own block
                want = (key - past - n) // k == (q - n) // k
            assert bool(m[q, key]) == want, (q, key)


def test_the_training_mask_is_its_definition():
    L, k = 7, 3
    m = draft_verify_mask(L, k)[0, 0]
    for q in range(2 * L):
        for key in range(2 * L):
            if q < L:
                want = key < L and key <= q
            elif key < L:
                want = key // k < (q - L) // k
            else:
                want = (key - L) // k == (q - L) // k
            assert bool(m[q, key]) == want, (q, key)
    segments = torch.tensor([[0, 0, 0, 0, 1, 1, 1]])
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
    m = draft_verify_mask(L, k, segment_ids=segments, positions=positions)[0, 0]
    assert not m[L + 4, 0] and not m[L + 4, 3]  # a packed example's first block sees no other example's tokens
    assert m[L + 3, 0] and m[L + 3, 2] and not m[L + 3, 3]  # the first example's second block sees its first block
    assert not m[5, 3] and m[5, 4]


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    return Transformer(tiny_config(attention="causal", **kw)).double().eval()


@pytest.mark.parametrize("k", [2, 3, 4])
def test_the_output_is_the_ar_heads_greedy_text_and_a_row_does_not_depend_on_the_batch(k):
    net = _net()
    prompts = [[5], [7, 8, 9, 10, 11], list(range(20, 40))]
    cfg = GenerationConfig(gen_length=24, draft_block=k, stop_at_eos=False)
    want = generate_autoregressive(net, prompts, GenerationConfig(gen_length=24, stop_at_eos=False))
    got = generate_speculative(net, prompts, cfg)
    assert got.sequences == want.sequences
    for i, p in enumerate(prompts):  # rows of the batch accept different drafts at different lengths
        alone = generate_speculative(net, [p], cfg)
        assert alone.sequences[0] == got.sequences[i] and alone.nfe[0] == got.nfe[i]
    # one forward per round, plus the prompt's prefill (a one-token prompt has none); at most one round per token
    assert got.nfe == [s + (len(p) > 1) for s, p in zip(got.steps, prompts)] and max(got.steps) <= 24


def test_it_stops_where_the_ar_head_ends():
    net = _net(3)
    prompts = [[9, 10, 11]]
    full = generate_autoregressive(net, prompts, GenerationConfig(gen_length=30, stop_at_eos=False)).sequences[0]
    eos = full[len(full) // 2]  # a token the greedy text reaches: call it the end
    cfg = GenerationConfig(gen_length=30, draft_block=3)
    got = generate_speculative(net, prompts, cfg, eos_token_id=eos)
    want = generate_autoregressive(net, prompts, GenerationConfig(gen_length=30), eos_token_id=eos)
    assert got.sequences == want.sequences and got.finished_early == [True]
    assert got.sequences[0] == full[: full.index(eos)]


def test_the_shipped_ar_twin_accepts_some_of_its_own_drafts_and_writes_the_same_text():
    import dlm

    lm = dlm.load("builtin-ar")
    prompts = [lm.tokenizer.encode("def fibonacci(n):"), lm.tokenizer.encode("import os\nimport sys\n\nclass A:\n")]
    want = generate_autoregressive(lm.model, prompts, GenerationConfig(gen_length=64, stop_at_eos=False))
    for k in (2, 3):
        got = generate_speculative(lm.model, prompts, GenerationConfig(gen_length=64, draft_block=k, stop_at_eos=False))
        assert got.sequences == want.sequences
        assert sum(got.steps) < 2 * 64  # some rounds committed more than one token
    text = lm.generate("def fibonacci(n):", gen_length=32, draft_block=3)[0].text
    assert text == lm.generate("def fibonacci(n):", gen_length=32)[0].text
    # what greedy verification cannot keep runs one token per forward: draft_block is a speed setting only
    sampled = lm.generate("def f(x):", gen_length=16, draft_block=3, temperature=0.8, seed=4)[0]
    assert sampled.text == lm.generate("def f(x):", gen_length=16, temperature=0.8, seed=4)[0].text
    assert sampled.nfe == 16


def test_what_runs_self_speculatively():
    greedy = GenerationConfig(draft_block=3)
    assert speculates(greedy) and not speculates(GenerationConfig())
    assert not speculates(GenerationConfig(draft_block=3, temperature=0.5))
    assert not speculates(GenerationConfig(draft_block=3, no_repeat_ngram_size=4))
    assert not speculates(greedy, templates=[[1, 2]]) and speculates(greedy, templates=[None], constraints=[None])
    assert not speculates(greedy, logits_processors=[lambda *a: a[1]])


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match="draft_block"):
        GenerationConfig(draft_block=1)
    net = _net()
    with pytest.raises(InputError, match="temperature"):
        generate_speculative(net, [[5]], GenerationConfig(draft_block=2, temperature=0.7))
    bidir = Transformer(tiny_config(attention="bidirectional"))
    with pytest.raises(InputError, match="draft_block"):
        generate_speculative(bidir, [[5]], GenerationConfig(draft_block=2))
    with pytest.raises(InputError, match="prompts"):
        generate_speculative(net, [[5] * 100], GenerationConfig(gen_length=28, draft_block=2))


def _objective(*overrides):
    run = load_run_config(None, ["train.objective=draft_verify", "generation.draft_block=3", *overrides])
    return build_objective(run, tiny_config(attention="bidirectional"))


def test_the_objective_needs_a_block_and_makes_the_network_causal():
    with pytest.raises(ConfigError, match="generation.draft_block"):
        build_objective(load_run_config(None, ["train.objective=draft_verify"]), tiny_config())
    assert _objective().model_config.attention == "causal"


@pytest.mark.parametrize("sft", [False, True])
def test_the_loss_by_hand(sft):
    obj = _objective("distill.draft_weight=0.5")
    torch.manual_seed(0)
    net = Transformer(obj.model_config).double()
    ids = torch.randint(5, 60, (2, 8), generator=torch.Generator().manual_seed(2))
    plen = torch.tensor([2, 5])
    batch = {"input_ids": ids, "prompt_lengths": plen} if sft else {"input_ids": ids}
    got = obj.loss(net, batch)
    with torch.no_grad():
        ar, draft = [], []
        for r in range(2):
            logits = net(ids[r : r + 1])[0]  # the causal network alone
            for i in range(7):
                if not sft or i + 1 >= plen[r]:
                    ar.append(F.cross_entropy(logits[i], ids[r, i + 1]))
            for start in range(0, 8, 3):  # each block of 3 drafted after the clean tokens before it
                size = min(3, 8 - start)
                x = torch.cat([ids[r, :start], torch.full((size,), MASK)])[None]
                m = torch.ones((start + size, start + size), dtype=torch.bool).tril()
                m[start:, start:] = True
                out = net(x, attention_mask=m[None, None])[0]
                for s in range(size - 1):  # slot s predicts the block's token s + 1
                    if not sft or start + s + 1 >= plen[r]:
                        draft.append(F.cross_entropy(out[start + s], ids[r, start + s + 1]))
    want = torch.stack(ar).mean() + 0.5 * torch.stack(draft).mean()
    assert torch.allclose(got.double(), want, atol=1e-5), (got, want)


def test_a_trained_drafter_commits_more_tokens_per_forward_than_its_plain_ar_twin():
    """Counting mod 40: every token follows from the one before. The same network and steps, trained with the
    draft_verify objective or the ar objective: both write the same greedy text, and the drafter in fewer forwards."""
    seqs = (torch.arange(24)[None] + torch.randint(0, 40, (64, 1), generator=torch.Generator().manual_seed(0))) % 40
    ids = seqs + 5
    results = {}
    for objective in ("draft_verify", "ar"):
        run = load_run_config(None, [f"train.objective={objective}", "generation.draft_block=3"])
        obj = build_objective(run, tiny_config(attention="causal"))
        torch.manual_seed(0)
        net = Transformer(obj.model_config)
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
        for step in range(150):
            batch = {"input_ids": ids[(step * 16) % 64 :][:16]}
            loss = obj.loss(net, batch, torch.Generator().manual_seed(step))
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        cfg = GenerationConfig(gen_length=30, draft_block=3, stop_at_eos=False)
        out = generate_speculative(net, [[5, 6, 7], [20, 21]], cfg, eos_token_id=EOS)
        ar = generate_autoregressive(net, [[5, 6, 7], [20, 21]], GenerationConfig(gen_length=30, stop_at_eos=False))
        assert out.sequences == ar.sequences
        results[objective] = (out.sequences, 60 / sum(out.steps))
    assert results["draft_verify"][0] == results["ar"][0]  # both learned to count
    assert results["draft_verify"][1] > 2.5 > 1.5 > results["ar"][1], results
