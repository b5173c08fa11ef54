"""dlm's own folder format (model_type "dlm"): config.json holds the ModelConfig fields; tensor names are dlm's."""

from __future__ import annotations

from pathlib import Path

from ...configs import from_dict, to_dict
from ...errors import CheckpointError, ConfigError
from ...model import ModelConfig
from .base import Family

MODEL_TYPE = "dlm"
# Keys of a dlm config.json that are not ModelConfig fields.
META_KEYS = {
    "model_type", "architectures", "torch_dtype", "diffusion", "dlm_version", "transformers_version", "quantization",
}  # fmt: skip


class DLMFamily(Family):
    name = "dlm"
    model_types = (MODEL_TYPE,)

    def detect(self, raw: dict) -> bool:
        return raw.get("model_type", MODEL_TYPE) == MODEL_TYPE  # a config without model_type is a dlm folder

    def checkpoint_key(self, key: str) -> str:
        return key

    def model_config(self, raw: dict, where: Path) -> ModelConfig:
        fields = {k: v for k, v in raw.items() if k not in META_KEYS}
        try:
            return from_dict(ModelConfig, fields, prefix="config.")
        except ConfigError as e:
            raise CheckpointError(f"{where}: {e}") from None

    def export_config(self, config: ModelConfig) -> dict:
        return {"model_type": MODEL_TYPE, "architectures": ["DLMTransformer"], **to_dict(config)}
