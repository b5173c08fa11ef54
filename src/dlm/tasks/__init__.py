"""Task suites: seeded instance generators, exact verifiers and fixed train/test splits.

    from dlm.tasks import get_task
    task = get_task("sudoku", givens=36)
    train = task.examples("train", 10_000)          # chat examples for `dlm train` (task: sft)
    task.verify(ex, "1 2 3 ...")                     # exact verification of an answer
    evaluate(lm, task, task.examples("test", 200))   # accuracy (and NFE, seconds) of a model

Suites: sudoku, countdown, arithmetic, facts (hallucination: seen vs unseen entities). Code infilling on the
built-in corpus is `dlm eval code` (dlm.eval.code).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from ..errors import InputError
from .arithmetic import Arithmetic
from .base import SPLITS, Example, Task
from .countdown import Countdown
from .facts import Facts
from .sudoku import Sudoku

TASKS: dict[str, type[Task]] = {"sudoku": Sudoku, "countdown": Countdown, "arithmetic": Arithmetic, "facts": Facts}


def get_task(name: str, **options) -> Task:
    if name not in TASKS:
        raise InputError("task", f"got {name!r}; allowed: {', '.join(TASKS)}")
    try:
        return TASKS[name](**options)
    except TypeError as e:
        raise InputError("options", f"{name}: {e}") from None


def write_sft(task: Task, split: str, n: int, out: str | Path) -> dict:
    """`n` examples of `split` as chat JSONL ({"messages": [...]}, what `dlm train` reads with data.task: sft).
    The train split also gets the task's extra training examples (facts: the biographies), shuffled in with a
    fixed seed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    exs = task.examples(split, n)
    extras = task.training_extras() if split == "train" else []
    rows = exs + extras
    if extras:
        random.Random(f"{task.name}:{task.config_id()}:sft").shuffle(rows)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "w") as f:
        for ex in rows:
            row = {"messages": ex.messages(), "task": ex.task, "index": ex.index}
            if ex.template is not None:
                row["template"] = ex.template
            f.write(json.dumps(row) + "\n")
    tmp.replace(out)
    return {"task": task.name, "config": task.config_id(), "split": split, "examples": len(exs),
            "extras": len(extras), "path": str(out)}  # fmt: skip


def answer_length(lm, examples: list[Example], block: int) -> int:
    """Tokens to generate: the longest answer (+ EOS), rounded up to a multiple of `block`, but never past the
    model's context: a model trained on short rows (max_seq_len = prompt + answer) gets the longest answer
    exactly, or what room the longest prompt leaves if that is more."""
    longest = max(len(lm.tokenizer.encode(ex.answer)) for ex in examples) + 1
    rounded = -(-longest // block) * block
    tok = lm.tokenizer
    chats = [ex.messages(with_answer=False) for ex in examples]
    prompt = max(len(tok.encode(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False))) for m in chats)
    room = lm.model.config.max_seq_len - prompt
    return rounded if rounded <= room else max(longest, room)


def evaluate(lm, task: Task, examples: list[Example], *, batch_size: int = 8, keep: int = 5, **overrides) -> dict:
    """Answer every example through the model's chat template and score it with the task's verifier.

    Returns accuracy, the mean of every other score field (e.g. hallucinated), mean NFE, tokens generated,
    wall seconds, every item's scores (`items`: its id, the example's index, and the score fields, for paired
    tests) and the first `keep` examples in full. `overrides` are generation settings (gen_length defaults to
    the longest answer rounded up to the block length)."""
    if not examples:
        raise InputError("examples", "no examples to evaluate")
    if batch_size < 1:
        raise InputError("batch_size", f"got {batch_size}; must be >= 1")
    if overrides.get("gen_length") is None:
        block = overrides.get("block_length") or lm.generation_config.block_length or 32
        overrides["gen_length"] = answer_length(lm, examples, block)
        overrides.setdefault("block_length", min(block, overrides["gen_length"]))
        overrides.setdefault("steps", overrides["gen_length"])
    cfg = lm.make_config(None, **overrides)
    t0 = time.perf_counter()
    rows, nfe, tokens = [], [], 0
    templated = any(ex.template is not None for ex in examples)
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        tpl = [ex.template or "" for ex in chunk] if templated else None
        outs = lm.chat_batch([ex.messages(with_answer=False) for ex in chunk], cfg, templates=tpl)
        for ex, o in zip(chunk, outs):
            rows.append({"prompt": ex.prompt, "answer": ex.answer, "output": o.text, **task.score(ex, o.text)})
            nfe.append(o.nfe)
            tokens += len(o.tokens)
    seconds = time.perf_counter() - t0
    n = len(rows)
    out = {"task": task.name, "config": task.config_id(), "n": n, "accuracy": sum(r["correct"] for r in rows) / n}
    for k in rows[0]:
        if k not in ("prompt", "answer", "output", "correct") and isinstance(rows[0][k], (bool, int, float)):
            out[k] = sum(float(r[k]) for r in rows) / n
    items = [{"id": ex.index, **{k: v for k, v in r.items() if k not in ("prompt", "answer", "output")}}
             for ex, r in zip(examples, rows)]  # fmt: skip
    out.update(nfe_mean=sum(nfe) / n, tokens=tokens, seconds=seconds, gen_length=cfg.gen_length, items=items,
               examples=rows[:keep])  # fmt: skip
    return out


__all__ = ["TASKS", "SPLITS", "Example", "Task", "get_task", "write_sft", "evaluate", "answer_length"]
