"""Training: data pipeline, run config, Trainer with exact resume."""

from .config import LoopConfig, OptimConfig, RunConfig, TokenizerConfig, load_run_config
from .data import BatchIterator, DataConfig, build_dataset
from .objectives import OBJECTIVES, Objective, build_objective, register_objective
from .trainer import Trainer

__all__ = [
    "OBJECTIVES",
    "BatchIterator",
    "DataConfig",
    "LoopConfig",
    "Objective",
    "OptimConfig",
    "RunConfig",
    "TokenizerConfig",
    "Trainer",
    "build_dataset",
    "build_objective",
    "load_run_config",
    "register_objective",
]
