import pytest
import torch

from dlm.errors import ConfigError, InputError
from dlm.model import KVCache, ModelConfig, Transformer

from ..conftest import tiny_config


def _model(**kw):
    torch.manual_seed(0)
    return Transformer(tiny_config(**kw)).eval()


def test_parameter_count_matches_config():
    for kw in ({}, {"tie_embeddings": False}, {"attn_bias": True, "attn_out_bias": True, "mlp_bias": True}):
        m = _model(**kw)
        assert m.num_parameters() == m.config.num_parameters()


def test_logits_index_equals_gather_of_full_logits(tiny_model):
    x = torch.randint(4, 64, (2, 10))
    full = tiny_model(x)
    idx = torch.tensor([[1, 5, 9], [0, 2, 3]])
    part = tiny_model(x, logits_index=idx)
    assert part.shape == (2, 3, 64)
    assert torch.allclose(part, torch.gather(full, 1, idx[..., None].expand(-1, -1, 64)), atol=1e-6)


def test_bidirectional_sees_the_future_causal_does_not():
    x = torch.randint(4, 64, (1, 8))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % 60 + 4
    bi, ca = _model(), _model(attention="causal")
    assert not torch.allclose(bi(x)[0, 0], bi(y)[0, 0])
    assert torch.allclose(ca(x)[0, :-1], ca(y)[0, :-1], atol=1e-6)


def test_block_causal_sees_own_block_not_later_ones():
    m = _model(attention="block_causal", block_size=4)
    x = torch.randint(4, 64, (1, 8))
    y = x.clone()
    y[0, 6] = (x[0, 6] + 1) % 60 + 4  # second block
    a, b = m(x), m(y)
    assert torch.allclose(a[0, :4], b[0, :4], atol=1e-6)  # first block cannot see block 2
    assert not torch.allclose(a[0, 4], b[0, 4])  # same block sees it


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_left_padding_with_mask_gives_the_same_logits(attention):
    m = _model(attention=attention)
    x = torch.randint(4, 64, (1, 6))
    padded = torch.cat([torch.full((1, 3), 2), x], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    assert torch.allclose(m(x), m(padded, attention_mask=mask)[:, 3:], atol=1e-5)
    # without the mask, padding changes the result (the mask is really honoured)
    assert not torch.allclose(m(x), m(padded)[:, 3:], atol=1e-3)


def test_explicit_position_ids_are_honoured(tiny_model):
    x = torch.randint(4, 64, (1, 5))
    default = tiny_model(x)
    same = tiny_model(x, position_ids=torch.arange(5)[None])
    shifted = tiny_model(x, position_ids=torch.arange(5)[None] + 7)  # RoPE is relative: same logits
    swapped = tiny_model(x, position_ids=torch.tensor([[0, 2, 1, 3, 4]]))
    assert torch.allclose(default, same)
    assert torch.allclose(default, shifted, atol=1e-5)
    assert not torch.allclose(default, swapped, atol=1e-4)


def test_kv_cache_incremental_decoding_matches_full_forward():
    m = _model(attention="causal")
    x = torch.randint(4, 64, (2, 9))
    full = m(x)
    cache = KVCache()
    first = m(x[:, :5], cache=cache)
    steps = [m(x[:, i : i + 1], cache=cache) for i in range(5, 9)]
    inc = torch.cat([first] + steps, dim=1)
    assert len(cache) == 9
    assert torch.allclose(full, inc, atol=1e-5)


def test_inputs_embeds_path_equals_ids_path(tiny_model):
    x = torch.randint(4, 64, (2, 7))
    assert torch.allclose(tiny_model(x), tiny_model(inputs_embeds=tiny_model.embed_tokens(x)))
    with pytest.raises(InputError, match="input_ids"):
        tiny_model()


def test_gqa_and_untied_head_run():
    m = _model(n_kv_heads=1, tie_embeddings=False)
    assert m.lm_head.weight is not m.embed_tokens.weight
    assert m(torch.randint(4, 64, (1, 4))).shape == (1, 4, 64)


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"n_heads": 5}, "n_heads"),
        ({"attention": "sideways"}, "attention"),
        ({"n_kv_heads": 3}, "n_kv_heads"),
        ({"mask_token_id": 99}, "mask_token_id"),
        ({"d_model": 0}, "d_model"),
    ],
)
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig(**{**dict(vocab_size=64, d_model=32, n_heads=4), **kw})


def test_all_padding_rows_stay_finite():
    m = _model(attention="causal")
    x = torch.randint(4, 64, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :4] = 0
    assert torch.isfinite(m(x, attention_mask=mask)).all()


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_learned_positions_are_absolute_and_keep_padding_and_cache_exact(attention):
    torch.manual_seed(0)
    m = Transformer(tiny_config(attention=attention, learned_positions=True)).eval()
    d = tiny_config().d_model
    assert m.num_parameters() == Transformer(tiny_config(attention=attention)).num_parameters() + 128 * d
    x = torch.randint(4, 64, (1, 6))
    shifted = m(x, position_ids=torch.arange(6)[None] + 7)
    assert not torch.allclose(m(x), shifted, atol=1e-4)  # absolute: unlike RoPE alone, a shift changes the logits
    padded = torch.cat([torch.full((1, 3), 2), x], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    assert torch.allclose(m(x), m(padded, attention_mask=mask)[:, 3:], atol=1e-5)  # left padding: same positions
    if attention == "causal":
        cache = KVCache()
        inc = torch.cat([m(x[:, :4], cache=cache)] + [m(x[:, i : i + 1], cache=cache) for i in (4, 5)], dim=1)
        assert torch.allclose(m(x), inc, atol=1e-5)
