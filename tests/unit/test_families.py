"""Foreign checkpoint families load into dlm's Transformer and give the logits of an independent computation:
transformers' own LlamaForCausalLM / Qwen2ForCausalLM / MistralForCausalLM for the causal families, and reference
forwards written from the published architectures (tests/foreign.py) for LLaDA and Dream."""

import json

import pytest
import torch

import dlm
from dlm.errors import CheckpointError, ConfigError
from dlm.hub import from_pretrained, open_checkpoint
from dlm.hub import loading

from ..foreign import (
    DREAM_VOCAB,
    LLADA_ROWS,
    dream_config,
    llada_config,
    llada_reference,
    qwen2_reference,
    write_dream,
    write_llada,
)

transformers = pytest.importorskip("transformers")


# ---- LLaDA ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw", [{}, {"n_kv_heads": 2, "include_qkv_bias": True}, {"weight_tying": True, "rope_theta": 10000.0}]
)
def test_llada_sharded_bf16_checkpoint_matches_the_reference_forward(tmp_path, kw):
    state = write_llada(tmp_path / "llada", **kw)
    cfg = llada_config(**kw)
    model = from_pretrained(tmp_path / "llada", dtype="fp32")
    c = model.config
    assert (c.attention, c.shift_logits, c.vocab_size, c.mask_token_id, c.eos_token_id) == (
        "bidirectional", False, LLADA_ROWS, 90, 91
    )  # fmt: skip
    assert c.bos_token_id is None  # LLaDA's default 126080 lies outside this tiny vocabulary: dropped
    ids = torch.randint(0, 100, (2, 11), generator=torch.Generator().manual_seed(1))
    ref = llada_reference(state, cfg, ids)
    with torch.no_grad():
        ours = model(ids)
    assert (ours.double() - ref).abs().max().item() <= 1e-5
    assert model.embed_tokens.weight.dtype == torch.float32


def test_llada_keeps_the_stored_dtype_or_casts(tmp_path):
    write_llada(tmp_path / "m")
    assert from_pretrained(tmp_path / "m").embed_tokens.weight.dtype == torch.bfloat16  # as stored
    m16 = from_pretrained(tmp_path / "m", dtype="fp16", device="cpu")
    assert {p.dtype for p in m16.parameters()} == {torch.float16}
    with pytest.raises(ConfigError, match="dtype"):
        from_pretrained(tmp_path / "m", dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device.*CUDA is not available"):
            from_pretrained(tmp_path / "m", device="cuda")
    with pytest.raises(ConfigError, match="device"):
        from_pretrained(tmp_path / "m", device="tpu9")


def test_chunked_reads_give_the_same_tensors(tmp_path, monkeypatch):
    write_llada(tmp_path / "m")
    whole = from_pretrained(tmp_path / "m", dtype="fp32")
    monkeypatch.setattr(loading, "CHUNK_BYTES", 70)  # a few rows per read: exercises the chunk boundaries
    chunked = from_pretrained(tmp_path / "m", dtype="fp32")
    for (k, a), (_, b) in zip(whole.state_dict().items(), chunked.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"block_type": "sequential"}, "block_type"),
        ({"activation_type": "swiglu"}, "activation_type"),
        ({"layer_norm_type": "default"}, "layer_norm_type"),
        ({"attention_layer_norm": True}, "attention_layer_norm"),
        ({"alibi": True, "rope": False}, "rope"),
        ({"include_bias": True}, "include_bias"),
        ({"scale_logits": True}, "scale_logits"),
    ],
)
def test_llada_settings_dlm_does_not_implement_are_refused(tmp_path, kw, key):
    write_llada(tmp_path / "m", **kw)
    with pytest.raises(CheckpointError, match=rf"config.json: {key}: got .* dlm implements only"):
        open_checkpoint(tmp_path / "m")


