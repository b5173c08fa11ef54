"""Variable-length infilling on the real built-in model: without a length, every length up to max_length is
filled and the one after which the suffix's first tokens are most likely wins; gaps of different sizes get fills
of different lengths; models that cannot see the suffix are refused."""

import pytest

import dlm
from dlm.errors import InputError

GAPS = [
    ("import os\nimport ", "\nimport sys\n"),
    ("def area(radius):\n    ", "\n    return result\n"),
    ("class Point:\n    def __init__(self, x, y):\n        self.x = x\n        ", "\n\n    def norm(self):\n"),
]


@pytest.fixture(scope="module")
def lm():
    return dlm.load("builtin")


def test_the_model_chooses_the_fill_that_leads_into_the_suffix(lm):
    lengths = []
    for prefix, suffix in GAPS:
        out = lm.infill(prefix, suffix, None, max_length=8)
        fills = [lm.infill(prefix, suffix, n) for n in range(1, 9)]
        scores = [lm._suffix_logprob(prefix, f.tokens, suffix) for f in fills]
        best = max(range(8), key=lambda i: scores[i])
        assert out.tokens == fills[best].tokens and len(out.tokens) == best + 1
        assert out.nfe == sum(f.nfe for f in fills) + 8  # every fill, plus one scoring forward each
        lengths.append(len(out.tokens))
    assert len(set(lengths)) > 1, lengths  # gaps of different sizes, fills of different lengths


def test_choosing_the_length_needs_a_model_that_sees_the_suffix(lm):
    with pytest.raises(InputError) as e:
        dlm.load("builtin-ar").infill("a", "b", None)
    assert e.value.field == "length"
    with pytest.raises(InputError) as e:
        lm.infill("a", "b", None, max_length=0)
    assert e.value.field == "max_length"
