"""GenerationConfig: every knob of the reverse (denoising) loop, saved as generation_config.json."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, check_positive


@dataclass
class GenerationConfig:
    gen_length: int = 128  # tokens to generate (masks appended after the prompt)
    steps: int = 128  # denoising steps over the whole answer; split evenly over blocks
    block_length: int | None = None  # semi-autoregressive block size; None -> gen_length (one block)
    temperature: float = 0.0  # 0 = greedy; else Gumbel-max sampling at this temperature
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    policy: str = "low_confidence"  # unmask policy name (see dlm.sampling.POLICIES)
    cfg_scale: float = 0.0  # classifier-free guidance weight w: u + (w+1)(c - u); 0 = off
    seed: int | None = None  # every row gets its own generator seeded with this (batch-invariant)
    stop_at_eos: bool = True  # a row ends once an EOS is committed and everything before it is final
    trim_at_eos: bool = True  # output text stops at the first EOS

    def __post_init__(self) -> None:
        self.validate()

    @property
    def block_size(self) -> int:
        return self.block_length or self.gen_length

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_size

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    def validate(self) -> None:
        from .policies import POLICIES

        check_positive("gen_length", self.gen_length)
        check_positive("steps", self.steps)
        if self.block_length is not None:
            check_positive("block_length", self.block_length)
        if self.gen_length % self.block_size:
            raise ConfigError(
                "block_length", f"gen_length={self.gen_length} is not divisible into blocks of {self.block_size}"
            )
        if self.steps > self.gen_length:
            raise ConfigError("steps", f"got {self.steps}; must be <= gen_length={self.gen_length}")
        if self.steps % self.num_blocks:
            raise ConfigError(
                "steps", f"got {self.steps}; must be a multiple of the number of blocks ({self.num_blocks})"
            )
        if self.temperature < 0:
            raise ConfigError("temperature", f"got {self.temperature}; must be >= 0")
        if self.top_k < 0:
            raise ConfigError("top_k", f"got {self.top_k}; must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError("top_p", f"got {self.top_p}; must be in (0, 1]")
        if self.cfg_scale < 0:
            raise ConfigError("cfg_scale", f"got {self.cfg_scale}; must be >= 0")
        if self.policy not in POLICIES:
            raise ConfigError("policy", f"unknown policy {self.policy!r}; allowed: {', '.join(sorted(POLICIES))}")
