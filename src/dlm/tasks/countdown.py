"""Countdown: reach the target from the given numbers with + − × ÷, each number used exactly once.

An instance draws `n` numbers in [1, max_number] and a target made by combining all of them in a random order
with random operations, keeping every intermediate result a positive integer (so an exact answer exists).
The answer is one arithmetic expression, e.g. `(7 + 5) * 3 - 8`; the verifier parses it with `ast` (numbers
and + - * / and parentheses only), checks that it uses exactly the given numbers, and evaluates it exactly
(fractions), so any correct expression is accepted, not only the one the generator made.
"""

from __future__ import annotations

import ast
from fractions import Fraction

from ..errors import InputError
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


class Countdown(Task):
    name = "countdown"

    def __init__(self, numbers: int = 4, max_number: int = 20, max_target: int = 100):
        if not 2 <= numbers <= 6:
            raise InputError("numbers", f"got {numbers}; allowed: 2..6")
        self.n, self.max_number, self.max_target = numbers, max_number, max_target

    def config_id(self):
        return f"n={self.n},max={self.max_number},target<={self.max_target}"

    def make(self, rng, index):
        while True:
            nums = [rng.randint(1, self.max_number) for _ in range(self.n)]
            order = rng.sample(nums, len(nums))
            value, expr = order[0], str(order[0])
            ok = True
            for x in order[1:]:
                choices = [("+", value + x), ("*", value * x)]
                if value - x > 0:
                    choices.append(("-", value - x))
                if value % x == 0:
                    choices.append(("/", value // x))
                op, value = rng.choice(choices)
                expr = f"({expr} {op} {x})"
                if value > self.max_target:
                    ok = False
                    break
            if ok and value >= 1:
                break
        nums_text = " ".join(str(v) for v in sorted(nums))
        prompt = f"Numbers: {nums_text}. Target: {value}. Use every number once with + - * /."
        return Example(self.name, index, prompt, expr[1:-1] if expr.startswith("(") else expr,
                       {"numbers": sorted(nums), "target": value})  # fmt: skip

    def verify(self, ex, output):
        r = evaluate(clean(output).split("=")[0])
        if r is None:
            return False
        value, used = r
        return value == ex.meta["target"] and sorted(used) == ex.meta["numbers"]
