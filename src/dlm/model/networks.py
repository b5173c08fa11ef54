"""The one network factory: `model.network` picks the class (dlm's Transformer, or the BERT body of the
DiffusionBERT family). Everything that builds a network from a config (training, checkpoint loading, export)
calls `build_network`, so a new network is one module and one line here."""

from __future__ import annotations

from torch import nn

from .config import ModelConfig
from .transformer import Transformer


def build_network(config: ModelConfig) -> nn.Module:
    """The network `config.network` names, freshly initialised (from torch's global generator)."""
    if config.network == "bert":
        from .bert import BertMLM  # imports transformers: only when asked for

        return BertMLM(config)
    return Transformer(config)
