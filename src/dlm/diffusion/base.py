"""The noise-process interface: one object owns both directions (as a diffusers scheduler owns `add_noise`
and `step`).

Training side: `sample_t`, `add_noise`, `loss` (pre-training ELBO), `sft_loss` (prompt kept clean) and
`elbo_nll` (the likelihood bound). Sampling side: `reverse(generation_config)` builds the per-generation
`ReverseProcess`, which owns the canvas a generation starts from, which positions are still noisy, what
classifier-free guidance's unconditional input is, and the reverse transition itself (propose tokens from
logits, decide what changes this step, with the process's own commit schedule). The sampler loop
(`dlm.sampling`) owns only what every process shares: rows, blocks and step pacing, per-row generators,
caches, CFG arithmetic, EOS, streaming and batching; it never looks at a token id to decide anything.

A new process is one file that subclasses `NoiseProcess` and `ReverseProcess` and registers itself with
`@register_process`; `build_process` is the one factory (nothing else constructs a process).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from ..errors import ConfigError, check_choice
from .schedules import get_schedule

PROCESSES: dict[str, type["NoiseProcess"]] = {}


def register_process(cls):
    PROCESSES[cls.name] = cls
    return cls


@dataclass
class DiffusionConfig:
    process: str = "masked"  # a registered noise process: masked | uniform | block
    schedule: str = "linear"  # linear | cosine | loglinear
    eps: float = 1e-3  # t is drawn from [eps, 1]
    antithetic: bool = True  # low-discrepancy t over the batch
    random_length_prob: float = 0.0  # LLaDA truncates 1% of batches to a random length
    # training draws t from [lo, hi] instead of [eps, 1] (BD3-LM's clipped schedule); the held-out bound always
    # integrates over [eps, 1]
    train_t: list[float] | None = None
    block_size: int | None = None  # block process: tokens per block (None: the model's block_size)
    shift_logits: bool | None = None  # None: the model's own; true: logits at i-1 predict token i (Dream)
    # DiffuLLaMA's attention-mask annealing (AR adaptation): over the first N training steps the attention among
    # noisy positions opens from causal to the process's own (each forward-looking pair opens with probability
    # step / N); 0 = off. Held-out evaluation always uses the final attention.
    anneal_steps: int = 0
    # MGDM's token-level reweighting [alpha, gamma] (Ye et al. 2410.14157; their Sudoku recipe: [0.25, 1]): each
    # masked token's CE becomes alpha * (1 - exp(-CE))^gamma * CE in the training losses, so hard tokens weigh
    # more. Training only: the held-out bound stays the ELBO. null = off.
    token_reweighting: list[float] | None = None
    # SFT only (the masked process): the share of training rows whose noise is a suffix of the answer: a cut drawn
    # uniformly among the answer's positions, everything from it on masked, everything before it clean. Such a
    # row asks for a token with nothing after it visible, as left-to-right and semi-autoregressive decoding do,
    # which random masking rarely asks when later tokens repeat earlier ones (a Countdown step's result is the
    # next step's operand: a model can learn to copy it back instead of computing it). 0 = off. Training only.
    suffix_mask_prob: float = 0.0
    # the continuous process (Gaussian noise on token embeddings): [sigma_min, sigma_max] of its noise scale; the
    # share of training rows that get a self-conditioning first pass (0 = off); the bins of CDCD's time warping
    # of training noise levels (0 = off: t uniform); Diffusion-LM's clamping trick at sampling (x0 estimate = the
    # embedding of the argmax token instead of the expected embedding)
    sigma_range: list[float] = field(default_factory=lambda: [0.1, 100.0])
    self_condition: float = 0.0
    time_warp: int = 0
    clamp: bool = False
    # the spindle process (DiffusionBERT): how far rare tokens' masking runs ahead of frequent ones', in [0, 1/pi]
    spindle_lambda: float = 0.3

    def __post_init__(self) -> None:
        _load_builtin_processes()
        check_choice("diffusion.process", self.process, PROCESSES)
        get_schedule(self.schedule)
        if not 0.0 < self.eps < 1.0:
            raise ConfigError("diffusion.eps", f"got {self.eps}; must be in (0, 1)")
        if self.train_t is not None:
            ok = isinstance(self.train_t, (list, tuple)) and len(self.train_t) == 2
            lo, hi = (float(v) for v in self.train_t) if ok else (0.0, 0.0)
            if not (ok and self.eps <= lo < hi <= 1.0):
                raise ConfigError(
                    "diffusion.train_t", f"got {self.train_t!r}; must be [lo, hi] with eps={self.eps} <= lo < hi <= 1"
                )
            self.train_t = [lo, hi]
        if not isinstance(self.anneal_steps, int) or self.anneal_steps < 0:
            raise ConfigError("diffusion.anneal_steps", f"got {self.anneal_steps!r}; must be an integer >= 0")
        if self.block_size is not None and (not isinstance(self.block_size, int) or self.block_size < 1):
            raise ConfigError("diffusion.block_size", f"got {self.block_size!r}; must be a positive integer or null")
        if self.token_reweighting is not None:
            ok = isinstance(self.token_reweighting, (list, tuple)) and len(self.token_reweighting) == 2
            a, g = (float(v) for v in self.token_reweighting) if ok else (0.0, -1.0)
            if not (ok and a > 0 and g >= 0):
                raise ConfigError(
                    "diffusion.token_reweighting",
                    f"got {self.token_reweighting!r}; must be [alpha, gamma] with alpha > 0 and gamma >= 0, or null",
                )
            self.token_reweighting = [a, g]
        if not 0.0 <= self.suffix_mask_prob < 1.0:
            raise ConfigError("diffusion.suffix_mask_prob", f"got {self.suffix_mask_prob}; must be in [0, 1)")
        if self.suffix_mask_prob and self.process != "masked":
            raise ConfigError("diffusion.suffix_mask_prob", f"the masked process only; process is {self.process!r}")
        ok = isinstance(self.sigma_range, (list, tuple)) and len(self.sigma_range) == 2
        lo, hi = (float(v) for v in self.sigma_range) if ok else (0.0, 0.0)
        if not (ok and 0 < lo < hi):
            raise ConfigError("diffusion.sigma_range", f"got {self.sigma_range!r}; must be [lo, hi] with 0 < lo < hi")
        self.sigma_range = [lo, hi]
        if not 0.0 <= self.self_condition <= 1.0:
            raise ConfigError("diffusion.self_condition", f"got {self.self_condition}; must be in [0, 1]")
        if not isinstance(self.time_warp, int) or self.time_warp < 0 or self.time_warp == 1:
            raise ConfigError("diffusion.time_warp", f"got {self.time_warp!r}; must be 0 (off) or bins >= 2")
        if not 0.0 <= self.random_length_prob <= 1.0:
            raise ConfigError("diffusion.random_length_prob", f"got {self.random_length_prob}; must be in [0, 1]")


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar to backpropagate
    num_tokens: int  # tokens the loss was normalised by
    num_masked: int  # positions that were noised


@dataclass
class StepContext:
    """What the loop hands the reverse transition at one step: the query slots of each row (its still-noisy
    positions in the active region, right-aligned in slot order so a row's work never depends on the batch)."""

    logits: torch.Tensor  # (R, A, V) float32 logits at the query slots (CFG and logits processors applied)
    tokens: torch.Tensor  # (R, A) the canvas's tokens at the query slots
    candidates: torch.Tensor  # (R, A) bool: real query slots (the rest is right-alignment filler)
    positions: torch.Tensor  # (R, A) long: canvas slots of the query positions
    rows: torch.Tensor  # (R,) long: row handles (per-row state of policies)
    step: torch.Tensor  # (R,) long: step index inside each row's current block
    steps: int  # steps per block
    noisy_at_block_start: torch.Tensor  # (R,) long: noisy positions in the region when the block started
    generators: Sequence[torch.Generator]  # each row's own generator
    uniform: Callable[..., torch.Tensor]  # uniform(*extra) -> (R, A, *extra) from each row's generator
    # (R, A) bool: query slots already settled that the step may revise (send back to noise); only for a
    # reverse process with `revises` set, else None (and the query slots are the still-noisy ones only)
    settled: torch.Tensor | None = None

    @property
    def last_step(self) -> torch.Tensor:
        return self.step >= self.steps - 1


@dataclass
class StepResult:
    tokens: torch.Tensor  # (R, A) tokens at the query slots after this step
    noisy: torch.Tensor  # (R, A) bool: query slots still noisy after this step
    changed: torch.Tensor  # (R, A) bool: slots whose token was decided or revised this step (streaming)


class ReverseProcess:
    """One generation's reverse transition (built by `NoiseProcess.reverse`). Row-state hooks `reset` /
    `extend` follow the loop's rows (continuous batching). `revises`: the step also gets the active block's
    settled positions (`StepContext.settled`, never a template's locked ones) and may send them back to noise."""

    revises = False
    feeds_inputs = False  # True: `forward_inputs` gives the network its input (the sampler then runs cache 'none')

    def __init__(self, process: "NoiseProcess", config):
        self.process, self.config = process, config

    def init_canvas(self, length: int, generator: torch.Generator) -> list[int]:
        """Tokens of a fresh generated region of `length` positions (drawn from the row's generator)."""
        raise NotImplementedError

    def noisy_in_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(R, L) bool: positions of user text (prompt/suffix) that are noise to be filled in place."""
        return torch.zeros_like(tokens, dtype=torch.bool)

    def forward_inputs(self, model, tokens, noisy, region, rows, step, steps, generators) -> dict:
        """Keyword inputs of this step's forward over the canvas `tokens` (R, L) (`noisy`, `region`: (R, L) bool,
        still-noisy slots and the active block; `rows` the handles, `step` (R,) the step in the block): {} = the
        token ids alone; with `inputs_embeds` the ids are not passed."""
        return {}

    def unconditional(self, tokens: torch.Tensor, hide: torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance's unconditional input: the canvas with the `hide` positions (the prompt) at
        full noise."""
        raise ConfigError("cfg_scale", f"the {self.process.name} process has no unconditional input; use cfg_scale=0")

    def reset(self, batch: int, length: int, device) -> None:
        """Start of a generation over `batch` row handles of `length` canvas slots."""

    def extend(self, batch: int, length: int, shift: int) -> None:
        """Rows joined: state must cover `batch` handles and `length` slots, old slots moved right by `shift`."""

    def step(self, ctx: StepContext) -> StepResult:
        raise NotImplementedError


