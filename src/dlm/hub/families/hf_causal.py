"""LLaMA / Qwen2 / Mistral causal LMs in the Hugging Face layout (`model.layers.N.self_attn.q_proj`, ...).

Loaded with `attention="causal"`: baselines, and sources for AR->diffusion adaptation. The network is the same
as dlm's (pre-norm RMSNorm, rotate-half RoPE, SwiGLU, GQA), so the mapping is a pure rename. Anything else in
the config (scaled RoPE, a sliding window longer sequences would need, other activations) is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import CheckpointError
from ...model import ModelConfig
from .base import Family, RawConfig, build_model_config

HF_TEMPLATES: dict[str, str] = {
    "embed_tokens.weight": "model.embed_tokens.weight",
    "layers.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "layers.{i}.mlp_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
for _p in ("q", "k", "v", "o"):
    for _s in ("weight", "bias"):
        HF_TEMPLATES[f"layers.{{i}}.attn.{_p}_proj.{_s}"] = f"model.layers.{{i}}.self_attn.{_p}_proj.{_s}"
for _p in ("gate", "up", "down"):
    for _s in ("weight", "bias"):
        HF_TEMPLATES[f"layers.{{i}}.mlp.{_p}_proj.{_s}"] = f"model.layers.{{i}}.mlp.{_p}_proj.{_s}"

SILU = ("silu", "swish")


def rope_theta(rc: RawConfig) -> float:
    """RoPE base from `rope_theta` (transformers 4) or `rope_parameters` (transformers 5); any scaled or
    partial RoPE is refused."""
    params = rc.get("rope_parameters", None)
    for key in ("rope_parameters", "rope_scaling"):
        spec = rc.get(key, None)
        if spec is None:
            continue
        if not isinstance(spec, dict) or any(isinstance(v, dict) for v in spec.values()):
            raise rc.error(key, f"got {spec!r}; dlm implements one plain RoPE for all layers")
        kind = spec.get("rope_type", spec.get("type", "default"))
        if kind != "default":
            raise rc.error(
                key, f"RoPE type {kind!r} ({spec}) is not implemented; dlm implements plain RoPE (rope_type 'default')"
            )
        if spec.get("partial_rotary_factor", 1.0) != 1.0:
            raise rc.error(key, "partial rotary embeddings are not implemented (partial_rotary_factor must be 1)")
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return rc.float("rope_theta", 10000.0)


def sliding_window(rc: RawConfig, *, always_on: bool) -> int | None:
    """The attention window when one is active, else None. `always_on`: Mistral semantics (a non-null
    sliding_window applies to every layer); otherwise Qwen2's `use_sliding_window` flag / `layer_types`."""
    window = rc.get("sliding_window", None)
    layer_types = rc.get("layer_types", None)
    if layer_types is not None:
        odd = sorted(set(layer_types) - {"full_attention", "sliding_attention"})
        if odd:
            raise rc.error("layer_types", f"layer types {odd} are not implemented")
    active = window is not None if always_on else bool(rc.get("use_sliding_window", False))
    if layer_types is not None:
        active = "sliding_attention" in layer_types
    if not active:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise rc.error("sliding_window", f"got {window!r} with sliding-window attention on; expected a window size")
    return window


def hf_special(rc: RawConfig, key: str, default: int | None, vocab_size: int | None = None) -> int | None:
    """A special id from config.json, else from generation_config.json beside it, else `default`."""
    v = rc.special(key, None) if key in rc.raw else None
    if v is not None:
        return v
    gen_file = rc.where.parent / "generation_config.json"
    if rc.where.name == "config.json" and gen_file.is_file():
        try:
            gen = json.loads(gen_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{gen_file}: corrupt JSON ({e})") from None
        g = RawConfig(gen, gen_file, rc.family).special(key, None) if isinstance(gen, dict) else None
        if g is not None:
            return g
    return rc.special(key, default, vocab_size)


class HFLayoutFamily(Family):
    """Common reading of the HF decoder config (hidden_size, num_attention_heads, ...)."""

    templates = HF_TEMPLATES
    ignored = (r"\.rotary_emb\.inv_freq$",)
    attention = "causal"
    shift_logits = False
    diffusion = False
    window_always_on = False

    def biases(self, rc: RawConfig) -> tuple[bool, bool, bool]:
        """(q/k/v bias, o bias, mlp bias)."""
        return False, False, False

    def model_config(self, raw: dict, where: Path) -> ModelConfig:
        rc = RawConfig(raw, where, self.name)
        rc.require("hidden_act", SILU, "silu", why="SwiGLU MLP")
        d, heads = rc.int("hidden_size"), rc.int("num_attention_heads")
        theta = rope_theta(rc)
        max_len = rc.int("max_position_embeddings", 4096)
        window = self.window(rc)
        if window is not None:  # within the window, sliding-window attention is exactly full attention
            max_len = min(max_len, window)
        head_dim = rc.int("head_dim", None)
        attn_bias, out_bias, mlp_bias = self.biases(rc)
        sd, vocab = self.special_defaults, rc.int("vocab_size")
        return build_model_config(
            where,
            vocab_size=vocab,
            d_model=d,
            n_layers=rc.int("num_hidden_layers"),
            n_heads=heads,
            n_kv_heads=rc.int("num_key_value_heads", None),
            head_dim=None if d % heads == 0 and head_dim in (None, d // heads) else head_dim,
            d_ff=rc.int("intermediate_size"),
            rope_theta=theta,
            norm_eps=rc.float("rms_norm_eps", 1e-6),
            attn_bias=attn_bias,
            attn_out_bias=out_bias,
            mlp_bias=mlp_bias,
            tie_embeddings=rc.bool("tie_word_embeddings", False),
            max_seq_len=max_len,
            attention=self.attention,
            mask_token_id=rc.special("mask_token_id", sd.get("mask_token_id"), vocab),
            eos_token_id=hf_special(rc, "eos_token_id", sd.get("eos_token_id"), vocab),
            pad_token_id=hf_special(rc, "pad_token_id", sd.get("pad_token_id"), vocab),
            bos_token_id=hf_special(rc, "bos_token_id", sd.get("bos_token_id"), vocab),
            shift_logits=self.shift_logits,
        )

    def window(self, rc: RawConfig) -> int | None:
        return sliding_window(rc, always_on=self.window_always_on)


class LlamaFamily(HFLayoutFamily):
    name = "llama"
    model_types = ("llama",)

    def biases(self, rc):
        b = rc.bool("attention_bias", False)
        return b, b, rc.bool("mlp_bias", False)


class Qwen2Family(HFLayoutFamily):
    name = "qwen2"
    model_types = ("qwen2",)

    def biases(self, rc):
        return True, False, False


class MistralFamily(HFLayoutFamily):
    name = "mistral"
    model_types = ("mistral",)
    window_always_on = True
