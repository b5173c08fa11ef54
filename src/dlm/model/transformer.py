"""One Transformer for every dlm model: RoPE, RMSNorm, SwiGLU, GQA; bidirectional, causal or block-causal.

The network maps (input_ids | inputs_embeds, attention_mask, position_ids, cache) -> logits. It knows
nothing of noise schedules or samplers, and `forward` has no data-dependent Python control flow.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .cache import KVCache
from .config import ModelConfig
from .masks import build_mask, key_positions


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_cos_sin(positions: torch.Tensor, dim: int, theta: float, dtype: torch.dtype):
    """cos/sin of shape (B, L, dim) for integer positions (B, L); LLaMA's half-rotation layout."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, L, D); cos/sin: (B, L, D)."""
    cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.kv_heads, cfg.dim_head
        self.q_proj = nn.Linear(cfg.d_model, self.n_heads * self.hd, bias=cfg.attn_bias)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv * self.hd, bias=cfg.attn_bias)
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv * self.hd, bias=cfg.attn_bias)
        self.o_proj = nn.Linear(self.n_heads * self.hd, cfg.d_model, bias=cfg.attn_out_bias)

    def forward(self, x, cos, sin, mask, cache: KVCache | None):
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.n_heads, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, L, self.n_kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        if self.n_kv != self.n_heads:
            rep = self.n_heads // self.n_kv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, L, self.n_heads * self.hd))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.ff_dim, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ff_dim, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.ff_dim, cfg.d_model, bias=cfg.mlp_bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer_idx)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache)
        return x + self.mlp(self.mlp_norm(x))


