"""The statistics of the claims report: exact tests only.

- Two models scored on the same items (the usual case: one test split, both models): McNemar's exact test, a
  two-sided binomial test on the discordant pairs.
- Two rates over different items (or when the per-item outcomes were not kept): Fisher's exact test.
- A rate's 95 % confidence interval: Clopper–Pearson (exact).
"""

from __future__ import annotations

from scipy.stats import binomtest, fisher_exact


def fisher_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of Fisher's exact test for k1/n1 == k2/n2 (1.0 when a side has no trials)."""
    if min(n1, n2) == 0:
        return 1.0
    return float(fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)


def mcnemar(x: list, y: list) -> dict:
    """McNemar's exact test for paired binary outcomes x[i], y[i] of the same items: only x right (b), only y
    right (c), and the two-sided p of Binomial(b + c, 1/2) (1.0 when no pair is discordant)."""
    if len(x) != len(y):
        raise ValueError(f"paired outcomes differ in length: {len(x)} vs {len(y)}")
    b = sum(1 for u, v in zip(x, y) if u and not v)
    c = sum(1 for u, v in zip(x, y) if v and not u)
    p = float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    return {"only_x": b, "only_y": c, "p": p}


def interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper–Pearson interval of k successes in n trials ((0, 1) when n = 0)."""
    if n == 0:
        return 0.0, 1.0
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def compare(a: dict, b: dict, field: str = "correct") -> dict:
    """a's and b's rate of `field` (per-item records in "items" when both runs kept them on the same items:
    McNemar; else the rates and counts: Fisher). Returns the counts, rates, intervals, p and the test's name."""
    ia, ib = a.get("items"), b.get("items")
    ka, kb = _count(a, field), _count(b, field)
    out = {"k": (ka, kb), "n": (a["n"], b["n"]), "rate": (ka / max(a["n"], 1), kb / max(b["n"], 1)),
           "ci": (interval(ka, a["n"]), interval(kb, b["n"]))}  # fmt: skip
    if ia and ib and len(ia) == len(ib) and [r.get("id") for r in ia] == [r.get("id") for r in ib]:
        m = mcnemar([r[field] for r in ia], [r[field] for r in ib])
        return {**out, "test": "McNemar exact", "p": m["p"], "discordant": (m["only_x"], m["only_y"])}
    return {**out, "test": "Fisher exact", "p": fisher_p(ka, a["n"], kb, b["n"])}


def _count(r: dict, field: str) -> int:
    if r.get("items"):
        return sum(1 for it in r["items"] if it[field])
    rate = r["accuracy"] if field == "correct" else r[field]
    return round(rate * r["n"])