# ---- Dream -----------------------------------------------------------------------------------------
def test_dream_loads_with_shifted_logits_and_matches_the_reference_forward(tmp_path):
    state = write_dream(tmp_path / "dream")
    cfg = dream_config()
    model = from_pretrained(tmp_path / "dream")
    c = model.config
    assert (c.attention, c.shift_logits, c.attn_bias, c.attn_out_bias, c.kv_heads) == (
        "bidirectional", True, True, False, 2
    )  # fmt: skip
    assert (c.mask_token_id, c.eos_token_id, c.pad_token_id, c.vocab_size) == (95, 93, 93, DREAM_VOCAB)
    ids = torch.randint(0, 90, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(ids)
    assert (ours.double() - qwen2_reference(state, cfg, ids, causal=False)).abs().max().item() <= 1e-5


def test_dream_without_special_ids_uses_the_published_defaults(tmp_path):
    cfg = dream_config(vocab_size=151667)
    for k in ("mask_token_id", "bos_token_id", "eos_token_id", "pad_token_id"):
        cfg.pop(k)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    c = open_checkpoint(tmp_path).config
    assert (c.mask_token_id, c.eos_token_id, c.pad_token_id) == (151666, 151643, 151643)


# ---- LLaMA / Qwen2 / Mistral through transformers ------------------------------------------------------
def _hf_folder(tmp_path, kind, **kw):
    cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[kind]
    base = dict(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=5000.0, bos_token_id=1,
        eos_token_id=2,
    )  # fmt: skip
    base.update(kw)
    torch.manual_seed(0)
    hf = cls[1](cls[0](**base)).eval()
    with torch.no_grad():
        for p in hf.parameters():  # biases and norms away from their init, so a wrong mapping shows
            p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path / kind
    hf.save_pretrained(folder, safe_serialization=True, max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").is_file()  # the real sharded layout
    return hf, folder


@pytest.mark.parametrize(
    "kind, kw",
    [
        ("llama", {"tie_word_embeddings": True}),
        ("llama", {"attention_bias": True, "mlp_bias": True, "head_dim": 16}),
        ("qwen2", {}),
        ("mistral", {"sliding_window": None}),
    ],
)
def test_causal_families_match_transformers(tmp_path, kind, kw):
    hf, folder = _hf_folder(tmp_path, kind, **kw)
    model = from_pretrained(folder)
    assert model.config.attention == "causal" and model.config.mask_token_id is None
    ids = torch.randint(0, 96, (2, 13), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (model(ids) - hf(ids).logits).abs().max().item()
    assert diff <= 1e-5
    assert (model.config.attn_bias, model.config.tie_embeddings) == (
        kind == "qwen2" or kw.get("attention_bias", False), kw.get("tie_word_embeddings", False)
    )  # fmt: skip


def test_kv_cached_greedy_decoding_matches_transformers_generate(tmp_path):
    from dlm.sampling import GenerationConfig
    from dlm.sampling.autoregressive import generate_autoregressive

    hf, folder = _hf_folder(tmp_path, "qwen2", eos_token_id=None)
    model = from_pretrained(folder)
    prompt = [5, 17, 33, 8, 61]
    with torch.no_grad():
        want = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0)[0, 5:]
    got = generate_autoregressive(model, [prompt], GenerationConfig(gen_length=12, steps=12)).sequences[0]
    assert got == want.tolist()


def test_scaled_rope_and_long_sliding_windows_are_refused_or_bounded(tmp_path):
    _, folder = _hf_folder(tmp_path, "llama")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("rope_parameters", None)
    bad = {**cfg, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    (folder / "config.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="rope_scaling: RoPE type 'llama3'.*not implemented"):
        open_checkpoint(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "rope_parameters": {"rope_type": "yarn", "factor": 4}}))
    with pytest.raises(CheckpointError, match="rope_parameters: RoPE type 'yarn'"):
        open_checkpoint(folder)
    # Mistral-style window: exact within the window, so the model is bounded to it
    mistral = {**cfg, "model_type": "mistral", "sliding_window": 16, "rope_theta": 5000.0}
    (folder / "config.json").write_text(json.dumps(mistral))
    assert open_checkpoint(folder).config.max_seq_len == 16
    (folder / "config.json").write_text(json.dumps({**mistral, "sliding_window": True}))
    with pytest.raises(CheckpointError, match="sliding_window"):
        open_checkpoint(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "hidden_act": "gelu"}))
    with pytest.raises(CheckpointError, match="hidden_act: got 'gelu'"):
        open_checkpoint(folder)
    dream = dream_config(use_sliding_window=True, sliding_window=8)
    (folder / "config.json").write_text(json.dumps(dream))
    with pytest.raises(CheckpointError, match="use_sliding_window"):
        open_checkpoint(folder)


