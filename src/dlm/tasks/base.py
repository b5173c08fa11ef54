"""What every task suite shares: seeded instances, a fixed train/test split, chat-formatted examples, exact
verification.

An instance is generated from its index alone (`random.Random(f"{task}:{config}:{i}")`), so instance i is the
same on every machine and every run. Its split is decided by a hash of its *split key* (the instance itself,
or the thing it was derived from, e.g. a Sudoku's base puzzle) and never by its index: the same puzzle can
never be in train and test. `examples("test", n)` walks the indices and keeps the first n test instances, so
the first n of a split are stable whatever n is.
"""

from __future__ import annotations

import hashlib
import json
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Example:
    task: str
    index: int  # the generator index it came from
    prompt: str  # the user message
    answer: str  # one correct answer (the verifier may accept others)
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    # the answer with what the question already fixes locked in place and "<|mask|>" for each token to write
    # (Sudoku: the givens); trained and decoded as a template (never noised, never scored, forced for AR)
    template: str | None = field(default=None, compare=False, hash=False)

    def messages(self, with_answer: bool = True) -> list[dict]:
        m = [{"role": "user", "content": self.prompt}]
        return m + [{"role": "assistant", "content": self.answer}] if with_answer else m


def split_of(key: str, test_percent: int) -> str:
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return "test" if h % 100 < test_percent else "train"


class Task(ABC):
    """A task suite: `examples(split, n)` gives seeded instances; `verify(example, output)` judges an answer.
    Subclasses set `name` and implement `make(rng, index)`; `split_key` defaults to the prompt."""

    name: str = ""
    test_percent: int = 10
    max_tries: int = 200  # indices walked per wanted example before giving up (a split that is too small)

    def config_id(self) -> str:
        """The settings that change which instances exist (part of every instance's seed)."""
        return ""

    @abstractmethod
    def make(self, rng: random.Random, index: int) -> Example: ...

    def split_key(self, ex: Example) -> str:
        return ex.prompt

    @abstractmethod
    def verify(self, ex: Example, output: str) -> bool:
        """True when `output` (the model's answer text) is a correct answer to `ex`."""

    def instance(self, index: int) -> Example:
        return self.make(random.Random(f"{self.name}:{self.config_id()}:{index}"), index)

    def split(self, ex: Example) -> str:
        return split_of(f"{self.name}:{self.config_id()}:{self.split_key(ex)}", self.test_percent)

    def examples(self, split: str, n: int, start: int = 0) -> list[Example]:
        if split not in SPLITS:
            raise InputError("split", f"got {split!r}; allowed: {', '.join(SPLITS)}")
        if n < 0:
            raise InputError("n", f"got {n}; must be >= 0")
        out, i, seen = [], start, set()
        limit = start + max(1, n) * self.max_tries
        while len(out) < n:
            if i >= limit:
                raise InputError("n", f"{self.name}: only {len(out)} distinct {split} instances in {i - start} tries")
            ex = self.instance(i)
            i += 1
            if self.split(ex) == split and ex.prompt not in seen:
                seen.add(ex.prompt)
                out.append(ex)
        return out

    def example_from_record(self, record: dict, index: int, where: str) -> Example:
        """One example read from a user's file (see load_examples); tasks that accept outside data override it."""
        raise InputError("--data", f"the {self.name} task does not read examples from a file")

    def load_examples(self, path: str | Path, limit: int | None = None) -> list[Example]:
        """Examples from a JSONL file in the task's record format (blank lines skipped), the first `limit` of
        them; errors name the file, the line and the field."""
        path = Path(path)
        if not path.is_file():
            raise InputError("--data", f"{path} does not exist or is not a file")
        out = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if limit is not None and len(out) >= limit:
                    break
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as e:
                    raise InputError(f"{path} line {n}", f"not JSON ({e})") from None
                out.append(self.example_from_record(record, n, f"{path} line {n}"))
        if not out:
            raise InputError("--data", f"{path} holds no examples")
        return out

    def training_extras(self) -> list[Example]:
        """Extra training examples that are not questions of the split (e.g. the facts task's biographies)."""
        return []

    def score(self, ex: Example, output: str) -> dict:
        """Per-answer record for reports; tasks with more than right/wrong add fields."""
        return {"correct": self.verify(ex, output)}


def clean(output: str) -> str:
    """The answer as the verifiers read it: stripped, first line only (answers are one line)."""
    s = output.strip()
    return s.splitlines()[0].strip() if s else ""
