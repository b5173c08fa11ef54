"""Streamer callbacks: receive every denoising step (the server and playground are built on them)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class StepEvent:
    step: int  # global step counter (0-based) of the generate() call
    block: int  # active block index (the lowest over the rows: rows move through blocks at their own pace)
    rows: list[int]  # batch rows that took part in this step
    positions: list[list[int]]  # per row: canvas positions committed this step (no left padding)
    tokens: list[list[int]]  # per row: the tokens committed there
    masked: list[list[int]] = field(default_factory=list)  # per row: canvas positions still noisy after the step
    finished: list[int] = field(default_factory=list)  # rows that finished at this step
    blocks: list[int] = field(default_factory=list)  # per row: its active block index


class Streamer:
    """Subclass and override; or pass any callable `fn(event)` as `streamer=`."""

    def on_step(self, event: StepEvent) -> None:  # pragma: no cover - interface
        pass

    def on_end(self) -> None:
        pass


class CallbackStreamer(Streamer):
    def __init__(self, fn):
        self.fn = fn

    def on_step(self, event: StepEvent) -> None:
        self.fn(event)


class RecordingStreamer(Streamer):
    """Keeps every event (handy for tests and for replaying a denoising trajectory)."""

    def __init__(self):
        self.events: list[StepEvent] = []
        self.ended = False

    def on_step(self, event: StepEvent) -> None:
        self.events.append(event)

    def on_end(self) -> None:
        self.ended = True


def emit_step(streamer, step, r, block, slots, changed, finished) -> None:
    """The sampler loop's StepEvent for rows `r` (positions counted without left padding)."""
    positions, tokens, noisy = [], [], []
    for j in range(r.count):
        q = torch.nonzero(changed[j]).flatten()
        positions.append((slots[j, q] - r.pad[j]).tolist())
        tokens.append(r.tokens[j, slots[j, q]].tolist())
        noisy.append((torch.nonzero(r.noisy[j]).flatten() - r.pad[j]).tolist())
    blocks = block.tolist()
    rows = r.handle.tolist()
    streamer.on_step(StepEvent(step, min(blocks), rows, positions, tokens, noisy, finished, blocks))
