"""The network's configuration: one dataclass, saved as config.json."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, check_choice, check_positive

ATTENTION_KINDS = ("bidirectional", "causal", "block_causal")
NETWORKS = ("transformer", "bert")  # dlm.model.build_network


@dataclass
class ModelConfig:
    vocab_size: int = 8192
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 8
    n_kv_heads: int | None = None  # None -> n_heads (no GQA)
    head_dim: int | None = None  # None -> d_model // n_heads
    d_ff: int | None = None  # SwiGLU hidden size; None -> multiple of 64 near 8/3 * d_model
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    attn_bias: bool = False  # biases on q/k/v projections (Qwen2 style)
    attn_out_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = True
    max_seq_len: int = 1024
    attention: str = "bidirectional"  # bidirectional | causal | block_causal
    block_size: int = 32  # only for block_causal attention
    init_std: float = 0.02
    # Special ids the sampler and losses read; the network itself ignores them.
    mask_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    # Model-family property: logits at position i-1 predict token i (Dream). Read by samplers and losses.
    shift_logits: bool = False
    # a learned absolute position embedding added to the input (GPT-2 / BERT style), beside RoPE: lets a
    # bidirectional network know where it is (a Sudoku cell's row and column), which RoPE alone, being relative,
    # leaves it to infer
    learned_positions: bool = False
    # inputs for continuous (embedding) diffusion: a per-position noise level (a scalar the process chooses, e.g.
    # log sigma / 4) through fixed sinusoidal features and an MLP, and a self-conditioning input (the previous
    # estimate of the clean embeddings, through a zero-initialised projection), both added to the input
    noise_conditioning: bool = False
    # the network: transformer (dlm's own) | bert (`dlm.model.bert`: transformers' BertModel body with a tied
    # masked-LM head, learned absolute positions; the DiffusionBERT family). For bert, d_ff is its intermediate size
    # and max_seq_len its number of positions; RoPE, SwiGLU, GQA and the bias switches do not apply.
    network: str = "transformer"

    def __post_init__(self) -> None:
        self.validate()

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def ff_dim(self) -> int:
        if self.d_ff:
            return self.d_ff
        return int(64 * round(8 * self.d_model / 3 / 64)) or 64

    def validate(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "block_size"):
            check_positive(f"model.{name}", getattr(self, name))
        check_choice("model.attention", self.attention, ATTENTION_KINDS)
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ConfigError("model.n_heads", f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.dim_head % 2:
            raise ConfigError("model.head_dim", f"RoPE needs an even head dimension, got {self.dim_head}")
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                "model.n_kv_heads", f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.kv_heads}"
            )
        for name in ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id"):
            v = getattr(self, name)
            if v is not None and not 0 <= v < self.vocab_size:
                raise ConfigError(f"model.{name}", f"{v} is outside the vocabulary [0, {self.vocab_size})")
        check_choice("model.network", self.network, NETWORKS)
        if self.network == "bert":
            for name, ok, allowed in (
                ("attention", self.attention == "bidirectional", "bidirectional"),
                ("n_kv_heads", self.kv_heads == self.n_heads, "null (no GQA)"),
                ("tie_embeddings", self.tie_embeddings, "true (the head is tied to the word embeddings)"),
            ):
                if not ok:
                    raise ConfigError(f"model.{name}", f"got {getattr(self, name)!r}; the bert network needs {allowed}")

    def num_parameters(self, *, include_embeddings: bool = True) -> int:
        d, hd = self.d_model, self.dim_head
        attn = d * hd * (self.n_heads * 2 + self.kv_heads * 2)
        mlp = 3 * d * self.ff_dim
        per_layer = attn + mlp + 2 * d
        per_layer += hd * (self.n_heads + 2 * self.kv_heads) if self.attn_bias else 0
        per_layer += d if self.attn_out_bias else 0
        per_layer += 2 * self.ff_dim + d if self.mlp_bias else 0
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        emb += self.max_seq_len * d if self.learned_positions else 0
        cond = (2 * d * d + 2 * d) + d * d if self.noise_conditioning else 0  # noise MLP + self-conditioning
        return self.n_layers * per_layer + d + cond + (emb if include_embeddings else 0)