class NoiseProcess:
    """Forward corruption, losses and likelihood bound of one process; `reverse()` gives its sampler side."""

    name = "base"

    def __init__(self, config: DiffusionConfig, *, vocab_size: int, mask_token_id: int | None, shift_logits=False):
        self.config = config
        self.schedule = get_schedule(config.schedule, config.eps)
        self.vocab_size = int(vocab_size)
        self.mask_token_id = None if mask_token_id is None else int(mask_token_id)
        self.shift_logits = bool(shift_logits)
        self.fused = True  # fused chunked head + cross-entropy for dlm Transformers (False: plain logits)
        self.step = None  # the training step (`at_step`), for processes whose training changes with it

    def at_step(self, step: int) -> None:
        """The trainer's optimizer step about to run (annealing schedules read it)."""
        self.step = int(step)

    def state_dict(self) -> dict:
        """What a process learns while training (JSON-able; kept in checkpoints): {} for most."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` (a resumed run)."""

    def fit(self, dataset) -> None:
        """Corpus statistics read once from the training split before training (the spindle process's token
        frequencies; kept in `state_dict`); nothing for most. `dataset.tokens`: the split's token array."""

    def anneal_open(self, length: int, device) -> torch.Tensor | None:
        """DiffuLLaMA's annealing: (L, L) bool, True where a query may look at a later noisy slot at this training
        step (each pair with probability step / anneal_steps, drawn from a generator seeded by the step, so a
        resumed run draws the same); None once annealing is over, outside training or when it is off."""
        n = self.config.anneal_steps
        if not n or self.step is None or self.step >= n or not torch.is_grad_enabled():
            return None
        g = torch.Generator().manual_seed(self.step)
        later = torch.ones(length, length, dtype=torch.bool).triu(1)
        return (~later | (torch.rand(length, length, generator=g) < self.step / n)).to(device)

    @classmethod
    def resolve(cls, config: DiffusionConfig, model_config):
        """(config, model_config) as this process trains and samples them: what the config leaves to the model is
        filled in, and the network config fitted (its attention, for processes that need one). Default: only
        `diffusion.shift_logits`, when set, becomes the model's."""
        if config.shift_logits is not None and model_config is not None:
            if bool(getattr(model_config, "shift_logits", False)) != config.shift_logits:
                model_config = replace(model_config, shift_logits=config.shift_logits)
        return config, model_config

    def reverse(self, config) -> ReverseProcess:
        raise NotImplementedError

    @property
    def train_t_range(self) -> tuple[float, float]:
        """[lo, hi]: where training draws t (`diffusion.train_t`, default [eps, 1])."""
        lo_hi = self.config.train_t
        return (float(lo_hi[0]), float(lo_hi[1])) if lo_hi else (self.config.eps, 1.0)

    def sample_t(self, batch: int, generator=None, device="cpu", shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
        """Training noise levels in `train_t_range` ([eps, 1] by default); antithetic: u_i = (u + i/B) mod 1.

        shard=(rank, world): this call holds rows rank::world of a global batch of batch*world rows (data
        parallel); t is drawn for the global batch and sliced, so every row gets the t it gets in one process."""
        return self.sample_t_grid(batch, 1, generator, device, shard)[:, 0]

    def sample_t_grid(self, batch: int, per_row: int, generator=None, device="cpu", shard=(0, 1)) -> torch.Tensor:
        """(batch, per_row) training noise levels, row-major over the global batch (see `sample_t`): with
        antithetic sampling u_i = (u + i/n) mod 1 over all n = global rows * per_row levels, so each level is
        uniform on its own and together they cover [lo, hi] evenly."""
        lo, hi = self.train_t_range
        rank, world = shard
        n = batch * world * per_row
        if self.config.antithetic:
            u0 = rand((1,), generator, device)
            u = (u0 + torch.arange(n, device=device) / n) % 1.0
        else:
            u = rand((n,), generator, device)
        return (lo + (hi - lo) * u).view(batch * world, per_row)[rank::world]

    def add_noise(self, x0, t, generator=None, maskable=None, shard=(0, 1)):
        raise NotImplementedError

    @staticmethod
    def answer_positions(input_ids, prompt_lengths, attention_mask=None, answer_mask=None) -> torch.Tensor:
        """(B, L) bool: the SFT positions that are noised and scored — `answer_mask` (packed rows) or everything
        from each row's prompt length on — limited to real tokens."""
        if answer_mask is not None:
            answer = answer_mask.to(device=input_ids.device, dtype=torch.bool)
        else:
            answer = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] >= prompt_lengths[:, None]
        if attention_mask is not None and attention_mask.dim() == 2:
            answer &= attention_mask.bool()
        return answer

    def loss(self, model, input_ids, attention_mask=None, generator=None, shard=(0, 1)) -> LossOutput:
        raise NotImplementedError

    def sft_loss(self, model, input_ids, prompt_lengths, attention_mask=None, generator=None, shard=(0, 1),
                 answer_mask=None) -> LossOutput:  # fmt: skip
        raise NotImplementedError

    def elbo_nll(self, model, input_ids, num_samples=8, attention_mask=None, generator=None, maskable=None):
        raise NotImplementedError

    @torch.no_grad()
    def log_likelihood(self, model, prompt_ids, answer_ids, mc_samples: int = 64, batch_size: int = 16,
                       generator=None) -> float:  # fmt: skip
        """A lower bound on log p(answer | prompt): minus the ELBO bound over the answer positions, with
        `mc_samples` stratified noise levels."""
        device = next(model.parameters()).device if hasattr(model, "parameters") else "cpu"
        prompt = torch.as_tensor(list(prompt_ids), dtype=torch.long)
        seq = torch.cat([prompt, torch.as_tensor(list(answer_ids), dtype=torch.long)])[None].to(device)
        answer = torch.arange(seq.shape[1], device=device)[None] >= prompt.numel()
        return -float(self.elbo_nll(model, seq, mc_samples, generator=generator, maskable=answer)[0])


def rand(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Uniforms drawn on the generator's device, moved to `device`."""
    dev = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=dev).to(device)


def _load_builtin_processes() -> None:
    from . import block, continuous, masked, spindle, uniform  # noqa: F401  (registration)


def build_process(config: DiffusionConfig | None, model_config, *, mask_token_id: int | None = None) -> NoiseProcess:
    """The one factory: the process named by `config.process` (default: masked), for a model whose config gives
    the vocabulary size, mask token id (or pass `mask_token_id`) and `shift_logits`."""
    config = config or DiffusionConfig()
    _load_builtin_processes()
    check_choice("diffusion.process", config.process, PROCESSES)
    config, model_config = PROCESSES[config.process].resolve(config, model_config)
    if mask_token_id is None:
        mask_token_id = getattr(model_config, "mask_token_id", None)
    return PROCESSES[config.process](
        config,
        vocab_size=getattr(model_config, "vocab_size", 0),
        mask_token_id=mask_token_id,
        shift_logits=getattr(model_config, "shift_logits", False),
    )
