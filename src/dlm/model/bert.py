"""A BERT body with a masked-LM head: the network of the DiffusionBERT family (He et al., arXiv 2211.15029).

The body is `transformers.BertModel` (no pooler; built from a dlm `ModelConfig` with `network: bert`, so a
pretrained body such as MiniLM-L6 loads through `dlm.hub` from its own safetensors, nothing executed from it).
The head is built here: dense → GELU → LayerNorm, then the word-embedding matrix (tied) plus a per-token bias.

The network maps (input_ids | inputs_embeds, attention_mask, position_ids) -> logits with the same call signature
as `dlm.model.Transformer.forward`, so every loss and sampler of dlm drives it. Positions and the attention mask
come from the same builders as the Transformer's (left padding keeps a prompt's positions, packing and 4-D masks
pass through), so a row's output never depends on the batch around it. It knows nothing of noise; it takes no
time input (DiffusionBERT decodes time-agnostically). Attention is bidirectional; there is no KV cache, so the
sampler's prefix/dual caches refuse it (`supports_canvas_cache = False`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .config import ModelConfig
from .transformer import attention_inputs

TYPE_VOCAB_SIZE = 2  # BERT's segment (token type) embeddings; dlm always uses type 0


def bert_config(config: ModelConfig):
    """The `transformers.BertConfig` of a dlm ModelConfig (network: bert): sizes from the dlm fields, GELU,
    absolute learned positions (max_seq_len of them), no dropout (training noise is the diffusion's), SDPA."""
    from transformers import BertConfig

    bc = BertConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        intermediate_size=config.ff_dim,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=config.max_seq_len,
        type_vocab_size=TYPE_VOCAB_SIZE,
        initializer_range=config.init_std,
        layer_norm_eps=config.norm_eps,
        pad_token_id=config.pad_token_id if config.pad_token_id is not None else 0,
    )
    bc._attn_implementation = "sdpa"  # takes dlm's boolean (B, 1, Q, K) masks as they are
    return bc


class MLMHead(nn.Module):
    """BERT's prediction-head transform (dense, GELU, LayerNorm); the tied output matrix lives in the body."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(hidden)))


class BertMLM(nn.Module):
    """BERT body + tied masked-LM head. Weight names: `body.*` (BertModel's own) and `mlm.*` (the head)."""

    supports_canvas_cache = False  # no KV cache: the sampler's prefix/dual caches refuse it ('none' works)

    def __init__(self, config: ModelConfig):
        super().__init__()
        from transformers import BertModel

        self.config = config
        self.body = BertModel(bert_config(config), add_pooling_layer=False)
        emb = self.body.embeddings
        # positions and token types are always passed in: the buffers that would default them are dropped, so a
        # network built on the meta device (checkpoint loading) has no tensor left unfilled
        for name in ("position_ids", "token_type_ids"):
            if name in emb._buffers:
                delattr(emb, name)
        self.mlm = MLMHead(config)
        self.reset_parameters(self.head_keys())

    @staticmethod
    def head_keys() -> list[str]:
        return ["mlm.dense.weight", "mlm.dense.bias", "mlm.norm.weight", "mlm.norm.bias", "mlm.bias"]

    def reset_parameters(self, keys: list[str] | None = None) -> None:
        """BERT's initialisation (normal(0, init_std) matrices, zero biases, unit LayerNorm gains) of the named
        parameters (all when None): a pretrained body loads with `keys` = the head's, which it does not store."""
        std = self.config.init_std
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name in keys if keys is not None else list(params):
                p = params[name]
                if p.dim() > 1:
                    nn.init.normal_(p, 0.0, std)
                elif "norm" in name.lower() and name.endswith("weight"):
                    nn.init.ones_(p)
                else:
                    nn.init.zeros_(p)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.body.embeddings.word_embeddings

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        logits_index: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Logits (B, L, V), or (B, A, V) at positions `logits_index` (B, A); with `return_hidden` the head's
        transformed hidden states (what `head` maps to logits). Arguments as `Transformer.forward`; `cache` must be
        None (the network keeps no K/V)."""
        if cache is not None:
            raise InputError("cache", "the BERT network keeps no K/V cache; sample with cache='none'")
        if (input_ids is None) == (inputs_embeds is None):
            raise InputError("input_ids", "pass exactly one of input_ids or inputs_embeds")
        B, L = (input_ids if inputs_embeds is None else inputs_embeds).shape[:2]
        device = (input_ids if inputs_embeds is None else inputs_embeds).device
        position_ids, mask = attention_inputs(self.config, attention_mask, position_ids, None, B, L, device)
        position_ids = position_ids.expand(B, L)
        out = self.body(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=mask,
            position_ids=position_ids,
            token_type_ids=torch.zeros_like(position_ids),
        ).last_hidden_state
        if logits_index is not None:
            out = torch.gather(out, 1, logits_index[..., None].expand(-1, -1, out.shape[-1]))
        hidden = self.mlm(out)
        return hidden if return_hidden else self.head(hidden)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of the head's transformed hidden states (..., d) -> (..., V): the tied embeddings plus a bias."""
        return F.linear(hidden, self.embed_tokens.weight, self.mlm.bias)

    head_weight = None  # the head has a bias: losses call `head` instead of fusing the matrix with the CE
