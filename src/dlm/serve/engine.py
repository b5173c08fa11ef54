"""The serving engine: one worker thread owns the model and runs step-level continuous batching.

Requests wait in a bounded queue. Between two denoising steps the worker admits waiting requests into the
running batch (a `Denoiser` per generation-settings key; rows of one key share every step), steps every
running batch once, hands each streaming request its new frame, and returns finished rows. A cancelled
request (client gone) or one past its deadline leaves its batch before the next step. Causal models (the AR
twin) run each admitted batch to the end with their KV cache (no step-level joins); they check cancellation and
deadlines after every token the same way, and stop the batch once none of its rows is still wanted.

Rows share a batch only when their whole GenerationConfig is equal (the seed aside: every row has its own) and
they carry the same logits processors (`Job.processors`): a Denoiser applies its processors to every row, so a
drawing (image-code tokens only) never shares a batch with text. The app builds each kind of processor once, so
the same objects (compared by identity) mean the same processors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field

import torch

from ..sampling import GenerationConfig
from ..sampling.autoregressive import generate_autoregressive
from ..sampling.constraints import Constraint
from ..sampling.generate import Denoiser


class QueueFull(Exception):
    pass


class _Abandoned(Exception):
    """Raised from the causal streamer when every row of its batch is cancelled or past its deadline."""


def _random_seed() -> int:
    return int(torch.randint(0, 2**62, (1,)))


@dataclass
class Job:
    ids: list[int]
    cfg: GenerationConfig
    seed: int | None
    frames: bool  # push every step's generated region (streaming / denoise visualisation)
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    timeout: float
    created: float = field(default_factory=time.perf_counter)
    cancelled: threading.Event = field(default_factory=threading.Event)
    handle: int | None = None
    steps: int = 0
    suffix: list[int] = field(default_factory=list)
    template: list[int] | None = None  # answer template ids (mask id where the model writes)
    constraint: Constraint | None = None  # compiled structured-output constraint
    processors: tuple = ()  # logits processors for every step (shared objects: part of the batch key)

    def key(self) -> tuple:
        """Rows share a batch (one Denoiser, one config) only if every generation setting is equal and their
        logits processors are the same objects. The seed is left out: each row is seeded on its own (`row_seed`)."""
        cfg = tuple(getattr(self.cfg, f.name) for f in dataclasses.fields(self.cfg) if f.name != "seed")
        return cfg + (self.processors,)  # processors define no __eq__: compared by identity

    def row_seed(self) -> int | None:
        """The request's seed, else the config's; None = draw one at random."""
        return self.seed if self.seed is not None else self.cfg.seed

    def expired(self, now: float) -> bool:
        return now - self.created > self.timeout

    def push(self, kind: str, payload) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))


class Engine:
    def __init__(self, lm, *, max_batch: int = 8, max_queue: int = 64, metrics=None):
        self.lm, self.max_batch, self.max_queue = lm, max_batch, max_queue
        self.metrics = metrics
        self.waiting: deque[Job] = deque()
        self.running: dict[tuple, tuple[Denoiser, dict[int, Job]]] = {}
        self.causal_live = 0  # rows of the causal batch now running (still wanted)
        self.cv = threading.Condition()
        self.stop = False
        self.thread = threading.Thread(target=self._run, name="dlm-engine", daemon=True)
        self.thread.start()

    # ---- called from the HTTP side -----------------------------------------------------------------
    def submit(self, jobs: list[Job]) -> None:
        with self.cv:
            if len(self.waiting) + len(jobs) > self.max_queue:
                raise QueueFull
            self.waiting.extend(jobs)
            self.cv.notify()
        self._gauges()

    def cancel(self, jobs: list[Job]) -> None:
        for j in jobs:
            j.cancelled.set()
        with self.cv:
            self.cv.notify()

    def shutdown(self) -> None:
        with self.cv:
            self.stop = True
            self.cv.notify()
        self.thread.join(timeout=10)

    @property
    def live(self) -> int:
        return sum(len(jobs) for _, jobs in self.running.values()) + self.causal_live

    def _gauges(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.set(len(self.waiting))
            self.metrics.batch_size.set(self.live)

    # ---- the worker --------------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self.cv:
                while not self.stop and not self.waiting and not self.live:
                    self.cv.wait(timeout=0.5)
                if self.stop:
                    return
                admit = []
                while self.waiting and self.live + len(admit) < self.max_batch:
                    admit.append(self.waiting.popleft())
            try:
                if self.lm.is_causal:
                    self._run_causal(admit)
                else:
                    self._admit(admit)
                    self._step_all()
            except Exception as e:  # a bug must not kill the server: fail the jobs involved, keep serving
                traceback.print_exc()
                for j in admit + [j for _, jobs in self.running.values() for j in jobs.values()]:
                    j.push("error", f"{type(e).__name__}: {e}")
                self.running.clear()
                self.causal_live = 0
            self._gauges()

    def _admit(self, jobs: list[Job]) -> None:
        for j in jobs:
            if j.cancelled.is_set():
                continue
            key = j.key()
            if key not in self.running:
                self.running[key] = (Denoiser(self.lm.model, j.cfg, process=self.lm.process,
                                              logits_processors=j.processors), {})  # fmt: skip
            d, members = self.running[key]
            seed = j.row_seed()  # explicit: the Denoiser's own config (the first row's) must not decide it
            tpl = None if j.template is None else [j.template]
            (h,) = d.add([j.ids], [j.suffix], seeds=[seed if seed is not None else _random_seed()], templates=tpl,
                         constraints=[j.constraint])  # fmt: skip
            j.handle = h
            members[h] = j

    def _drop(self, j: Job) -> None:
        """A row leaves before its end: its client went away (nobody to answer) or it ran past its deadline."""
        if not j.cancelled.is_set():
            j.push("error", f"timeout: the request ran longer than {j.timeout:g} s")
        if self.metrics:
            self.metrics.requests.labels("cancelled" if j.cancelled.is_set() else "timeout").inc()

    def _step_all(self) -> None:
        now = time.perf_counter()
        for key in list(self.running):
            d, members = self.running[key]
            gone = [h for h, j in members.items() if j.cancelled.is_set() or j.expired(now)]
            if gone:
                d.cancel(gone)
                for h in gone:
                    self._drop(members.pop(h))
            if not d.live:
                del self.running[key]
                continue
            t0 = time.perf_counter()
            finished = d.step()
            if self.metrics:
                self.metrics.step_latency.observe(time.perf_counter() - t0)
            frames = d.generated() if any(j.frames for j in members.values()) else {}
            for h, j in members.items():
                j.steps += 1
                if j.frames and h in frames:
                    j.push("frame", frames[h])
            for h in finished:
                j = members.pop(h)
                j.push("done", d.pop_result(h))
            if not d.live:
                del self.running[key]

    def _run_causal(self, jobs: list[Job]) -> None:
        """Each group (equal config and seed) runs left to right to its end. After every token, rows whose client
        went away or whose deadline passed are answered (timeout) or forgotten (cancelled), as in `_step_all`;
        a group none of whose rows is still wanted stops there. (A causal batch takes no joins, so a dropped
        row's slot is reused when its batch ends.)"""
        groups: dict[tuple, list[Job]] = {}
        for j in jobs:
            if not j.cancelled.is_set():
                groups.setdefault((j.key(), j.row_seed()), []).append(j)
        for (_, seed), group in groups.items():
            now = time.perf_counter()
            for j in group:
                if j.cancelled.is_set() or j.expired(now):  # waited past its deadline behind an earlier group
                    self._drop(j)
            group = [j for j in group if not (j.cancelled.is_set() or j.expired(now))]
            if not group:
                continue
            cfg = dataclasses.replace(group[0].cfg, seed=seed)
            partial: dict[int, list[int]] = {i: [] for i in range(len(group))}
            alive = [True] * len(group)

            def on_step(ev, group=group, partial=partial, alive=alive):
                for r, toks in zip(ev.rows, ev.tokens):
                    partial[r] += toks
                    if alive[r] and group[r].frames:
                        group[r].push("frame", list(partial[r]))
                now = time.perf_counter()
                for r, j in enumerate(group):
                    if alive[r] and (j.cancelled.is_set() or j.expired(now)):
                        alive[r] = False
                        self._drop(j)
                self.causal_live = sum(alive)
                if not self.causal_live:
                    raise _Abandoned

            t0 = time.perf_counter()
            self.causal_live = len(group)
            self._gauges()
            try:
                tpls = [j.template or [] for j in group] if any(j.template for j in group) else None
                mask_id = getattr(self.lm.tokenizer, "mask_token_id", None)
                out = generate_autoregressive(self.lm.model, [j.ids for j in group], cfg, streamer=on_step,
                                              templates=tpls, mask_token_id=mask_id,
                                              logits_processors=group[0].processors,
                                              constraints=[j.constraint for j in group])  # fmt: skip
            except _Abandoned:
                continue
            finally:
                self.causal_live = 0
            if self.metrics:
                self.metrics.step_latency.observe((time.perf_counter() - t0) / max(1, max(out.steps)))
            for i, j in enumerate(group):
                if not alive[i]:
                    continue
                j.steps = out.steps[i]
                j.push("done", {"sequence": out.sequences[i], "nfe": out.nfe[i], "steps": out.steps[i],
                                "finished_early": out.finished_early[i] if out.finished_early else False})  # fmt: skip