# ---- malformed folders -----------------------------------------------------------------------------
def test_unknown_model_type_names_the_file_and_lists_the_supported(tmp_path):
    write_llada(tmp_path / "m", model_type="gpt_neox")
    with pytest.raises(CheckpointError, match=r"config.json: model_type 'gpt_neox' is not supported.*'llada'"):
        dlm.load(tmp_path / "m")


def test_missing_shard_names_the_file_and_a_tensor(tmp_path):
    write_llada(tmp_path / "m", n_shards=3)
    (tmp_path / "m" / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model-00002-of-00003.safetensors: missing weight shard.*holds model\."):
        from_pretrained(tmp_path / "m")


def _rewrite(folder, name, fn):
    """Replace tensor `name` in whichever shard holds it."""
    from safetensors.torch import load_file, save_file

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    f = folder / index["weight_map"][name]
    tensors = load_file(str(f))
    fn(tensors)
    save_file(tensors, str(f))
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if k in tensors or v != f.name}
    index["weight_map"].update({k: f.name for k in tensors})
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return f


def test_shape_dtype_missing_and_unexpected_tensors_are_named_before_anything_is_read(tmp_path, monkeypatch):
    reads = []
    orig = loading.SafetensorsSource.read_into
    monkeypatch.setattr(loading.SafetensorsSource, "read_into", lambda self, k, d: reads.append(k) or orig(self, k, d))
    name = "model.transformer.blocks.1.up_proj.weight"
    folder = tmp_path / "m"

    write_llada(folder)
    f = _rewrite(folder, name, lambda t: t.update({name: torch.zeros(47, 32, dtype=torch.bfloat16)}))
    with pytest.raises(CheckpointError, match=rf"{f.name}: tensor {name} has shape \(47, 32\), config.json implies"):
        from_pretrained(folder)

    write_llada(folder)
    f = _rewrite(folder, name, lambda t: t.update({name: torch.zeros(48, 32, dtype=torch.int32)}))
    with pytest.raises(CheckpointError, match=rf"{f.name}: tensor {name} is stored as I32; expected a floating"):
        from_pretrained(folder)

    write_llada(folder)
    _rewrite(folder, name, lambda t: t.pop(name))
    with pytest.raises(
        CheckpointError, match=rf"weights do not match config.json \(llada layout\); missing \['{name}'\]"
    ):
        from_pretrained(folder)

    write_llada(folder)
    _rewrite(folder, name, lambda t: t.update({"model.transformer.blocks.1.q_norm.weight": torch.ones(32)}))
    with pytest.raises(CheckpointError, match=r"unexpected \['model.transformer.blocks.1.q_norm.weight'\]"):
        from_pretrained(folder)
    assert reads == []  # every check runs on the headers first


def test_truncated_shard_and_index_inconsistencies_are_named(tmp_path):
    folder = tmp_path / "m"
    write_llada(folder)
    shard = folder / "model-00003-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="model-00003-of-00003.safetensors: corrupt or unreadable"):
        from_pretrained(folder)
    write_llada(folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    key = next(k for k, v in index["weight_map"].items() if v.startswith("model-00001"))
    index["weight_map"][key] = "model-00002-of-00003.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"model-00002-of-00003.safetensors: tensor {key} is listed"):
        from_pretrained(folder)


def test_pickle_only_folders_and_ambiguous_gguf_folders_are_refused(tmp_path):
    _, folder = _hf_folder(tmp_path, "llama")
    for f in folder.glob("model*.safetensors*"):
        f.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not read")
    with pytest.raises(CheckpointError, match=r"missing weights .*pytorch_model.bin \(pickle\) is not read"):
        from_pretrained(folder)
    ggufs = tmp_path / "ggufs"
    ggufs.mkdir()
    (ggufs / "a.Q4.gguf").write_bytes(b"GGUF")
    (ggufs / "a.Q8.gguf").write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match=r"several GGUF files \(a.Q4.gguf, a.Q8.gguf\); pick one"):
        open_checkpoint(ggufs)
    with pytest.raises(CheckpointError, match="no such GGUF file"):
        open_checkpoint(ggufs, gguf_file="b.gguf")
