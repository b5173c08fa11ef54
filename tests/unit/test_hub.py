import json

import pytest
import torch

import dlm.hub.checkpoint as ckpt
from dlm.errors import CheckpointError
from dlm.hub import INDEX_NAME, WEIGHTS_NAME, from_pretrained, load_model_config, save_pretrained
from dlm.model import Transformer
from dlm.sampling import GenerationConfig

from ..conftest import tiny_config


def _model(**kw):
    torch.manual_seed(1)
    return Transformer(tiny_config(**kw)).eval()


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": False, "attn_bias": True}, {"attention": "causal"}])
def test_save_load_logits_bit_exact(tmp_path, kw):
    m = _model(**kw)
    save_pretrained(m, tmp_path / "m", generation_config=GenerationConfig(gen_length=8, steps=8))
    back = from_pretrained(tmp_path / "m")
    x = torch.randint(4, 64, (2, 11))
    assert torch.equal(m(x), back(x))
    assert back.config == m.config
    assert json.loads((tmp_path / "m" / "generation_config.json").read_text())["gen_length"] == 8
    if m.config.tie_embeddings:
        assert back.lm_head.weight is back.embed_tokens.weight


def test_sharded_save_writes_an_index_and_loads_bit_exact(tmp_path):
    m = _model(tie_embeddings=False)
    save_pretrained(m, tmp_path / "m", max_shard_size="20KB")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert INDEX_NAME in files and WEIGHTS_NAME not in files
    shards = [f for f in files if f.startswith("model-")]
    assert len(shards) > 1
    index = json.loads((tmp_path / "m" / INDEX_NAME).read_text())
    assert set(index["weight_map"].values()) == set(shards)
    x = torch.randint(4, 64, (1, 9))
    assert torch.equal(m(x), from_pretrained(tmp_path / "m")(x))


def test_bf16_save_halves_the_file_and_loads(tmp_path):
    m = _model()
    save_pretrained(m, tmp_path / "f32")
    save_pretrained(m, tmp_path / "bf16", dtype="bf16")
    s32 = (tmp_path / "f32" / WEIGHTS_NAME).stat().st_size
    s16 = (tmp_path / "bf16" / WEIGHTS_NAME).stat().st_size
    assert s16 < 0.6 * s32
    back = from_pretrained(tmp_path / "bf16", dtype="fp32")
    assert back.embed_tokens.weight.dtype == torch.float32
    assert torch.allclose(back.embed_tokens.weight, m.embed_tokens.weight, atol=1e-2)


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    m = _model()
    d = tmp_path / "m"
    save_pretrained(m, d)
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        from_pretrained(tmp_path / "nope")
    (d / WEIGHTS_NAME).write_bytes((d / WEIGHTS_NAME).read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors.*corrupt"):
        from_pretrained(d)
    (d / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError, match="missing weights"):
        from_pretrained(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json.*corrupt JSON"):
        load_model_config(d)
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: missing file"):
        load_model_config(d)


def test_config_with_unknown_key_or_mismatched_weights_is_rejected(tmp_path):
    d = tmp_path / "m"
    save_pretrained(_model(), d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "d_modell": 3}))
    with pytest.raises(CheckpointError, match="d_modell"):
        from_pretrained(d)
    (d / "config.json").write_text(json.dumps({**cfg, "n_layers": 3}))
    with pytest.raises(CheckpointError, match="missing"):
        from_pretrained(d)
    (d / "config.json").write_text(json.dumps({**cfg, "d_ff": 96}))
    with pytest.raises(CheckpointError, match="shape"):
        from_pretrained(d)


def test_interrupted_save_leaves_the_previous_checkpoint_usable(tmp_path, monkeypatch):
    d = tmp_path / "m"
    first = _model()
    save_pretrained(first, d)
    x = torch.randint(4, 64, (1, 7))
    expected = first(x)

    def boom(*a, **k):
        raise KeyboardInterrupt("power cut during the write")

    monkeypatch.setattr(ckpt, "save_file", boom)
    second = _model(d_ff=128)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(second, d)
    assert torch.equal(from_pretrained(d)(x), expected)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.tmp")]
