import math

import torch
import torch.nn.functional as F

from dlm.diffusion import DiffusionConfig
from dlm.eval import perplexity
from dlm.model import Transformer

from ..conftest import tiny_config


def test_causal_perplexity_is_exact_next_token_cross_entropy():
    torch.manual_seed(0)
    m = Transformer(tiny_config(attention="causal")).eval()
    windows = torch.randint(4, 64, (5, 12))
    res = perplexity(m, windows, batch_size=2)
    with torch.no_grad():
        logits = m(windows)
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, 64), windows[:, 1:].reshape(-1))
    assert res.kind == "exact" and res.tokens == 5 * 11
    assert math.isclose(res.ppl, math.exp(float(nll)), rel_tol=1e-5)


def test_elbo_perplexity_is_seeded_and_bounds_the_uniform_model():
    torch.manual_seed(0)
    m = Transformer(tiny_config()).eval()
    torch.nn.init.zeros_(m.lm_head.weight)  # uniform over the 63 non-mask tokens
    windows = torch.randint(4, 64, (32, 16))
    a = perplexity(m, windows, diffusion_config=DiffusionConfig(), samples=8, seed=3)
    b = perplexity(m, windows, diffusion_config=DiffusionConfig(), samples=8, seed=3)
    assert a == b and a.kind == "elbo"
    assert abs(a.nll_per_token - math.log(63) * (1 - 1e-3)) < 0.1 * math.log(63)
