"""Tiny foreign checkpoints written in their real on-disk layouts, and reference forwards written here from the
published architectures (explicit einsums, own RoPE, float64) - independent of dlm's network code.

LLaDA: OLMo-style names (`model.transformer.blocks.N.q_proj`, `attn_out`, `ff_proj` = gate, `up_proj`, `ff_out`),
config keys as in GSAI-ML/LLaDA-8B-Instruct's config.json, bf16 shards whose tensors are spread over files by
kind (as LLaDA's index does). Dream: Qwen2 names with q/k/v biases, config keys as Dream-v0-Instruct-7B's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

LLADA_VOCAB, LLADA_ROWS = 100, 128  # vocab_size, embedding_size (padded, as LLaDA's 126464)
DREAM_VOCAB = 96


def write_sharded(folder: Path, state: dict[str, torch.Tensor], n_shards: int) -> None:
    """model-0000k-of-0000N.safetensors + model.safetensors.index.json, tensors dealt round-robin by name."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(state)
    files = [f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors" for k in range(n_shards)]
    weight_map = {n: files[i % n_shards] for i, n in enumerate(names)}
    for f in files:
        save_file({n: state[n].contiguous() for n in names if weight_map[n] == f}, str(folder / f), {"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def llada_config(**kw) -> dict:
    cfg = {
        "activation_type": "silu",
        "alibi": False,
        "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0,
        "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "auto_map": {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
            "AutoModel": "modeling_llada.LLaDAModelLM",
        },
        "bias_for_layer_norm": False,
        "block_group_size": 1,
        "block_type": "llama",
        "d_model": 32,
        "embedding_dropout": 0.0,
        "embedding_size": LLADA_ROWS,
        "eos_token_id": 91,
        "flash_attention": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "init_cutoff_factor": None,
        "init_device": "meta",
        "init_fn": "mitchell",
        "init_std": 0.02,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "mask_token_id": 90,
        "max_sequence_length": 64,
        "mlp_hidden_size": 48,
        "mlp_ratio": 4,
        "model_type": "llada",
        "multi_query_attention": None,
        "n_heads": 4,
        "n_kv_heads": 4,
        "n_layers": 2,
        "pad_token_id": 91,
        "precision": "amp_bf16",
        "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": 500000.0,
        "scale_logits": False,
        "transformers_version": "4.46.3",
        "use_cache": False,
        "vocab_size": LLADA_VOCAB,
        "weight_tying": False,
    }
    cfg.update(kw)
    return cfg


def llada_state(cfg: dict, seed: int = 0, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d, h, kv, ff = cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"], cfg["mlp_hidden_size"]
    hd, rows = d // h, cfg["embedding_size"] or cfg["vocab_size"]

    def w(*shape, scale=0.2):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    s = {"model.transformer.wte.weight": w(rows, d, scale=0.3), "model.transformer.ln_f.weight": 1 + w(d, scale=0.1)}
    if not cfg["weight_tying"]:
        s["model.transformer.ff_out.weight"] = w(rows, d)
    for i in range(cfg["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        s[p + "attn_norm.weight"] = 1 + w(d, scale=0.1)
        s[p + "ff_norm.weight"] = 1 + w(d, scale=0.1)
        s[p + "q_proj.weight"] = w(d, d)
        s[p + "k_proj.weight"] = w(kv * hd, d)
        s[p + "v_proj.weight"] = w(kv * hd, d)
        if cfg["include_qkv_bias"]:
            s[p + "q_proj.bias"], s[p + "k_proj.bias"], s[p + "v_proj.bias"] = w(d), w(kv * hd), w(kv * hd)
        s[p + "attn_out.weight"] = w(d, d)
        s[p + "ff_proj.weight"] = w(ff, d)
        s[p + "up_proj.weight"] = w(ff, d)
        s[p + "ff_out.weight"] = w(d, ff)
    return s


def write_llada(folder: Path, n_shards: int = 3, seed: int = 0, **kw) -> dict[str, torch.Tensor]:
    cfg = llada_config(**kw)
    state = llada_state(cfg, seed)
    write_sharded(folder, state, n_shards)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    (folder / "generation_config.json").write_text(
        json.dumps({"_from_model_config": True, "bos_token_id": 89, "eos_token_id": 91})
    )
    return state


def dream_config(**kw) -> dict:
    cfg = {
        "architectures": ["DreamModel"],
        "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": 92,
        "eos_token_id": 93,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 48,
        "mask_token_id": 95,
        "max_position_embeddings": 128,
        "max_window_layers": 28,
        "model_type": "Dream",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "pad_token_id": 93,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.46.2",
        "use_cache": True,
        "use_mrope": False,
        "use_sliding_window": False,
        "vocab_size": DREAM_VOCAB,
    }
    cfg.update(kw)
    return cfg


def dream_state(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d, h, kv, ff = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]
    hd, v = d // h, cfg["vocab_size"]

    def w(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    s = {"model.embed_tokens.weight": w(v, d, scale=0.3), "model.norm.weight": 1 + w(d, scale=0.1)}
    if not cfg["tie_word_embeddings"]:
        s["lm_head.weight"] = w(v, d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        s[p + "input_layernorm.weight"] = 1 + w(d, scale=0.1)
        s[p + "post_attention_layernorm.weight"] = 1 + w(d, scale=0.1)
        for name, out in (("q", h * hd), ("k", kv * hd), ("v", kv * hd)):
            s[p + f"self_attn.{name}_proj.weight"] = w(out, d)
            s[p + f"self_attn.{name}_proj.bias"] = w(out)
        s[p + "self_attn.o_proj.weight"] = w(d, h * hd)
        s[p + "mlp.gate_proj.weight"] = w(ff, d)
        s[p + "mlp.up_proj.weight"] = w(ff, d)
        s[p + "mlp.down_proj.weight"] = w(d, ff)
    return s


def write_dream(folder: Path, n_shards: int = 2, seed: int = 0, **kw) -> dict[str, torch.Tensor]:
    cfg = dream_config(**kw)
    state = dream_state(cfg, seed)
    write_sharded(folder, state, n_shards)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return state


# ---- reference forwards ------------------------------------------------------------------------------
def _rms(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def _rotate_pairs(t, theta):
    """RoPE as a rotation of the pair (j, j + D/2) by angle pos * theta^(-2j/D). t: (B, L, H, D)."""
    L, D = t.shape[1], t.shape[-1]
    ang = torch.arange(L, dtype=torch.float64)[:, None] * theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    c, s = torch.cos(ang)[None, :, None, :], torch.sin(ang)[None, :, None, :]
    a, b = t[..., : D // 2], t[..., D // 2 :]
    return torch.cat([a * c - b * s, a * s + b * c], dim=-1)


def _block(x, n, *, heads, kv_heads, eps, theta, causal):
    """One pre-norm block; `n` maps role -> weight (None where absent)."""
    B, L, d = x.shape
    hd = n["q"].shape[0] // heads
    h = _rms(x, n["attn_norm"], eps)

    def proj(name, nh):
        y = torch.einsum("bld,ed->ble", h, n[name])
        if n.get(name + "_bias") is not None:
            y = y + n[name + "_bias"]
        return y.view(B, L, nh, hd)

    q = _rotate_pairs(proj("q", heads), theta)
    k = _rotate_pairs(proj("k", kv_heads), theta)
    v = proj("v", kv_heads)
    group = heads // kv_heads
    out = torch.zeros(B, L, heads, hd, dtype=x.dtype)
    for head in range(heads):  # explicit GQA: query head j reads key/value head j // group
        kh = head // group
        scores = torch.einsum("bqd,bkd->bqk", q[:, :, head], k[:, :, kh]) / math.sqrt(hd)
        if causal:
            scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
        out[:, :, head] = torch.einsum("bqk,bkd->bqd", torch.softmax(scores, -1), v[:, :, kh])
    x = x + torch.einsum("ble,de->bld", out.reshape(B, L, heads * hd), n["o"])
    h = _rms(x, n["ff_norm"], eps)
    gate = torch.einsum("bld,fd->blf", h, n["gate"])
    up = torch.einsum("bld,fd->blf", h, n["up"])
    return x + torch.einsum("blf,df->bld", gate * torch.sigmoid(gate) * up, n["down"])


def llada_reference(state: dict, cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    """LLaDA's published forward (LLaDALlamaBlock), bidirectional, in float64. Returns (B, L, rows) logits."""
    W = {k: v.double() for k, v in state.items()}
    x = W["model.transformer.wte.weight"][ids]
    for i in range(cfg["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        n = {
            "attn_norm": W[p + "attn_norm.weight"],
            "ff_norm": W[p + "ff_norm.weight"],
            "q": W[p + "q_proj.weight"],
            "k": W[p + "k_proj.weight"],
            "v": W[p + "v_proj.weight"],
            "q_bias": W.get(p + "q_proj.bias"),
            "k_bias": W.get(p + "k_proj.bias"),
            "v_bias": W.get(p + "v_proj.bias"),
            "o": W[p + "attn_out.weight"],
            "gate": W[p + "ff_proj.weight"],  # LLaDA: act(ff_proj(x)) * up_proj(x)
            "up": W[p + "up_proj.weight"],
            "down": W[p + "ff_out.weight"],
        }
        x = _block(
            x, n, heads=cfg["n_heads"], kv_heads=cfg["n_kv_heads"], eps=cfg["rms_norm_eps"],
            theta=cfg["rope_theta"], causal=False,
        )  # fmt: skip
    x = _rms(x, W["model.transformer.ln_f.weight"], cfg["rms_norm_eps"])
    head = W["model.transformer.wte.weight"] if cfg["weight_tying"] else W["model.transformer.ff_out.weight"]
    return torch.einsum("bld,vd->blv", x, head)


def qwen2_reference(state: dict, cfg: dict, ids: torch.Tensor, *, causal: bool) -> torch.Tensor:
    """Qwen2-layout forward (Dream: causal=False; its logits at i-1 predict token i), float64."""
    W = {k: v.double() for k, v in state.items()}
    x = W["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        n = {
            "attn_norm": W[p + "input_layernorm.weight"],
            "ff_norm": W[p + "post_attention_layernorm.weight"],
            **{r: W[a + f"{r}_proj.weight"] for r in ("q", "k", "v", "o")},
            **{f"{r}_bias": W.get(a + f"{r}_proj.bias") for r in ("q", "k", "v")},
            "gate": W[p + "mlp.gate_proj.weight"],
            "up": W[p + "mlp.up_proj.weight"],
            "down": W[p + "mlp.down_proj.weight"],
        }
        x = _block(
            x, n, heads=cfg["num_attention_heads"], kv_heads=cfg["num_key_value_heads"], eps=cfg["rms_norm_eps"],
            theta=cfg["rope_theta"], causal=causal,
        )  # fmt: skip
    x = _rms(x, W["model.norm.weight"], cfg["rms_norm_eps"])
    head = W["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else W["lm_head.weight"]
    return torch.einsum("bld,vd->blv", x, head)


# ---- tokenizers ----------------------------------------------------------------------------------------
LLADA_CHAT_TEMPLATE = (  # LLaDA-8B-Instruct's tokenizer_config.json chat_template
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
)
WORDS = (
    "the a of and to in is it that was he for on are as with his they at be this from have or by one had not "
    "but what all were when we there can an your which their said if do will each about how up out them then "
    "she many some so these would other into has more her two like him see time could no make than first been "
    "who its now people my made over did down only way find use may water long little very after user hello "
    "world assistant system Paris France capital"
).split()[:85]
LLADA_SPECIALS = {
    "<unk>": 85,
    "<|start_header_id|>": 86,
    "<|end_header_id|>": 87,
    "<|eot_id|>": 88,
    "<|startoftext|>": 89,
    "<|mdm_mask|>": 90,
    "<|endoftext|>": 91,
}


def write_llada_tokenizer(folder: Path) -> None:
    """A word-level tokenizer.json whose special tokens sit at the tiny LLaDA's ids (mask 90, EOS 91, BOS 89),
    with LLaDA's tokenizer_config.json (PreTrainedTokenizerFast, chat template, special-token names)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(WORDS)}
    vocab.update(LLADA_SPECIALS)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLADA_SPECIALS if t != "<unk>"])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": "<|startoftext|>",
        "chat_template": LLADA_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


# ---- a causal model whose vocabulary has no mask token (SmolLM2-like) --------------------------------------
SMOL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<filename>", "<gh_stars>"]  # ids 0..4
SMOL_CHAT_TEMPLATE = (  # SmolLM2-135M-Instruct's
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def write_causal_without_mask(folder: Path, texts: list[str], vocab_size: int = 384, seed: int = 0) -> Path:
    """A tiny random causal dlm folder with a SmolLM2-style tokenizer: a byte-level BPE trained on `texts` whose
    special tokens are StarCoder's (EOS `<|im_end|>`, unused `<filename>`, `<gh_stars>`) and no mask token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from dlm.hub import HFTokenizer, save_pretrained
    from dlm.model import ModelConfig, Transformer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SMOL_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok_dir = folder.parent / f".{folder.name}-tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(tok_dir / "tokenizer.json"))
    config = {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "chat_template": SMOL_CHAT_TEMPLATE,
        "tokenizer_class": "GPT2Tokenizer",
    }
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    hf_tok = HFTokenizer.from_dir(tok_dir)
    assert hf_tok.mask_token_id is None and hf_tok.eos_token_id == 2
    cfg = ModelConfig(
        vocab_size=hf_tok.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256,
        attention="causal", mask_token_id=None, eos_token_id=2, pad_token_id=2, bos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(seed)
    return save_pretrained(Transformer(cfg), folder, tokenizer=hf_tok)
