"""dlm.model.layout: column-major linear weights for CPU sampling change strides only — the same function
(to float rounding), the same parameters, the same saved bytes — and `dlm.load` uses it on CPU."""

import torch

from dlm.model import Transformer
from dlm.model.layout import column_major, linear_weights, row_major

from ..conftest import tiny_config


def _net():
    torch.manual_seed(0)
    return Transformer(tiny_config(attention="block_causal", block_size=4)).eval()


def test_column_major_changes_strides_not_the_function_or_the_parameters():
    net, ref = _net(), _net()
    names = [(n, p.shape) for n, p in net.named_parameters()]
    weights = linear_weights(net)
    assert net.lm_head.weight is net.embed_tokens.weight and len(weights) == 1 + 2 * 7  # tied head; 7 per layer
    column_major(net)
    assert all(p.stride() == (1, p.shape[0]) for p in weights)  # every linear weight column-major
    assert [(n, p.shape) for n, p in net.named_parameters()] == names
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ref.state_dict().values()))
    ids = torch.randint(4, 64, (3, 12))
    with torch.no_grad():
        torch.testing.assert_close(net(ids), ref(ids), rtol=1e-5, atol=1e-5)
    column_major(net)  # idempotent
    assert all(p.stride() == (1, p.shape[0]) for p in weights)
    row_major(net)
    assert all(p.is_contiguous() for p in weights)


def test_a_loaded_model_is_column_major_and_saves_the_same_bytes(tmp_path):
    import dlm
    from dlm.builtin import builtin_path

    lm = dlm.load("builtin-block")
    assert all(p.stride() == (1, p.shape[0]) for p in linear_weights(lm.model))
    lm.save_pretrained(tmp_path / "again")
    from safetensors.torch import load_file

    def read(folder):
        return {k: v for f in sorted(folder.glob("model*.safetensors")) for k, v in load_file(str(f)).items()}

    saved, orig = read(tmp_path / "again"), read(builtin_path("builtin-block"))
    assert saved.keys() == orig.keys()
    assert all(torch.equal(saved[k].to(orig[k].dtype), orig[k]) for k in orig)