def build_attention_mask(
    cfg: ModelConfig,
    attention_mask: torch.Tensor | None,
    q_len: int,
    k_len: int,
    device,
    q_slots: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Boolean (B|1, 1, q_len, k_len) mask, True = may attend.

    Queries sit at key slots `q_slots` (B|1, q_len); by default they are the last q_len of k_len keys.
    Block-causal structure is computed on positions (`cumsum(mask) - 1` of the key mask), so left padding
    does not move block boundaries. A 4-D boolean mask is passed through unchanged (callers with special
    structure, e.g. packing or two-stream block diffusion, build their own, with `dlm.model.masks`). A query
    may always attend to itself, so rows that are all padding stay finite. The rule: `dlm.model.masks`.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask.to(torch.bool)
    if q_slots is None:
        q_slots = torch.arange(k_len - q_len, k_len, device=device)[None]
    return build_mask(
        cfg.attention, k_len, q_slots=q_slots, key_mask=attention_mask, block_size=cfg.block_size, device=device
    )


def attention_inputs(
    cfg: ModelConfig,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    cache,
    batch: int,
    q_len: int,
    device,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(position_ids (B, L), mask (B|1, 1, L, K) bool or None) of a forward of `q_len` queries: what
    `Transformer.forward` computes before its first layer (the ONNX backend, `dlm.hub.onnx_runtime`, calls it too).

    Where the queries sit among the keys comes from the cache (appended, or a window of a cached canvas);
    default positions come from a 2-D key mask (left padding keeps a prompt's positions) or are those slots.
    """
    q_slots, k_len = cache.slots(batch, q_len, device) if cache is not None else (None, q_len)
    if position_ids is None:
        if attention_mask is not None and attention_mask.dim() == 2:
            key_pos = key_positions(attention_mask, attention_mask.shape[1], device)
            position_ids = key_pos[:, -q_len:] if q_slots is None else key_pos.gather(1, q_slots.expand(batch, -1))
        else:
            slots = q_slots if q_slots is not None else torch.arange(q_len, device=device)[None]
            position_ids = slots.expand(batch, q_len)
    return position_ids, build_attention_mask(cfg, attention_mask, q_len, k_len, device, q_slots)


def sinusoidal_features(level: torch.Tensor, dim: int) -> torch.Tensor:
    """(..., dim) fixed sin/cos features of a scalar level (...,), at geometric frequencies 1 .. 1000 (as a diffusion
    network's timestep embedding)."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), half, device=level.device, dtype=torch.float32))
    arg = level.float()[..., None] * freqs
    return torch.cat([arg.sin(), arg.cos()], dim=-1)


class NoiseConditioning(nn.Module):
    """What continuous diffusion adds to the input: MLP(features(noise level)) and a projection of the
    self-conditioning estimate (zero-initialised: a fresh network ignores it)."""

    def __init__(self, d: int):
        super().__init__()
        self.level_in = nn.Linear(d, d)
        self.level_out = nn.Linear(d, d)
        self.self_cond = nn.Linear(d, d, bias=False)

    def forward(self, x, noise_level, self_condition):
        lvl = noise_level[:, None].expand(x.shape[:2]) if noise_level.dim() == 1 else noise_level
        h = self.level_out(F.silu(self.level_in(sinusoidal_features(lvl, x.shape[-1]).to(x.dtype))))
        x = x + h
        if self_condition is not None:
            x = x + self.self_cond(self_condition.to(x.dtype))
        return x


class Transformer(nn.Module):
    """Decoder-style stack; attention kind from the config. Weight names follow LLaMA's."""

    supports_canvas_cache = True  # the diffusion sampler's prefix/dual caches (dlm.model.CanvasCache) work here

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        if config.learned_positions:
            self.embed_positions = nn.Embedding(config.max_seq_len, config.d_model)
        if config.noise_conditioning:
            self.noise_cond = NoiseConditioning(config.d_model)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        out_std = std / math.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                if name.endswith("norm.weight"):
                    nn.init.ones_(p)
                else:
                    nn.init.zeros_(p)
            elif name.endswith("self_cond.weight"):
                nn.init.zeros_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, out_std)
            else:
                nn.init.normal_(p, 0.0, std)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        logits_index: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_hidden: bool = False,
        noise_level: torch.Tensor | None = None,
        self_condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, L, V), or (B, A, V) at positions `logits_index` (B, A) when given.

        attention_mask: (B, K) with 1 for real tokens over all K keys (cached + current), or a 4-D
        boolean mask. position_ids: (B, L); default: from the mask (left padding keeps positions of a
        prompt the same as alone), or the query slots the cache reports (0..L-1 offset by its length).
        cache: a `KVCache` (appends) or a `CanvasCache` (refresh / window of a cached canvas).
        noise_level (B,) or (B, L), self_condition (B, L, d): inputs of a `noise_conditioning` network
        (continuous diffusion); the level is required there and refused elsewhere.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise InputError("input_ids", "pass exactly one of input_ids or inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, L = x.shape[:2]
        position_ids, mask = attention_inputs(self.config, attention_mask, position_ids, cache, B, L, x.device)
        if self.config.learned_positions:
            x = x + self.embed_positions(position_ids)
        if (noise_level is None) == self.config.noise_conditioning:
            raise InputError("noise_level", "a noise_conditioning network needs it; any other refuses it")
        if noise_level is not None:
            x = self.noise_cond(x, noise_level, self_condition)
        cos, sin = rope_cos_sin(position_ids, self.config.dim_head, self.config.rope_theta, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache)
        if logits_index is not None:
            x = torch.gather(x, 1, logits_index[..., None].expand(-1, -1, x.shape[-1]))
        x = self.norm(x)
        if return_hidden:
            return x
        return self.lm_head(x)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head on final (normed) hidden states of any shape (..., d) -> (..., V)."""
        return self.lm_head(hidden)

    @property
    def head_weight(self) -> torch.Tensor | None:
        """The (V, d) matrix `head` multiplies by (no bias): lets losses fuse the head with cross-entropy. None
        when the head is quantised (a torchao tensor subclass: losses then call `head`)."""
        w = self.lm_head.weight
        return w if type(w) in (torch.Tensor, nn.Parameter) else None
