"""Countdown: reach the target from the given numbers with + − × ÷, each number used exactly once.

An instance draws `n` numbers in [1, max_number] and a target made by combining all of them in a random order
with random operations, keeping every intermediate result a positive integer (so an exact answer exists).
Layouts (`layout`):
- "steps" (the default): the prompt lists the numbers and the target with three digits each, and the answer is
  the chain of n - 1 steps that reaches the target, each `aaa?bbb=ccc` (three digits per number) joined by
  commas, e.g. `007+005=012,012*003=036,036-008=028`. With a character-level tokenizer every prompt and every
  answer of a given n has one fixed length (the answer 12 (n - 1) - 1 characters), and each step is one
  decision the model can check locally. The verifier replays any chain: each step takes two numbers still
  available (given or made by an earlier step), its result must be exact (division without remainder), and the
  last number left must be the target, with every given number used. An expression is accepted too.
  With `locked` (the default in the steps layout) every example carries an answer template: what the question
  already fixes stands in the answer from the start (each `=`, each comma, and the last result, which is the
  target), `<|mask|>` for the rest (operands, operators, intermediate results); both twins train and decode it
  as a template (never noised or scored; the AR twin is forced to it).
- "expression": the prompt in words and the answer as one expression, e.g. `(7 + 5) * 3 - 8`.

Expressions are parsed with `ast` (numbers and + - * / and parentheses only), must use exactly the given
numbers, and are evaluated exactly (fractions), so any correct answer counts, not only the generator's.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction

import torch

from ..errors import InputError
from ..tokenizer import TEMPLATE_FREE
from .base import Example, Task, clean

OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}


def evaluate(expr: str) -> tuple[Fraction, list[int]] | None:
    """(exact value, numbers used) of an arithmetic expression, or None if it is not one."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError):
        return None
    used: list[int] = []

    def ev(node):
        if isinstance(node, ast.Constant) and type(node.value) is int and node.value >= 0:
            used.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            if a is None or b is None:
                return None
            if isinstance(node.op, ast.Div):
                return None if b == 0 else a / b
            op = OPS.get(type(node.op))
            return op(a, b) if op else None
        return None

    value = ev(tree.body)
    return None if value is None else (value, used)


LAYOUTS = ("steps", "expression")
STEP = re.compile(r"^\s*(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(\d+)\s*$")
APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
         "/": lambda a, b: a // b if b and a % b == 0 else None}  # fmt: skip


def replay(chain: str, numbers: list[int], target: int) -> bool:
    """True when the comma-separated steps `a?b=c` are each exact, each use two numbers still available (given
    or made earlier; each used once) and end with the target as the only number left."""
    pool = Counter(numbers)
    steps = chain.split(",")
    if len(steps) != len(numbers) - 1:
        return False
    for step in steps:
        m = STEP.match(step)
        if not m:
            return False
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        pool[a] -= 1
        pool[b] -= 1
        if pool[a] < 0 or pool[b] < 0 or APPLY[op](a, b) != c:
            return False
        pool[c] += 1
    return +pool == Counter([target])


def step_checks(chain: str, numbers: list[int]) -> tuple[float, float]:
    """(share of steps whose arithmetic is exact, share whose two operands were available) over the answer's
    comma-separated steps; a step that is not `a?b=c` fails both. Where an answer goes wrong: sums or planning."""
    pool, exact, available = Counter(numbers), 0, 0
    steps = [s for s in chain.split(",") if s.strip()]
    for step in steps:
        m = STEP.match(step)
        if not m:
            continue
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        exact += APPLY[op](a, b) == c
        pool[a] -= 1
        pool[b] -= 1
        available += pool[a] >= 0 and pool[b] >= 0
        pool[c] += 1
    return exact / max(len(steps), 1), available / max(len(steps), 1)


def _words(meta: dict) -> str:
    nums = " ".join(str(v) for v in meta["numbers"])
    return f"Numbers: {nums}. Target: {meta['target']}. Use every number once with + - * /."


