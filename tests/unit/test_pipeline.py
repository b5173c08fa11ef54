import pytest

from dlm.errors import InputError
from dlm.sampling import GenerationConfig
from dlm.tokenizer import train_tokenizer
from ..conftest import tiny_lm


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    (d / "a.txt").write_text("def add(a, b):\n    return a + b\n" * 50 + "import os\nprint(os.getcwd())\n" * 50)
    return train_tokenizer([d / "a.txt"], vocab_size=300)


def _lm(tok, attention="bidirectional"):
    return tiny_lm(tok, attention, gen=GenerationConfig(gen_length=16, steps=16, block_length=8))


def test_masks_typed_into_the_prompt_are_filled_and_returned(tok):
    lm = _lm(tok)
    out = lm.generate("def <|mask|>(a, b):", gen_length=8, steps=8, block_length=8, stop_at_eos=False)[0]
    assert out.filled.startswith("def ") and out.filled.endswith(out.text) and "<|mask|>" not in out.filled
    assert len(tok.encode(out.filled, parse_special=True)) >= len(tok.encode("def (a, b):"))


def test_causal_models_refuse_a_suffix_but_continue_a_prefix(tok):
    lm = _lm(tok, "causal")
    with pytest.raises(InputError, match="suffixes"):
        lm.generate(["x"], suffixes=["y"])
    with pytest.raises(InputError, match="prefix_only"):
        lm.infill("a", "b", 4, prefix_only=False)
    out = lm.infill("def add(", "):", 4)
    assert out.nfe >= 1 and len(out.tokens) <= 4


def test_generation_overrides_are_checked(tok):
    lm = _lm(tok)
    with pytest.raises(Exception, match="temprature"):
        lm.generate("x", temprature=1.0)
    cfg = lm.make_config(None, gen_length=12)  # block 8 does not divide 12: falls back to one block
    assert cfg.gen_length == 12 and cfg.block_size == 12 and cfg.steps <= 12
