"""Training: data pipeline, run config, Trainer with exact resume."""

from .config import LoopConfig, OptimConfig, RunConfig, TokenizerConfig, load_run_config
from .data import BatchIterator, DataConfig, build_dataset
from .trainer import Trainer

__all__ = [
    "BatchIterator",
    "DataConfig",
    "LoopConfig",
    "OptimConfig",
    "RunConfig",
    "TokenizerConfig",
    "Trainer",
    "build_dataset",
    "load_run_config",
]
