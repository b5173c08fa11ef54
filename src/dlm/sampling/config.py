"""GenerationConfig: every knob of the reverse (denoising) loop, saved as generation_config.json."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, check_choice, check_positive

DTYPES = ("float32", "bfloat16")


@dataclass
class GenerationConfig:
    gen_length: int = 128  # tokens to generate (masks appended after the prompt)
    steps: int = 128  # denoising steps over the whole answer; split evenly over blocks
    block_length: int | None = None  # semi-autoregressive block size; None -> gen_length (one block)
    temperature: float = 0.0  # 0 = greedy; else Gumbel-max sampling at this temperature
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    policy: str = "low_confidence"  # unmask policy name (see dlm.sampling.POLICIES)
    schedule: str = "even"  # commit schedule: even (LLaDA) | dream (Dream's time grid) | cosine (MaskGIT, pictures)
    schedule_eps: float = 1e-3  # dream schedule: the time grid is linspace(1, schedule_eps, steps + 1)
    proposal: str = "gumbel"  # temperature > 0: gumbel (LLaDA) | categorical (Dream: tempered, filtered, sampled)
    cfg_scale: float = 0.0  # classifier-free guidance weight w: u + (w+1)(c - u); 0 = off
    seed: int | None = None  # every row gets its own generator seeded with this (batch-invariant)
    stop_at_eos: bool = True  # a row ends once an EOS is committed and everything before it is final
    trim_at_eos: bool = True  # output text stops at the first EOS
    no_repeat_ngram_size: int = 0  # never repeat an n-gram of this size within a row (Hugging Face's; 0 = off)
    # parallel decoding (policies threshold, factor, entropy_bound, credit): `steps` is then an upper bound
    threshold: float = 0.9  # threshold/credit: commit every candidate whose confidence >= this (at least one)
    factor: float = 1.0  # factor: commit ranks r = 1, 2, ... while confidence_r >= 1 - factor / (r + 1)
    entropy_bound: float = 0.5  # entropy_bound: commit lowest-entropy first while the summed entropy <= this (nats)
    credit_alpha: float = 0.7  # credit: weight of the accumulated credit in the fused confidence
    credit_gamma: float = 0.2  # credit: each step adds p ** gamma to a position's credit
    credit_decay: float = 0.8  # credit: credit of a position decays by this factor per step
    # revision (ReMDM-style remasking, arXiv 2503.00307; masked process): at every step but a block's last, up to
    # `remask` committed tokens of the active block whose probability under this step's forward is below
    # `remask_below` go back to mask (lowest first), and the step commits that many more, so the schedule holds
    remask: int = 0
    remask_below: float = 0.5
    # none (reference) | prefix | dual (approximate for bidirectional models, exact for block_causal ones) |
    # block (block_causal models: exact, append-only, never refreshed)
    cache: str = "none"
    cache_refresh: int = 0  # also recompute the cache every this many steps inside a block; 0 = at block starts
    # self-speculative decoding of a causal model trained to draft (train.objective draft_verify): each forward
    # verifies the last drafts with the AR head and drafts the next draft_block - 1 tokens (dlm.sampling.speculative;
    # greedy, the output is the AR head's token for token); 0 = off (one token per forward)
    draft_block: int = 0
    dtype: str = "float32"  # float32 | bfloat16 (autocast for the forward passes)
    compile: bool = False  # torch.compile the model's forward (dynamic shapes)

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
        from ..diffusion.masked import COMMIT_SCHEDULES, PROPOSALS
        from ..diffusion.policies import POLICIES

        check_positive("gen_length", self.gen_length)
        check_positive("steps", self.steps)
        if self.block_length is not None:
            check_positive("block_length", self.block_length)
        if self.gen_length % self.block_size:
            raise ConfigError(
                "block_length", f"gen_length={self.gen_length} is not divisible into blocks of {self.block_size}"
            )
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
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError("threshold", f"got {self.threshold}; must be in (0, 1]")
        if self.factor <= 0:
            raise ConfigError("factor", f"got {self.factor}; must be > 0")
        if self.entropy_bound <= 0:
            raise ConfigError("entropy_bound", f"got {self.entropy_bound}; must be > 0")
        if self.credit_alpha < 0:
            raise ConfigError("credit_alpha", f"got {self.credit_alpha}; must be >= 0")
        if self.credit_gamma <= 0:
            raise ConfigError("credit_gamma", f"got {self.credit_gamma}; must be > 0")
        if not 0.0 <= self.credit_decay <= 1.0:
            raise ConfigError("credit_decay", f"got {self.credit_decay}; must be in [0, 1]")
        check_positive("remask", self.remask, allow_zero=True)
        if not 0.0 < self.remask_below <= 1.0:
            raise ConfigError("remask_below", f"got {self.remask_below}; must be in (0, 1]")
        check_choice("schedule", self.schedule, COMMIT_SCHEDULES)
        check_choice("proposal", self.proposal, PROPOSALS)
        if not 0.0 <= self.schedule_eps < 1.0:
            raise ConfigError("schedule_eps", f"got {self.schedule_eps}; must be in [0, 1)")
        from .caches import CACHES

        check_choice("cache", self.cache, CACHES)
        check_positive("cache_refresh", self.cache_refresh, allow_zero=True)
        check_positive("no_repeat_ngram_size", self.no_repeat_ngram_size, allow_zero=True)
        check_choice("dtype", self.dtype, DTYPES)
        if not isinstance(self.draft_block, int) or self.draft_block == 1 or self.draft_block < 0:
            raise ConfigError("draft_block", f"got {self.draft_block!r}; must be 0 (off) or an integer >= 2")
