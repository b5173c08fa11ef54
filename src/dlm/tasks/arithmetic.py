"""Multi-digit arithmetic: `a + b` and `a * b` with a fixed number of digits per operand (carry chains included).

The answer is the exact integer; the verifier reads the first integer of the answer line."""

from __future__ import annotations

import re

from ..errors import InputError
from .base import Example, Task, clean

OPS = ("+", "*")


class Arithmetic(Task):
    name = "arithmetic"

    def __init__(self, digits: int = 4, ops: str = "+*"):
        if not 1 <= digits <= 12:
            raise InputError("digits", f"got {digits}; allowed: 1..12")
        if not ops or any(o not in OPS for o in ops):
            raise InputError("ops", f"got {ops!r}; allowed: a combination of {''.join(OPS)}")
        self.digits, self.ops = digits, ops

    def config_id(self):
        return f"digits={self.digits},ops={self.ops}"

    def make(self, rng, index):
        lo, hi = 10 ** (self.digits - 1), 10**self.digits - 1
        a, b, op = rng.randint(lo, hi), rng.randint(lo, hi), rng.choice(self.ops)
        value = a + b if op == "+" else a * b
        return Example(self.name, index, f"{a} {op} {b} =", str(value), {"a": a, "b": b, "op": op})

    def verify(self, ex, output):
        m = re.match(r"-?\d+", clean(output).replace(",", ""))
        return m is not None and m.group(0) == ex.answer
