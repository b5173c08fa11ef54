"""The one exact next-token NLL (dlm.eval.nll) and its rolling windows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dlm.errors import InputError
from dlm.eval.nll import next_token_nll, rolling_windows
from dlm.model import Transformer

from ..conftest import tiny_config


def test_next_token_nll_is_minus_log_softmax_of_each_target():
    torch.manual_seed(0)
    m = Transformer(tiny_config(attention="causal")).eval()
    ids = torch.randint(4, 64, (3, 10))
    with torch.no_grad():
        nll, hit = next_token_nll(m, ids, greedy=True)
        logp = F.log_softmax(m(ids).float(), -1)
    want = torch.stack([-logp[b, i, ids[b, i + 1]] for b in range(3) for i in range(9)]).view(3, 9)
    torch.testing.assert_close(nll, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(hit, logp[:, :-1].argmax(-1) == ids[:, 1:])
    with torch.no_grad():
        assert torch.equal(next_token_nll(m, ids), nll)


@pytest.mark.parametrize("n, window", [(0, 4), (1, 4), (3, 4), (4, 4), (11, 4), (12, 2), (7, 100)])
def test_rolling_windows_score_every_token_once(n, window):
    ids = list(range(10, 10 + n))
    windows = rolling_windows(ids, 1, window)
    assert all(2 <= len(w) <= window for w in windows)
    assert [t for w in windows for t in w[1:]] == ids  # targets: every token once, in order
    assert windows[0][0] == 1 if ids else windows == []
    for a, b in zip(windows, windows[1:]):
        assert b[0] == a[-1]  # one token of context carried over
    with pytest.raises(InputError, match="max_seq_len"):
        rolling_windows(ids, 1, 1)
