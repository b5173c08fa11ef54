"""Sudoku 9×9: unique-solution puzzles, difficulty set by the number of givens.

Base puzzles are made by filling a grid at random (backtracking) and removing cells in random order while the
solution stays unique (a bitmask solver counts solutions up to 2). Each instance is a base puzzle under a
random validity-preserving transformation (digit relabelling, row/column swaps inside bands and stacks, band
and stack swaps, transposition), which keeps it unique-solution with the same number of givens. The split
key is the base puzzle: variants of one base are all train or all test.

Text layouts (`layout`): "cells" (the default) writes a grid as its 81 digits in reading order, 0 for an
empty cell, so that a character-level tokenizer gives one token per cell and every prompt and answer has the
same length; "grid" writes 9 lines of 9 space-separated digits (the layout before cells; the same puzzles).
With `locked` (the default in the cells layout) every example carries an answer template: the puzzle with each blank as
"<|mask|>" (cells layout), so the givens stand in the answer from the start and are never noised, scored or
predicted (forced for the AR twin): the models learn and are asked only the blanks.
Puzzles from elsewhere load with `Sudoku.load_examples(path)`: JSONL, one {"puzzle": 81 characters with "0" for
a blank, "solution": 81 characters} per line.
"""

from __future__ import annotations

import random
from functools import lru_cache

from ..errors import InputError
from ..tokenizer import TEMPLATE_FREE
from .base import Example, Task

FULL = 0x3FE  # bits 1..9


