"""no_repeat_ngram_size (Hugging Face's): the processor by hand, then in the diffusion and the AR loop."""

import pytest
import torch

from dlm.errors import ConfigError
from dlm.model import Transformer
from dlm.sampling import GenerationConfig, NoRepeatNGram, generate
from dlm.sampling.autoregressive import generate_autoregressive

from ..conftest import EOS, tiny_config

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16], [20], [3, 3, 4, 3, 3]]


def ngrams(seq, n):
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def banned(out):
    return {tuple(x) for x in torch.isinf(out).nonzero().tolist()}


def test_the_processor_bans_exactly_the_tokens_that_would_repeat_an_ngram():
    # row 0, slot 8 after (1, 2): 1 2 was followed by 3 and by 4. Slot 10 (after the row) follows (-1, 9): -1 is
    # undecided, so nothing. Row 1, slot 5: no window through it matches a decided trigram; slot 10: nothing
    ids = torch.tensor([[1, 2, 3, 1, 2, 4, 1, 2, -1, 9], [-1, -1, 1, 2, 3, -1, 1, 2, 5, 5]])
    out = NoRepeatNGram(3)(ids, torch.zeros(2, 2, 12), torch.tensor([[8, 10], [5, 10]]))
    assert banned(out) == {(0, 0, 3), (0, 0, 4)}
    # a window closed on the right: slot 4 before (8, 9) may not be 7 (7 8 9 is there already)
    out = NoRepeatNGram(3)(torch.tensor([[7, 8, 9, 4, -1, 8, 9]]), torch.zeros(1, 1, 12), torch.tensor([[4]]))
    assert banned(out) == {(0, 0, 7)}
    # EOS is never banned; n = 1 bans every decided token
    ids = torch.tensor([[EOS, 4, EOS, 4]])
    assert banned(NoRepeatNGram(2, eos_token_id=EOS)(ids, torch.zeros(1, 1, 12), torch.tensor([[4]]))) == set()
    assert banned(NoRepeatNGram(1)(ids, torch.zeros(1, 1, 12), torch.tensor([[4]]))) == {(0, 0, EOS), (0, 0, 4)}


def _sharp(seed, **kw):
    torch.manual_seed(seed)
    m = Transformer(tiny_config(vocab_size=24, d_model=48, n_heads=4, n_kv_heads=2, **kw)).eval()
    for p in m.parameters():  # sharper: a random model this small repeats itself often without the ban
        p.data.mul_(3.0) if p.dim() > 1 else None
    return m


def new_repeats(prompt, canvas, n):
    """n-grams (without EOS) that end in the generated part and repeat an earlier n-gram of the canvas."""
    grams, bad = ngrams(canvas, n), []
    for j, g in enumerate(grams):
        if j + n > len(prompt) and EOS not in g and g in grams[:j] + grams[j + 1 :]:
            bad.append((j, g))
    return bad


def _repeats_with_and_without(loop, m, kw, n):
    """(repeated n-grams per prompt without the ban, with it; each prompt's canvas alone with the ban, in the
    batch with it)."""
    plain = loop(m, PROMPTS, GenerationConfig(**kw)).canvases
    cfg = GenerationConfig(**kw, no_repeat_ngram_size=n)
    out = loop(m, PROMPTS, cfg).canvases
    alone = [loop(m, [p], cfg).canvases[0] for p in PROMPTS]
    return (
        [new_repeats(p, c, n) for p, c in zip(PROMPTS, plain)],
        [new_repeats(p, c, n) for p, c in zip(PROMPTS, out)],
        (alone, out),
    )


@pytest.mark.parametrize("policy", ["low_confidence", "left_to_right"])
@pytest.mark.parametrize("block", [4, 16])
def test_the_diffusion_loop_never_repeats_an_ngram_and_batch_equals_alone(policy, block):
    kw = dict(gen_length=16, steps=16, block_length=block, policy=policy, stop_at_eos=False)
    without, with_ban, (alone, batch) = _repeats_with_and_without(generate, _sharp(0), kw, 2)
    assert any(without)  # the test can fail: without the ban this model repeats bigrams
    assert with_ban == [[] for _ in PROMPTS]
    assert alone == batch


def test_the_ar_loop_never_repeats_an_ngram_and_batch_equals_alone():
    kw = dict(gen_length=16, steps=16, stop_at_eos=False)
    without, with_ban, (alone, batch) = _repeats_with_and_without(
        generate_autoregressive, _sharp(1, attention="causal"), kw, 3
    )
    assert any(without)
    assert with_ban == [[] for _ in PROMPTS]
    assert alone == batch


def test_a_negative_size_names_the_field():
    with pytest.raises(ConfigError, match="no_repeat_ngram_size"):
        GenerationConfig(no_repeat_ngram_size=-1)
