"""The network: config dataclass, Transformer (or the BERT body, `network: bert`), KV-cache hook."""

from .cache import CanvasCache, KVCache
from .config import ATTENTION_KINDS, NETWORKS, ModelConfig
from .networks import build_network
from .transformer import Transformer, build_attention_mask

__all__ = [
    "ATTENTION_KINDS",
    "NETWORKS",
    "CanvasCache",
    "KVCache",
    "ModelConfig",
    "Transformer",
    "build_attention_mask",
    "build_network",
]