def _box(r: int, c: int) -> int:
    return (r // 3) * 3 + c // 3


def solve(grid: list[int], limit: int = 2, rng: random.Random | None = None) -> tuple[int, list[int] | None]:
    """(number of solutions found, up to `limit`; the first solution). `grid`: 81 ints, 0 = empty. With `rng`,
    candidate digits are tried in random order (to fill an empty grid at random)."""
    g = list(grid)
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    for i, v in enumerate(g):
        if v:
            b = 1 << v
            r, c = divmod(i, 9)
            if rows[r] & b or cols[c] & b or boxes[_box(r, c)] & b:
                return 0, None
            rows[r] |= b
            cols[c] |= b
            boxes[_box(r, c)] |= b
    empty = [i for i, v in enumerate(g) if not v]
    found, first = 0, None

    def rec() -> bool:  # returns True to stop
        nonlocal found, first
        best, best_mask, best_n = -1, 0, 10
        for i in empty:
            if g[i]:
                continue
            r, c = divmod(i, 9)
            m = FULL & ~(rows[r] | cols[c] | boxes[_box(r, c)])
            n = bin(m).count("1")
            if n < best_n:
                best, best_mask, best_n = i, m, n
                if n <= 1:
                    break
        if best < 0:
            found += 1
            if first is None:
                first = list(g)
            return found >= limit
        if best_n == 0:
            return False
        r, c = divmod(best, 9)
        digits = [d for d in range(1, 10) if best_mask >> d & 1]
        if rng is not None:
            rng.shuffle(digits)
        for d in digits:
            b = 1 << d
            g[best] = d
            rows[r] |= b
            cols[c] |= b
            boxes[_box(r, c)] |= b
            if rec():
                return True
            rows[r] &= ~b
            cols[c] &= ~b
            boxes[_box(r, c)] &= ~b
            g[best] = 0
        return False

    rec()
    return found, first


def is_solution(puzzle: list[int], sol: list[int]) -> bool:
    if len(sol) != 81 or any(p and p != s for p, s in zip(puzzle, sol)):
        return False
    units = [[r * 9 + c for c in range(9)] for r in range(9)] + [[r * 9 + c for r in range(9)] for c in range(9)]
    units += [[(br + r) * 9 + bc + c for r in range(3) for c in range(3)] for br in (0, 3, 6) for bc in (0, 3, 6)]
    return all(sorted(sol[i] for i in u) == list(range(1, 10)) for u in units)


LAYOUTS = ("cells", "grid")


def to_text(grid: list[int], layout: str = "cells") -> str:
    if layout == "cells":
        return "".join(str(v) for v in grid)
    return "\n".join(" ".join(str(v) for v in grid[r * 9 : r * 9 + 9]) for r in range(9))


def parse(text: str) -> list[int]:
    return [int(ch) for ch in text if ch.isdigit()]


@lru_cache(maxsize=4096)
def base_puzzle(givens: int, base: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(puzzle, solution) number `base` with `givens` givens (cached: variants share it)."""
    rng = random.Random(f"sudoku-base:{givens}:{base}")
    _, sol = solve([0] * 81, limit=1, rng=rng)
    puzzle = list(sol)
    filled = 81
    for i in rng.sample(range(81), 81):
        if filled <= givens:
            break
        keep = puzzle[i]
        puzzle[i] = 0
        if solve(puzzle, limit=2)[0] != 1:
            puzzle[i] = keep
        else:
            filled -= 1
    return tuple(puzzle), tuple(sol)


def transform(grid: list[int], rng: random.Random) -> tuple[list[int], callable]:
    """A random validity-preserving map; returns a function applying the same map to any grid."""
    digits = list(range(1, 10))
    rng.shuffle(digits)
    relabel = [0] + digits
    bands, stacks = rng.sample(range(3), 3), rng.sample(range(3), 3)
    row_order = [b * 3 + r for b in bands for r in rng.sample(range(3), 3)]
    col_order = [s * 3 + c for s in stacks for c in rng.sample(range(3), 3)]
    flip = rng.random() < 0.5

    def apply(g):
        out = [relabel[g[row_order[r] * 9 + col_order[c]]] for r in range(9) for c in range(9)]
        return [out[c * 9 + r] for r in range(9) for c in range(9)] if flip else out

    return apply(grid), apply


class Sudoku(Task):
    name = "sudoku"

    def __init__(self, givens: int = 36, variants: int = 1, layout: str = "cells", locked: bool | None = None):
        if not 17 <= givens <= 80:
            raise InputError("givens", f"got {givens}; allowed: 17..80 (fewer givens = harder)")
        if layout not in LAYOUTS:
            raise InputError("layout", f"got {layout!r}; allowed: {', '.join(LAYOUTS)}")
        locked = layout == "cells" if locked is None else locked
        if locked and layout != "cells":
            raise InputError("locked", "givens are locked in the cells layout only; use layout='cells' or locked=False")
        self.givens, self.variants, self.layout, self.locked = givens, variants, layout, locked

    def config_id(self) -> str:
        return f"givens={self.givens}"

    def make(self, rng, index):
        base = index // self.variants
        puzzle, sol = base_puzzle(self.givens, base)
        p, apply = transform(list(puzzle), rng)
        s = apply(list(sol))
        meta = {"base": base, "givens": sum(v > 0 for v in p)}
        return Example(self.name, index, to_text(p, self.layout), to_text(s, self.layout), meta, self._template(p))

    def _template(self, puzzle: list[int]) -> str | None:
        return "".join(str(v) if v else TEMPLATE_FREE for v in puzzle) if self.locked else None

    def split_key(self, ex):
        return f"base:{ex.meta['base']}"

    def example_from_record(self, record: dict, index: int, where: str) -> Example:
        """An external puzzle {"puzzle": 81 characters, "0" for a blank; "solution": 81 characters} as an
        Example in this task's layout; `where` (e.g. "FILE line 3") names it in errors."""
        grids = []
        for key, blank_ok in (("puzzle", True), ("solution", False)):
            v = record.get(key) if isinstance(record, dict) else None
            allowed = "0123456789" if blank_ok else "123456789"
            if not isinstance(v, str) or len(v) != 81 or any(ch not in allowed for ch in v):
                raise InputError(
                    f"{where}: {key}", f"got {v!r:.100}; must be a string of 81 characters from {allowed!r}"
                    + (' ("0" for a blank)' if blank_ok else "")
                )
            grids.append([int(ch) for ch in v])
        puzzle, sol = grids
        if not is_solution(puzzle, sol):
            raise InputError(f"{where}: solution", "is not a solution of the puzzle (a unit repeats a digit, "
                             "or a given is changed)")  # fmt: skip
        meta = {"base": None, "givens": sum(v > 0 for v in puzzle)}
        return Example(self.name, index, to_text(puzzle, self.layout), to_text(sol, self.layout), meta,
                       self._template(puzzle))  # fmt: skip

    def verify(self, ex, output):
        return is_solution(parse(ex.prompt), parse(output))

    def score(self, ex, output):
        want, got = parse(ex.answer), parse(output)
        blanks = [i for i, v in enumerate(parse(ex.prompt)) if not v]
        cells = sum(1 for i in blanks if i < len(got) and got[i] == want[i]) / max(1, len(blanks))
        return {"correct": self.verify(ex, output), "cell_accuracy": cells}
