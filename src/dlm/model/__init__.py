"""The network: config dataclass, Transformer, KV-cache hook."""

from .cache import CanvasCache, KVCache
from .config import ATTENTION_KINDS, ModelConfig
from .transformer import Transformer, build_attention_mask

__all__ = ["ATTENTION_KINDS", "CanvasCache", "KVCache", "ModelConfig", "Transformer", "build_attention_mask"]
