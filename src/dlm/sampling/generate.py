"""The reverse (denoising) loop, shared by every noise process: semi-autoregressive blocks, step pacing, rows.

Works with any model callable as `model(input_ids, attention_mask=..., logits_index=...) -> logits`
whose `config` carries eos id and the `shift_logits` family property (prefix/dual caches need the
canvas-cache hook of `dlm.model.Transformer`). The noise process (`dlm.diffusion`, through its
`ReverseProcess`) owns what a canvas starts as, which positions are still noisy, CFG's unconditional input
and the transition itself; the loop never compares a token with a mask id. Rows of a batch are independent:
each has its own random generator, block, step counter, cache refreshes and stopping, so a batch gives exactly
the tokens each prompt gives alone, and a row that needs fewer steps moves on to its next block without
waiting. Finished rows leave the batch (every per-row tensor and the cache are compacted).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..diffusion import NoiseProcess, StepContext, build_process
from ..errors import ConfigError, InputError
from .config import GenerationConfig
from .constraints import Constraint, RowGuides, check_guides
from .forward import ModelRunner
from .processors import config_processors
from .rows import Rows, finish_at_eos, template_locks
from .streamer import CallbackStreamer, StepEvent, Streamer, emit_step


@dataclass
class GenerationOutput:
    sequences: list[list[int]]  # generated tokens per row (trimmed at EOS when configured)
    canvases: list[list[int]]  # whole canvas per row: prompt + generated + suffix, masks in text filled
    nfe: list[int]  # network evaluations each row took part in (CFG counts 2)
    steps: list[int]  # denoising steps each row took
    seconds: float = 0.0
    finished_early: list[bool] = field(default_factory=list)


def _row_generators(n: int, seed: int | Sequence[int] | None, device) -> list[torch.Generator]:
    if seed is None:
        seeds = torch.randint(0, 2**62, (n,)).tolist()
    elif isinstance(seed, int):
        seeds = [seed] * n
    else:
        seeds = list(seed)
        if len(seeds) != n:
            raise InputError("seed", f"got {len(seeds)} seeds for {n} prompts")
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def _per_row_uniform(gens, valid: torch.Tensor, extra: tuple[int, ...], device) -> torch.Tensor:
    """Uniforms (R, A, *extra): row i draws (from gens[i]) only for its valid positions, in slot order, so what
    it draws never depends on the rest of the batch. (One generator call per row: the price of per-row
    streams; only sampling with temperature > 0 and random-order policies draw.)"""
    R, A = valid.shape
    out = torch.full((R, A, *extra), 0.5, device=device)
    counts = valid.sum(1).tolist()
    for i, g in enumerate(gens):
        if counts[i]:
            out[i, valid[i]] = torch.rand((counts[i], *extra), generator=g, device=g.device).to(device)
    return out


def _model_attr(model, name, default=None):
    cfg = getattr(model, "config", None)
    return getattr(cfg, name, default) if cfg is not None else default


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig | None = None,
    *,
    suffixes: Sequence[Sequence[int]] | None = None,
    templates: Sequence[Sequence[int]] | None = None,
    constraints: Sequence[Constraint | None] | None = None,
    mask_token_id: int | None = None,
    eos_token_id: int | None = None,
    streamer: Streamer | Callable[[StepEvent], None] | None = None,
    logits_processors: Sequence[Callable] = (),
    max_length: int | None = None,
    process: NoiseProcess | None = None,
    steer: tuple[int, Sequence[Sequence[int]]] | None = None,
    cfg_hide: Sequence[Sequence[int] | None] | None = None,
) -> GenerationOutput:
    """Generate `gen_length` tokens after each prompt (and before its optional suffix: infilling) by running
    `process`'s reverse transition (default: masked diffusion with the model's mask token).

    Noise tokens already inside a prompt or suffix (masks) are filled in place, together with the first block.
    `templates` (one per prompt, at most gen_length ids) lock the start of each generated region: every id but
    the mask token is kept as given (never noised or changed); mask ids are generated (as is the region past
    the template). `constraints` (one per prompt, a compiled `Constraint` or None): the generated region must
    match it (regex, JSON Schema, grammar; see `dlm.sampling.constraints` for the rule that keeps this sound
    in any decoding order). `steer` = (step, new prompts): before that denoising step every row still running
    switches to its new prompt (`Denoiser.steer`: what it has settled stays). `cfg_hide`: see `Denoiser.add`.
    Prompts of different lengths are left-padded and carry an attention mask.
    """
    d = Denoiser(model, config, mask_token_id=mask_token_id, eos_token_id=eos_token_id, streamer=streamer,
                 logits_processors=logits_processors, max_length=max_length, process=process)  # fmt: skip
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    t0 = time.perf_counter()
    handles = d.add(prompts, suffixes, templates=templates, constraints=constraints, cfg_hide=cfg_hide)
    if steer is not None and len(steer[1]) != len(handles):
        raise InputError("steer", f"got {len(steer[1])} new prompts for {len(handles)} prompts")
    step = 0
    while d.live:
        if steer is not None and step == steer[0]:
            live = set(d.rows.handle.tolist())
            handles = [d.steer(h, p) if h in live else h for h, p in zip(handles, steer[1])]
        d.step()
        step += 1
    if d.streamer is not None:
        d.streamer.on_end()
    res = [d.pop_result(h) for h in handles]
    return GenerationOutput(
        [r["sequence"] for r in res],
        [r["canvas"] for r in res],
        [r["nfe"] for r in res],
        [r["steps"] for r in res],
        time.perf_counter() - t0,
        [r["finished_early"] for r in res],
    )


class Denoiser:
    """The reverse loop one step at a time, for a batch whose rows come and go: `add()` joins rows (between
    steps), `step()` advances every live row by one denoising step, `cancel()` drops rows, and finished rows'
    results wait in `pop_result()`. Every row is independent (its own generator, block, step counter, cache
    refreshes and stopping), so a row gives the same tokens whichever rows share its steps: `generate()` is
    `add(all prompts)` then `step()` until none is live. All rows share the GenerationConfig (except the seed).
    """

    def __init__(
        self,
        model,
        config: GenerationConfig | None = None,
        *,
        mask_token_id: int | None = None,
        eos_token_id: int | None = None,
        streamer: Streamer | Callable[[StepEvent], None] | None = None,
        logits_processors: Sequence[Callable] = (),
        max_length: int | None = None,
        process: NoiseProcess | None = None,
    ):
        config = config or GenerationConfig()
        config.validate()
        self.model, self.config = model, config
        if process is None:
            process = build_process(None, getattr(model, "config", None), mask_token_id=mask_token_id)
        self.process = process
        self.reverse = process.reverse(config)
        if self.reverse.feeds_inputs and config.cache != "none":
            raise ConfigError("cache", f"the {process.name} process feeds the network its latents, which change every "
                              f"step: use cache 'none'; got {config.cache!r}")  # fmt: skip
        self.eos_id = eos_token_id if eos_token_id is not None else _model_attr(model, "eos_token_id")
        self.free_id = mask_token_id if mask_token_id is not None else _model_attr(model, "mask_token_id")
        self.shift = bool(_model_attr(model, "shift_logits", False))
        self.max_length = max_length or _model_attr(model, "max_seq_len")
        if streamer is not None and not isinstance(streamer, Streamer):
            streamer = CallbackStreamer(streamer)
        self.streamer = streamer
        self.logits_processors = [*logits_processors, *config_processors(config, self.eos_id)]
        self.device = next(model.parameters()).device if hasattr(model, "parameters") else torch.device("cpu")
        self.pad_id = _model_attr(model, "pad_token_id") or 0
        self.gen_length, self.block_length = config.gen_length, config.block_size
        self.num_blocks, self.steps_per_block = config.num_blocks, config.steps_per_block
        # a block-causal network has blocks of its own, at fixed positions: the loop's blocks sit at the same
        # boundaries (a row's first block ends at the next multiple of block_length), so each denoising block sees
        # only clean earlier blocks, as block diffusion trains it, and the block cache is exact
        self.align = self.block_length if _model_attr(model, "attention") == "block_causal" else 0
        self.forwards_per_step = 2 if config.cfg_scale > 0 else 1
        self.stop_at_eos = self.eos_id is not None and config.stop_at_eos
        self.length = 0  # canvas slots (every row left-padded to it)
        self.runner: ModelRunner | None = None
        self.gens: dict[int, torch.Generator] = {}
        self.results: dict[int, dict] = {}
        self.guides = RowGuides()  # rows under a structured-output constraint
        self.next_handle = 0
        self.step_counter = 0
        self.rows = Rows.empty(self.device)

    @property
    def live(self) -> int:
        return self.rows.count

    def add(
        self,
        prompts: Sequence[Sequence[int]],
        suffixes: Sequence[Sequence[int]] | None = None,
        seeds=None,
        templates: Sequence[Sequence[int]] | None = None,
        constraints: Sequence[Constraint | None] | None = None,
        cfg_hide: Sequence[Sequence[int] | None] | None = None,
    ) -> list[int]:
        """Join rows (prompt ids, optional suffix ids, optional answer templates or constraints: see `generate`);
        returns their handles. `seeds`: None = the config's seed rule (an int seeds every row alike; None draws a
        random seed per row), or one seed per prompt. `cfg_hide` (per row, None or positions in its prompt): what
        classifier-free guidance's unconditional pass hides instead of the whole prompt: guidance then pushes
        toward what those tokens say (an instruction before the prompt: attribute guidance)."""
        if not prompts:
            raise InputError("prompts", "pass at least one prompt")
        suffixes = suffixes if suffixes is not None else [[] for _ in prompts]
        if len(suffixes) != len(prompts):
            raise InputError("suffixes", f"got {len(suffixes)} suffixes for {len(prompts)} prompts")
        G, dev = self.gen_length, self.device
        locks = template_locks(templates, len(prompts), G, self.free_id)
        constraints = check_guides(constraints, len(prompts), locks)
        if self.reverse.revises and any(c is not None for c in constraints):
            raise InputError("constraints", "a sampler that revises committed tokens (remask > 0) takes no constraint")
        gens = _row_generators(len(prompts), self.config.seed if seeds is None else seeds, dev)
        rows_tokens, plens = [], []
        for i, (p, s) in enumerate(zip(prompts, suffixes)):
            p, s = [int(t) for t in p], [int(t) for t in s]
            total = len(p) + G + len(s)
            if self.max_length and total > self.max_length:
                raise InputError(
                    f"prompts[{i}]",
                    f"prompt ({len(p)}) + gen_length ({G}) + suffix ({len(s)}) = {total} tokens exceeds the "
                    f"model's max_seq_len {self.max_length}",
                )
            region = self.reverse.init_canvas(G, gens[i])
            for k, t in locks[i].items():
                region[k] = t
            rows_tokens.append(p + region + s)
            plens.append(len(p))
        if cfg_hide is not None and len(cfg_hide) != len(prompts):
            raise InputError("cfg_hide", f"got {len(cfg_hide)} for {len(prompts)} prompts")
        for i, ks in enumerate(cfg_hide or []):
            if ks is not None and any(not 0 <= int(k) < plens[i] for k in ks):
                raise InputError(f"cfg_hide[{i}]", f"positions must lie in the prompt (0..{plens[i] - 1})")
        handles = list(range(self.next_handle, self.next_handle + len(prompts)))
        self.next_handle += len(prompts)
        self.gens.update(zip(handles, gens))
        self.guides.add(handles, constraints)
        length = max(self.length, max(len(r) for r in rows_tokens))
        grow = length - self.length
        if grow:  # existing rows (if any) are left-padded further: their slots move right
            self.rows.left_pad(grow, self.pad_id)
        new = Rows.start(handles, rows_tokens, plens, length, G, self.pad_id, self.reverse.noisy_in_text, dev,
                         self.align, [list(lk) for lk in locks], cfg_hide)  # fmt: skip
        if self.runner is None:
            self.runner = ModelRunner(self.model, self.config, self.reverse.unconditional, length, dev)
            self.reverse.reset(self.next_handle, length, dev)
        else:
            self.runner.grow(grow, self.live, len(prompts))
            self.reverse.extend(self.next_handle, length, grow)
        self.rows = self.rows.concat(new)
        self.length = length
        return handles

    def cancel(self, handles) -> None:
        """Drop rows (a disconnected client): they leave the batch now and produce no result."""
        drop = torch.tensor(sorted(set(handles)), device=self.device, dtype=torch.long)
        if not drop.numel() or not self.live:
            return
        gone = torch.isin(self.rows.handle, drop)
        for h in self.rows.handle[gone].tolist():
            self.gens.pop(h, None)
            self.guides.pop(h)
        self._keep(torch.nonzero(~gone).flatten())

    def steer(self, handle: int, prompt: Sequence[int]) -> int:
        """Change a row's instruction mid-denoising (between steps): from the next step on the model sees `prompt`
        instead of the row's prompt. What the row has settled stays (locked, as a template's text), its noisy
        positions go on being denoised under the new prompt, on the same schedule (block, step in the block) and
        with the same random generator. Returns the row's new handle (its result is popped under that one);
        nfe and steps count the whole generation."""
        hit = torch.nonzero(self.rows.handle == handle).flatten()
        if not hit.numel():
            raise InputError("handle", f"no live row {handle}")
        if handle in self.guides:
            raise InputError("handle", "a row under a constraint cannot be steered")
        if self.free_id is None:
            raise InputError("mask_token_id", "steering keeps what is settled as a template: it needs a mask id")
        r, j, G = self.rows, int(hit[0]), self.gen_length
        g0, pad = int(r.gen_start[j]), int(r.pad[j])
        if self.align and len(prompt) % self.align != (g0 - pad) % self.align:
            # a block-causal network's blocks sit at fixed positions: the region may not move across them
            raise InputError("prompt", "a block-causal model's blocks sit at fixed positions: steer with a prompt of "
                             f"the same length modulo the block length ({self.align})")  # fmt: skip
        region, noisy = r.tokens[j, g0 : g0 + G].tolist(), r.noisy[j, g0 : g0 + G].tolist()
        template = [self.free_id if n else t for t, n in zip(region, noisy)]
        suffix = r.tokens[j, g0 + G :].tolist()
        if self.max_length and len(prompt) + G + len(suffix) > self.max_length:  # checked before the row leaves
            raise InputError("prompt", f"prompt ({len(prompt)}) + gen_length ({G}) + suffix ({len(suffix)}) exceeds "
                             f"the model's max_seq_len {self.max_length}")  # fmt: skip
        carry = {k: getattr(r, k)[j].clone() for k in ("block", "step", "noisy_at_block_start", "nfe", "steps_taken")}
        gen = self.gens[handle]
        self.cancel([handle])
        (h,) = self.add([prompt], [suffix], seeds=[0], templates=[template])
        self.gens[h] = gen  # the row's own random stream goes on
        k = self.live - 1  # add() appends the new row last
        for name, v in carry.items():
            getattr(self.rows, name)[k] = v.to(getattr(self.rows, name).device)
        return h

    def _keep(self, keep: torch.Tensor) -> None:
        self.runner.select_rows(keep, self.live)
        self.rows = self.rows.select(keep)

    def generated(self) -> dict[int, list[int]]:
        """Each live row's generated region as it stands (noise tokens where still noisy), by handle; tokens that
        may still change show as noise too: a constrained row's past its frontier (its grammar has not accepted
        them) and, when the process revises, the active block's."""
        idx = self.rows.gen_start[:, None] + torch.arange(self.gen_length, device=self.device)[None]
        tokens = self.rows.tokens
        if self.reverse.revises and self.free_id is not None and self.live:
            tokens = tokens.masked_fill(self._active_region()[3], self.free_id)
        out = dict(zip(self.rows.handle.tolist(), tokens.gather(1, idx).tolist()))
        if self.guides and self.free_id is not None:
            self.guides.hide_unaccepted(self.rows, out, self.gen_length, self.free_id)
        return out

    def pop_result(self, handle: int) -> dict:
        return self.results.pop(handle)

    def _finish(self, rows: torch.Tensor, early: torch.Tensor) -> None:
        G, r_ = self.gen_length, self.rows
        for j, r in enumerate(rows.tolist()):
            h = int(r_.handle[r])
            row = r_.tokens[r, int(r_.pad[r]) :].tolist()
            s0 = int(r_.gen_start[r]) - int(r_.pad[r])
            gen = row[s0 : s0 + G]
            if self.config.trim_at_eos and self.eos_id is not None and self.eos_id in gen:
                gen = gen[: gen.index(self.eos_id)]
            self.results[h] = {
                "sequence": gen,
                "canvas": row,
                "nfe": int(r_.nfe[r]),
                "steps": int(r_.steps_taken[r]),
                "finished_early": bool(early[j]),
            }
            self.gens.pop(h, None)
            self.guides.pop(h)

    def _num_blocks(self) -> torch.Tensor:
        """(R,) blocks per row: one more when the first block is cut short (aligned blocks)."""
        return (self.rows.offset + self.gen_length + self.block_length - 1) // self.block_length

    def _active_region(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(block start (R,), block end (R,), whether the row also fills in-text noise now (R,), region (R, L)
        bool): a row's current block; during block 0, also the noise positions inside its prompt/suffix."""
        r, bl = self.rows, self.block_length
        at = torch.arange(self.length, device=self.device)[None]
        first = r.gen_start - r.offset  # where block 0 would start if it were whole
        block_start = torch.maximum(first + r.block * bl, r.gen_start)
        block_end = torch.minimum(first + (r.block + 1) * bl, r.gen_start + self.gen_length)
        with_text = r.has_text_noise & (r.block == 0)
        region = ((at >= block_start[:, None]) & (at < block_end[:, None])) | (with_text[:, None] & r.text_noise)
        return block_start, block_end, with_text, region

    def _logits(self, query_slots, block_start, block_end, with_text, region, gens) -> torch.Tensor:
        """Float32 logits at the query slots, with CFG and the logits processors applied."""
        r = self.rows
        idx = (query_slots - 1).clamp(min=0) if self.shift else query_slots
        lo = (block_start - int(self.shift)).clamp(min=0)
        inputs = self.reverse.forward_inputs(self.model, r.tokens, r.noisy, region, r.handle, r.step,
                                             self.steps_per_block, gens)  # fmt: skip
        logits = self.runner.logits(r.tokens, r.attention, r.positions, r.cfg_hidden, idx, r.step, lo, block_end,
                                    with_text, inputs)  # fmt: skip
        if self.logits_processors:
            decided = torch.where(r.noisy | (r.attention == 0), -1, r.tokens)
            for proc in self.logits_processors:
                logits = proc(decided, logits, query_slots)
        if self.guides:
            self.guides.mask_frontiers(self.rows, logits, query_slots)
        return logits

    def step(self) -> list[int]:
        """One denoising step for every live row; returns the handles that finished (results in pop_result)."""
        if not self.live:
            return []
        r, dev = self.rows, self.device
        block_start, block_end, with_text, region = self._active_region()
        region_noisy = r.noisy & region
        remaining = region_noisy.sum(1)
        r.noisy_at_block_start = torch.where(r.step == 0, remaining, r.noisy_at_block_start)
        # only the still-noisy positions of the region get logits (and, for a process that revises, its settled
        # ones but a template's): right-aligned per row in slot order, so what a row computes and draws never
        # depends on the rest of the batch
        query = region_noisy | (region & ~r.noisy & ~r.locked) if self.reverse.revises else region_noisy
        width = max(int(query.sum(1).max()), 1)
        query_slots = torch.argsort(query.to(torch.int8), dim=1, stable=True)[:, -width:]
        candidates = region_noisy.gather(1, query_slots)
        settled = (query & ~region_noisy).gather(1, query_slots) if self.reverse.revises else None
        gens = [self.gens[h] for h in r.handle.tolist()]
        ctx = StepContext(
            logits=self._logits(query_slots, block_start, block_end, with_text, region, gens),
            tokens=r.tokens.gather(1, query_slots),
            candidates=candidates,
            positions=query_slots,
            rows=r.handle,
            step=r.step,
            steps=self.steps_per_block,
            noisy_at_block_start=r.noisy_at_block_start,
            generators=gens,
            uniform=lambda valid, *extra: _per_row_uniform(gens, valid, extra, dev),
            settled=settled,
        )
        out = self.reverse.step(ctx)
        real = candidates if settled is None else candidates | settled
        r.tokens = r.tokens.scatter(1, query_slots, torch.where(real, out.tokens, ctx.tokens))
        r.noisy = r.noisy.scatter(1, query_slots, torch.where(real, out.noisy, r.noisy.gather(1, query_slots)))
        if self.guides:
            self.guides.settle(r, self.gen_length, self.eos_id, lambda n, h: self.reverse.init_canvas(n, self.gens[h]))
        r.nfe += self.forwards_per_step
        r.steps_taken += 1
        block_before = r.block
        done, early = self._advance(region)
        finished = r.handle[done].tolist()
        if self.streamer is not None:
            changed = out.changed & real
            emit_step(self.streamer, self.step_counter, r, block_before, query_slots, changed, finished)
        self.step_counter += 1
        if finished:
            f = torch.nonzero(done).flatten()
            self._finish(f, early[f])
            self._keep(torch.nonzero(~done).flatten())
        return finished

    def _advance(self, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Move rows on: a row whose region has nothing noisy left starts its next block; returns (done, ended
        early at EOS) per row."""
        r = self.rows
        block_done = ~(r.noisy & region).any(1)
        r.block = r.block + block_done.long()
        r.step = torch.where(block_done, 0, r.step + 1)
        num_blocks = self._num_blocks()
        done = r.block >= num_blocks
        early = torch.zeros_like(done)
        if self.stop_at_eos:
            eos_done = finish_at_eos(r, self.gen_length, self.eos_id)
            early = eos_done & ~done
            done = done | eos_done
        # a row past its step budget (only a custom process that never settles) ends with what it has; a
        # constrained row may take gen_length more steps (each accepts at least one token: see constraints.py)
        budget = num_blocks * self.steps_per_block
        if self.guides:
            budget = budget + self.guides.guided(r).long() * self.gen_length
        done = done | (r.steps_taken.to(self.device) > budget)
        return done, early