class Countdown(Task):
    name = "countdown"

    def __init__(self, numbers: int = 4, max_number: int = 20, max_target: int = 100, layout: str = "steps",
                 locked: bool | None = None):  # fmt: skip
        if not 2 <= numbers <= 6:
            raise InputError("numbers", f"got {numbers}; allowed: 2..6")
        if layout not in LAYOUTS:
            raise InputError("layout", f"got {layout!r}; allowed: {', '.join(LAYOUTS)}")
        if max_number > 999 or max_target > 999:
            raise InputError("max_number/max_target", "must be <= 999 (three digits per number)")
        locked = layout == "steps" if locked is None else locked
        if locked and layout != "steps":
            raise InputError("locked", "only the steps layout has fixed places to lock: use layout='steps' or "
                             "locked=False")  # fmt: skip
        self.n, self.max_number, self.max_target, self.layout = numbers, max_number, max_target, layout
        self.locked = locked

    def config_id(self):
        return f"n={self.n},max={self.max_number},target<={self.max_target}"

    def make(self, rng, index):
        while True:
            nums = [rng.randint(1, self.max_number) for _ in range(self.n)]
            order = rng.sample(nums, len(nums))
            value, expr = order[0], str(order[0])
            ok, steps = True, []
            for x in order[1:]:
                choices = [("+", value + x), ("*", value * x)]
                if value - x > 0:
                    choices.append(("-", value - x))
                if value % x == 0:
                    choices.append(("/", value // x))
                op, new = rng.choice(choices)
                steps.append(f"{value:03d}{op}{x:03d}={new:03d}")
                value = new
                expr = f"({expr} {op} {x})"
                if value > self.max_target:
                    ok = False
                    break
            if ok and value >= 1:
                break
        meta = {"numbers": sorted(nums), "target": value}
        if self.layout == "steps":
            prompt = " ".join(f"{v:03d}" for v in sorted(nums)) + f" -> {value:03d}"
            answer = ",".join(steps)
            return Example(self.name, index, prompt, answer, meta, self._template(answer) if self.locked else None)
        return Example(self.name, index, _words(meta), expr[1:-1] if expr.startswith("(") else expr, meta)

    @staticmethod
    def _template(answer: str) -> str:
        """Every `=` and comma, and the last three characters (the target), locked; the rest free."""
        keep = {i for i, c in enumerate(answer) if c in "=,"} | set(range(len(answer) - 3, len(answer)))
        return "".join(c if i in keep else TEMPLATE_FREE for i, c in enumerate(answer))

    def split_key(self, ex):  # the expression layout's prompt, whatever the layout: both split alike
        return _words(ex.meta)

    def verify(self, ex, output):
        answer = clean(output)
        if "," in answer or STEP.match(answer):
            return replay(answer, ex.meta["numbers"], ex.meta["target"])
        r = evaluate(answer.split("=")[0])
        if r is None:
            return False
        value, used = r
        return value == ex.meta["target"] and sorted(used) == ex.meta["numbers"]

    def score(self, ex, output):
        """Right or wrong, and in the steps layout where an answer goes wrong: exact arithmetic, available
        operands (`step_checks`)."""
        out = {"correct": self.verify(ex, output)}
        if self.layout == "steps":
            out["step_arithmetic"], out["step_operands"] = step_checks(clean(output), ex.meta["numbers"])
        return out


@torch.no_grad()
def first_result_probe(lm, examples) -> dict:
    """Does a diffusion model compute a step's result or copy it from the next step's operand? One forward per
    example and condition over the gold answer (steps layout): the first step's result masked, the rest of the
    answer visible (`visible`: the result also stands as an operand later), or every free character after it
    masked too (`masked`: only arithmetic gives it). Counts of exactly right results out of `n`."""
    tok, model = lm.tokenizer, lm.model
    out = {"visible": 0, "masked": 0, "n": 0}
    for ex in examples:
        chat = tok.apply_chat_template(ex.messages(with_answer=False), add_generation_prompt=True, tokenize=False)
        p, a = tok.encode(chat), tok.encode(ex.answer)
        if len(a) != len(ex.answer) or not STEP.match(ex.answer.split(",")[0]):
            raise InputError("examples", "the probe needs the steps layout and a character-level tokenizer")
        ids = torch.tensor([p + a + [tok.eos_token_id]], device=lm.device)
        eq = ex.answer.index("=")
        result = [len(p) + i for i in range(eq + 1, eq + 4)]
        later = [len(p) + i for i in range(eq + 4, len(a) - 3) if ex.answer[i] not in "=,"]
        for key, hide in (("visible", result), ("masked", result + later)):
            x = ids.clone()
            x[0, hide] = model.config.mask_token_id
            out[key] += int(torch.equal(model(x)[0, result].argmax(-1), ids[0, result]))
        out["n"] += 1
    return out
