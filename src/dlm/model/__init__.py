"""The network: config dataclass, Transformer, KV-cache hook."""

from .cache import KVCache
from .config import ATTENTION_KINDS, ModelConfig
from .transformer import Transformer, build_attention_mask

__all__ = ["ATTENTION_KINDS", "KVCache", "ModelConfig", "Transformer", "build_attention_mask"]
