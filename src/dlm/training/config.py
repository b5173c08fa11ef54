"""The training run's configuration: one YAML file, `--set key=value` overrides, strict keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..configs import apply_overrides, from_dict
from ..diffusion import DiffusionConfig
from ..errors import ConfigError, InputError, check_choice, check_positive
from ..model import ModelConfig
from ..sampling import GenerationConfig
from .data import DataConfig
from .objectives import OBJECTIVES


@dataclass
class TokenizerConfig:
    path: str | None = None  # a folder with tokenizer.json; None -> train one on the training sources
    vocab_size: int = 4096
    max_train_bytes: int = 50_000_000  # cap on text read to train the BPE
    # A token of the vocabulary to use as the mask token, for a checkpoint whose vocabulary has none (e.g.
    # SmolLM2's unused "<filename>"): saved as the model's mask_token_id (and the tokenizer's mask_token).
    mask_token: str | None = None
    # A multimodal model's image tokenizer folder (`dlm data prepare multimodal` writes one): read when the run
    # starts and saved into the exported model folder (its image_tokenizer/), so pictures decode from the model.
    image_tokenizer: str | None = None

    def __post_init__(self):
        if self.mask_token is not None and (not isinstance(self.mask_token, str) or not self.mask_token):
            raise ConfigError(
                "tokenizer.mask_token", f"got {self.mask_token!r}; must be a token of the vocabulary, or null"
            )


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 = off

    def __post_init__(self):
        check_positive("optim.lr", self.lr)
        check_positive("optim.warmup_steps", self.warmup_steps, allow_zero=True)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError("optim.min_lr_ratio", f"got {self.min_lr_ratio}; must be in [0, 1]")


@dataclass
class LoopConfig:
    objective: str = "diffusion"  # registered in objectives.py: diffusion | ar (the AR twin: causal, next-token CE)
    batch_size: int = 16  # sequences per micro-batch
    grad_accum: int = 1
    max_steps: int = 1000  # optimizer steps
    dtype: str = "bf16"  # bf16 autocast | fp32
    device: str = "auto"  # auto | cpu | cuda | mps
    threads: int = 0  # torch.set_num_threads; 0 = torch's default
    eval_every: int = 200  # 0 = only at the end
    eval_batches: int = 8
    eval_samples: int = 4  # Monte-Carlo t-samples per sequence for the ELBO
    save_every: int = 500  # 0 = only at the end
    keep_checkpoints: int = 2
    log_every: int = 10
    compile: bool = False  # torch.compile the model
    seed: int = 0
    progress: bool = True
    # Start from an existing model (a dlm folder, a LLaDA/Dream/LLaMA-family folder, a GGUF file, a built-in name,
    # pkg:PACKAGE/PATH inside an installed package): its weights, its network settings (the `model` section is
    # then ignored) and, unless tokenizer.path is set, its tokenizer.
    init_from: str | None = None
    # with init_from: its network settings and tokenizer, but fresh seeded weights instead of its own (the same
    # network from random init: the baseline a pretrained body is measured against at equal compute)
    init_random: bool = False
    # Data parallel (under torchrun, WORLD_SIZE > 1): ddp | fsdp (FSDP2, fully_shard per block). batch_size is
    # the global micro-batch (split over ranks), so results do not depend on the number of ranks.
    distributed: str = "ddp"
    activation_checkpointing: bool = False  # recompute each block's activations in backward

    def __post_init__(self):
        check_choice("train.objective", self.objective, OBJECTIVES)
        check_choice("train.dtype", self.dtype, ("bf16", "fp32"))
        check_choice("train.device", self.device, ("auto", "cpu", "cuda", "mps"))
        check_choice("train.distributed", self.distributed, ("ddp", "fsdp"))
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from):
            raise ConfigError("train.init_from", f"got {self.init_from!r}; must be a model folder path")
        if self.init_random and not self.init_from:
            raise ConfigError("train.init_random", "true needs train.init_from (the model whose network to re-init)")
        for name in (
            "batch_size",
            "grad_accum",
            "max_steps",
            "eval_batches",
            "eval_samples",
            "log_every",
            "keep_checkpoints",
        ):
            check_positive(f"train.{name}", getattr(self, name))
        for name in ("eval_every", "save_every", "threads"):
            check_positive(f"train.{name}", getattr(self, name), allow_zero=True)


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraSection:
    """LoRA through PEFT: r = 0 trains every weight; r > 0 trains low-rank adapters on `target_modules` only.
    quantize: none | nf4 (QLoRA: base linears in 4-bit NF4 via bitsandbytes; needs a CUDA GPU)."""

    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    quantize: str = "none"

    def __post_init__(self):
        check_positive("lora.r", self.r, allow_zero=True)
        check_positive("lora.alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("lora.dropout", f"got {self.dropout}; must be in [0, 1)")
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        if not self.target_modules or not all(m in LORA_TARGETS for m in self.target_modules):
            raise ConfigError(
                "lora.target_modules", f"got {self.target_modules!r}; allowed: a non-empty list of {LORA_TARGETS}"
            )
        check_choice("lora.quantize", self.quantize, ("none", "nf4"))

    @property
    def enabled(self) -> bool:
        return self.r > 0


@dataclass
class DistillSection:
    """Options of the `certainty` (dParallel's certainty-forcing distillation) and `draft_verify` objectives
    (docs/training.md)."""

    certainty_weight: float = 1.0  # weight of the entropy term on masked positions the student already gets right
    complementary: bool = True  # each example also trained with the complementary mask (every answer token once)
    # which answer tokens a level masks: "random" (each independently) or "left_to_right" (d3LLM's trajectory-ordered
    # masking for a left-to-right teacher: a suffix of each block, or of the answer for a full-attention student)
    mask_order: str = "random"
    # d3LLM's noise curriculum: over the first `curriculum_steps` optimizer steps the drawn levels t are scaled by
    # a cap rising linearly from `curriculum_start` to 1 (few masks first, then every level); 0 = off
    curriculum_steps: int = 0
    curriculum_start: float = 0.3
    # the draft_verify objective (dlm.training.draft_verify): weight of the drafter's cross-entropy beside the AR one
    draft_weight: float = 1.0

    def __post_init__(self):
        check_positive("distill.certainty_weight", self.certainty_weight, allow_zero=True)
        check_positive("distill.draft_weight", self.draft_weight, allow_zero=True)
        check_choice("distill.mask_order", self.mask_order, ("random", "left_to_right"))
        if not isinstance(self.curriculum_steps, int) or self.curriculum_steps < 0:
            raise ConfigError("distill.curriculum_steps", f"got {self.curriculum_steps!r}; must be an integer >= 0")
        if not 0 < self.curriculum_start <= 1:
            raise ConfigError("distill.curriculum_start", f"got {self.curriculum_start!r}; must be in (0, 1]")


@dataclass
class RunConfig:
    out_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)  # saved with the final model
    lora: LoraSection = field(default_factory=LoraSection)
    distill: DistillSection = field(default_factory=DistillSection)


def load_run_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError("config", f"{p}: no such file")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError("config", f"{p}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise InputError("config", f"{p}: must be a mapping of sections")
    data = apply_overrides(data, list(overrides), RunConfig)
    try:
        return from_dict(RunConfig, data)
    except TypeError as e:  # pragma: no cover - from_dict checks keys first
        raise ConfigError("config", str(e)) from None
