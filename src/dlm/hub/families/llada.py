"""LLaDA (GSAI-ML/LLaDA-8B-Base/-Instruct, LLaDA-1.5; model_type "llada"): OLMo-style names, LLaMA-style blocks.

Read from LLaDA's published modeling code (`LLaDALlamaBlock`): pre-norm RMSNorm (`attn_norm`, `ff_norm`, eps
`rms_norm_eps`), separate `q_proj`/`k_proj`/`v_proj` and `attn_out`, MLP `ff_out(silu(ff_proj(x)) * up_proj(x))`
(so `ff_proj` is the gate branch), rotate-half RoPE over head_dim = d_model / n_heads with base `rope_theta`,
bidirectional attention, final `ln_f`, LM head `ff_out` (or the embedding when `weight_tying`). The embedding
has `embedding_size` rows (>= `vocab_size`, padded for speed); dlm's vocab_size is that row count.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import CheckpointError
from ...model import ModelConfig
from .base import Family, RawConfig, build_model_config, canonical_d_ff

_B = "model.transformer.blocks.{i}."
EOT_TOKEN_ID = 126348  # <|eot_id|>: ends an Instruct turn; the answer is then padded with EOS (<|endoftext|>)


class LLaDAFamily(Family):
    name = "llada"
    model_types = ("llada",)
    templates = {
        "embed_tokens.weight": "model.transformer.wte.weight",
        "layers.{i}.attn_norm.weight": _B + "attn_norm.weight",
        "layers.{i}.attn.q_proj.weight": _B + "q_proj.weight",
        "layers.{i}.attn.k_proj.weight": _B + "k_proj.weight",
        "layers.{i}.attn.v_proj.weight": _B + "v_proj.weight",
        "layers.{i}.attn.q_proj.bias": _B + "q_proj.bias",
        "layers.{i}.attn.k_proj.bias": _B + "k_proj.bias",
        "layers.{i}.attn.v_proj.bias": _B + "v_proj.bias",
        "layers.{i}.attn.o_proj.weight": _B + "attn_out.weight",
        "layers.{i}.mlp_norm.weight": _B + "ff_norm.weight",
        "layers.{i}.mlp.gate_proj.weight": _B + "ff_proj.weight",
        "layers.{i}.mlp.up_proj.weight": _B + "up_proj.weight",
        "layers.{i}.mlp.down_proj.weight": _B + "ff_out.weight",
        "norm.weight": "model.transformer.ln_f.weight",
        "lm_head.weight": "model.transformer.ff_out.weight",
    }
    # LLaDA's vocabulary: <|mdm_mask|> 126336, <|endoftext|> 126081 (EOS and padding), <|startoftext|> 126080.
    special_defaults = {"mask_token_id": 126336, "eos_token_id": 126081, "pad_token_id": 126081, "bos_token_id": 126080}

    def model_config(self, raw: dict, where: Path) -> ModelConfig:
        rc = RawConfig(raw, where, "LLaDA")
        # Defaults below are those of LLaDA's own ModelConfig, so a key left out means what it means there.
        rc.require("block_type", ("llama",), "sequential", why="LLaDALlamaBlock: separate q/k/v and ff/up proj")
        rc.require("activation_type", ("silu",), "swiglu", why="silu(ff_proj(x)) * up_proj(x)")
        rc.require("rope", (True,), False, why="rotary position embeddings")
        rc.require("alibi", (False,), False)
        rc.require("layer_norm_type", ("rms",), "default", why="RMSNorm")
        rc.require("layer_norm_with_affine", (True,), True)
        rc.require("include_bias", (False,), False, why="biases only on q/k/v (include_qkv_bias)")
        rc.require("bias_for_layer_norm", (None, False), None)
        rc.require("attention_layer_norm", (False,), False, why="no q/k norm")
        rc.require("input_emb_norm", (False,), False)
        rc.require("scale_logits", (False,), False)
        rc.require("block_group_size", (1,), 1)
        d, heads = rc.int("d_model"), rc.int("n_heads")
        if d % heads:
            raise rc.error("n_heads", f"d_model={d} is not divisible by n_heads={heads}")
        mqa = rc.get("multi_query_attention", None)
        n_kv = rc.int("n_kv_heads", None)
        if mqa is True:
            if n_kv not in (None, 1):
                raise rc.error("n_kv_heads", f"got {n_kv} with multi_query_attention true")
            n_kv = 1
        n_kv = None if n_kv in (None, heads) else n_kv
        vocab = rc.int("vocab_size", 50257)
        rows = rc.int("embedding_size", None) or vocab
        if rows < vocab:
            raise rc.error("embedding_size", f"{rows} is smaller than vocab_size {vocab}")
        d_ff = rc.int("mlp_hidden_size", None) or rc.int("mlp_ratio", 4) * d
        sd = self.special_defaults
        return build_model_config(
            where,
            vocab_size=rows,
            d_model=d,
            n_layers=rc.int("n_layers"),
            n_heads=heads,
            n_kv_heads=n_kv,
            d_ff=canonical_d_ff(d, d_ff),
            rope_theta=rc.float("rope_theta", 10000.0),
            norm_eps=rc.float("rms_norm_eps", 1e-5),
            attn_bias=rc.bool("include_qkv_bias", False),
            tie_embeddings=rc.bool("weight_tying", True),
            max_seq_len=rc.int("max_sequence_length", 1024),
            attention="bidirectional",
            init_std=rc.float("init_std", 0.02),
            mask_token_id=rc.special("mask_token_id", sd["mask_token_id"], rows),
            eos_token_id=rc.special("eos_token_id", sd["eos_token_id"], rows),
            pad_token_id=rc.special("pad_token_id", sd["pad_token_id"], rows),
            bos_token_id=rc.special("bos_token_id", sd["bos_token_id"], rows),
        )

    def export_config(self, c: ModelConfig) -> dict:
        """LLaDA's config.json for a dlm model; refuses what LLaDA's network cannot express."""
        problems = []
        if c.attention != "bidirectional":
            problems.append(f"attention={c.attention!r} (LLaDA is bidirectional)")
        if c.shift_logits:
            problems.append("shift_logits=True (LLaDA predicts each position in place)")
        if c.attn_out_bias or c.mlp_bias:
            problems.append("attn_out_bias/mlp_bias (LLaDA has biases only on q/k/v)")
        if c.head_dim is not None and c.head_dim * c.n_heads != c.d_model:
            problems.append(f"head_dim={c.head_dim} (LLaDA uses d_model / n_heads = {c.d_model / c.n_heads:g})")
        if problems:
            raise CheckpointError("cannot write the LLaDA layout: " + "; ".join(problems))
        return {
            "model_type": "llada",
            "architectures": ["LLaDAModelLM"],
            # LLaDA's own configuration_llada.py / modeling_llada.py, copied into the folder, read this.
            "auto_map": {
                "AutoConfig": "configuration_llada.LLaDAConfig",
                "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                "AutoModel": "modeling_llada.LLaDAModelLM",
            },
            "activation_type": "silu",
            "alibi": False,
            "alibi_bias_max": 8.0,
            "attention_dropout": 0.0,
            "attention_layer_norm": False,
            "attention_layer_norm_with_affine": True,
            "bias_for_layer_norm": False,
            "block_group_size": 1,
            "block_type": "llama",
            "d_model": c.d_model,
            "embedding_dropout": 0.0,
            "embedding_size": c.vocab_size,
            "flash_attention": False,
            "include_bias": False,
            "include_qkv_bias": c.attn_bias,
            "init_cutoff_factor": None,
            "init_device": "meta",
            "init_fn": "normal",
            "init_std": c.init_std,
            "input_emb_norm": False,
            "layer_norm_type": "rms",
            "layer_norm_with_affine": True,
            "max_sequence_length": c.max_seq_len,
            "mlp_hidden_size": c.ff_dim,
            "mlp_ratio": 4,
            "multi_query_attention": None,
            "n_heads": c.n_heads,
            "n_kv_heads": c.kv_heads,
            "n_layers": c.n_layers,
            "precision": "amp_bf16",
            "residual_dropout": 0.0,
            "rms_norm_eps": c.norm_eps,
            "rope": True,
            "rope_full_precision": True,
            "rope_theta": c.rope_theta,
            "scale_logits": False,
            "use_cache": False,
            "vocab_size": c.vocab_size,
            "weight_tying": c.tie_embeddings,
            "mask_token_id": c.mask_token_id,
            "eos_token_id": c.eos_token_id,
            "pad_token_id": c.pad_token_id,
            "bos_token_id": c.bos_token_id,
        }

    def generation_defaults(self) -> dict:
        # LLaDA's published Instruct settings: 128 tokens, 128 steps, blocks of 32, greedy, low-confidence remasking.
        return {"gen_length": 128, "steps": 128, "block_length": 32, "temperature": 0.0, "policy": "low_confidence"}
