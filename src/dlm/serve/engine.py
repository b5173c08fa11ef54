"""The serving engine: one worker thread owns the model and runs step-level continuous batching.

Requests wait in a bounded queue. Between two denoising steps the worker admits waiting requests into the
running batch (a `Denoiser` per generation-settings key; rows of one key share every step), steps every
running batch once, hands each streaming request its new frame, and returns finished rows. A cancelled
request (client gone) or one past its deadline leaves its batch before the next step. Causal models (the AR
twin) run each admitted batch to the end with their KV cache (no step-level joins).
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
from ..sampling.generate import Denoiser


class QueueFull(Exception):
    pass


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

    def key(self) -> tuple:
        c = self.cfg
        return (c.gen_length, c.steps, c.block_length, c.policy, c.threshold, c.temperature, c.top_k, c.top_p,
                c.cfg_scale, c.cache, c.factor, c.entropy_bound)  # fmt: skip

    def push(self, kind: str, payload) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))


class Engine:
    def __init__(self, lm, *, max_batch: int = 8, max_queue: int = 64, metrics=None):
        self.lm, self.max_batch, self.max_queue = lm, max_batch, max_queue
        self.metrics = metrics
        self.waiting: deque[Job] = deque()
        self.running: dict[tuple, tuple[Denoiser, dict[int, Job]]] = {}
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
        return sum(len(jobs) for _, jobs in self.running.values())

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
            self._gauges()

    def _admit(self, jobs: list[Job]) -> None:
        for j in jobs:
            if j.cancelled.is_set():
                continue
            key = j.key()
            if key not in self.running:
                self.running[key] = (Denoiser(self.lm.model, j.cfg), {})
            d, members = self.running[key]
            (h,) = d.add([j.ids], [j.suffix], seeds=[j.seed] if j.seed is not None else None)
            j.handle = h
            members[h] = j

    def _step_all(self) -> None:
        now = time.perf_counter()
        for key in list(self.running):
            d, members = self.running[key]
            gone = [h for h, j in members.items() if j.cancelled.is_set() or now - j.created > j.timeout]
            if gone:
                d.cancel(gone)
                for h in gone:
                    j = members.pop(h)
                    if not j.cancelled.is_set():
                        j.push("error", f"timeout: the request ran longer than {j.timeout:g} s")
                    if self.metrics:
                        self.metrics.requests.labels("cancelled" if j.cancelled.is_set() else "timeout").inc()
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
        jobs = [j for j in jobs if not j.cancelled.is_set()]
        groups: dict[tuple, list[Job]] = {}
        for j in jobs:
            groups.setdefault((j.key(), j.seed), []).append(j)
        for (_, seed), group in groups.items():
            cfg = group[0].cfg
            if seed is not None:
                cfg = dataclasses.replace(cfg, seed=seed)
            partial: dict[int, list[int]] = {i: [] for i in range(len(group))}

            def on_step(ev, group=group, partial=partial):
                for r, toks in zip(ev.rows, ev.tokens):
                    partial[r] += toks
                    if group[r].frames:
                        group[r].push("frame", list(partial[r]))

            t0 = time.perf_counter()
            out = generate_autoregressive(self.lm.model, [j.ids for j in group], cfg, streamer=on_step)
            if self.metrics:
                self.metrics.step_latency.observe((time.perf_counter() - t0) / max(1, max(out.steps)))
            for i, j in enumerate(group):
                j.steps = out.steps[i]
                j.push("done", {"sequence": out.sequences[i], "nfe": out.nfe[i], "steps": out.steps[i],
                                "finished_early": out.finished_early[i] if out.finished_early else False})  # fmt: skip
