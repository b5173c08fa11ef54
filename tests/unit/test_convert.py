"""dlm convert: any supported folder -> dlm folder; dlm -> LLaDA layout (a real LLaDA checkpoint, checked against the
reference forward) and back, bit-exact."""

import json

import pytest
import torch

import dlm
from dlm.errors import CheckpointError, ConfigError
from dlm.hub import convert, from_pretrained, load_state_dict
from dlm.model import ModelConfig, Transformer
from dlm.tokenizer import train_tokenizer

from ..foreign import llada_reference, write_llada, write_llada_tokenizer


def _dlm_folder(tmp_path, **kw):
    from dlm.hub import DiffusionLM
    from dlm.sampling import GenerationConfig

    tok = train_tokenizer([], 300, texts=["def f(x):\n    return x + 1\n" * 40])
    cfg = dict(
        vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
        mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, rope_theta=50000.0, tie_embeddings=False,
    )  # fmt: skip
    cfg.update(kw)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**cfg)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
    lm = DiffusionLM(model, tok, GenerationConfig(gen_length=8, steps=8))
    lm.save_pretrained(tmp_path / "a")
    return lm, tmp_path / "a"


@pytest.mark.parametrize("kw", [{}, {"attn_bias": True, "tie_embeddings": True, "n_kv_heads": None}])
def test_dlm_to_llada_to_dlm_is_bit_exact(tmp_path, kw):
    lm, a = _dlm_folder(tmp_path, **kw)
    b = convert(a, tmp_path / "b", to="llada", max_shard_size="20KB")
    raw = json.loads((b / "config.json").read_text())
    assert raw["model_type"] == "llada" and raw["block_type"] == "llama" and raw["auto_map"]["AutoModel"]
    index = json.loads((b / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert all(k.startswith("model.transformer.") for k in index["weight_map"])
    assert "model.transformer.blocks.1.ff_proj.weight" in index["weight_map"]

    ids = torch.randint(0, lm.tokenizer.vocab_size, (2, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = lm.model(ids)
    # the written folder is LLaDA's architecture: its reference forward reproduces the dlm model
    llada_state = {k: v for k, v in load_state_dict(b).items()}
    assert (llada_reference(llada_state, raw, ids) - want.double()).abs().max().item() <= 1e-5
    assert dlm.load(b).tokenizer.mask_token_id == lm.tokenizer.mask_token_id

    c = convert(b, tmp_path / "c")
    back_a, back_c = load_state_dict(a), load_state_dict(c)
    assert back_a.keys() == back_c.keys()
    assert all(torch.equal(back_a[k], back_c[k]) and back_a[k].dtype == back_c[k].dtype for k in back_a)
    assert from_pretrained(c).config == lm.model.config
    with torch.no_grad():
        assert torch.equal(from_pretrained(c)(ids), want)


def test_models_llada_cannot_express_are_refused_before_writing(tmp_path):
    _, a = _dlm_folder(tmp_path, attention="causal")
    with pytest.raises(CheckpointError, match="cannot write the LLaDA layout: attention='causal'"):
        convert(a, tmp_path / "b", to="llada")
    assert not (tmp_path / "b").exists()
    with pytest.raises(ConfigError, match="--to"):
        convert(a, tmp_path / "b", to="gguf")


def test_llada_folder_converts_to_a_dlm_folder_with_its_tokenizer(tmp_path):
    write_llada(tmp_path / "l")
    write_llada_tokenizer(tmp_path / "l")
    out = convert(tmp_path / "l", tmp_path / "d", dtype="fp32")
    raw = json.loads((out / "config.json").read_text())
    assert raw["model_type"] == "dlm" and raw["torch_dtype"] == "float32" and raw["mask_token_id"] == 90
    a, d = dlm.load(tmp_path / "l", dtype="fp32"), dlm.load(out)
    ids = torch.randint(0, 100, (1, 9))
    assert torch.equal(a.model(ids), d.model(ids))
    msgs = [{"role": "user", "content": "hello"}]
    assert d.tokenizer.apply_chat_template(msgs, add_generation_prompt=True) == a.tokenizer.apply_chat_template(
        msgs, add_generation_prompt=True
    )
    assert d.generation_config.block_length == 32  # the family's sampling defaults travel as generation_config
