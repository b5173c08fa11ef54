"""Multi-digit arithmetic: `a + b` and `a * b` with a fixed number of digits per operand (carry chains included).

Layouts (`layout`):
- "plain" (the default): the answer is the integer as written, so its length varies (3-digit sums have 3 or 4
  digits) and a digit's place in the answer depends on the number's length.
- "padded": the answer is zero-padded to the widest result the operation can have (`digits + 1` for `+`,
  `2 * digits` for `*`), e.g. `123 + 456 =` → `0579`. With a character-level tokenizer every answer of an
  operation then has one length and each answer digit one place, aligned with the operand digits it depends on.
Both layouts draw the same instances and split them alike (the split key is the question). The verifier reads
the first integer of the answer line and compares values, so leading zeros never decide."""

from __future__ import annotations

import re

from ..errors import InputError
from .base import Example, Task, clean

OPS = ("+", "*")
LAYOUTS = ("plain", "padded")


class Arithmetic(Task):
    name = "arithmetic"

    def __init__(self, digits: int = 4, ops: str = "+*", layout: str = "plain"):
        if not 1 <= digits <= 12:
            raise InputError("digits", f"got {digits}; allowed: 1..12")
        if not ops or any(o not in OPS for o in ops):
            raise InputError("ops", f"got {ops!r}; allowed: a combination of {''.join(OPS)}")
        if layout not in LAYOUTS:
            raise InputError("layout", f"got {layout!r}; allowed: {', '.join(LAYOUTS)}")
        self.digits, self.ops, self.layout = digits, ops, layout

    def config_id(self):
        return f"digits={self.digits},ops={self.ops}"

    def width(self, op: str) -> int:
        """The padded layout's answer length for `op`."""
        return self.digits + 1 if op == "+" else 2 * self.digits

    def make(self, rng, index):
        lo, hi = 10 ** (self.digits - 1), 10**self.digits - 1
        a, b, op = rng.randint(lo, hi), rng.randint(lo, hi), rng.choice(self.ops)
        value = a + b if op == "+" else a * b
        answer = f"{value:0{self.width(op)}d}" if self.layout == "padded" else str(value)
        return Example(self.name, index, f"{a} {op} {b} =", answer, {"a": a, "b": b, "op": op})

    def verify(self, ex, output):
        m = re.match(r"-?\d+", clean(output).replace(",", ""))
        return m is not None and int(m.group(0)) == int(ex.answer)
