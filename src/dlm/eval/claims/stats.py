"""The statistics of the claims report: a two-sided two-proportion z-test."""

from __future__ import annotations

import math


def two_proportion_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of a z-test for p1 == p2 (1.0 when undefined)."""
    if min(n1, n2) == 0:
        return 1.0
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = abs(k1 / n1 - k2 / n2) / se
    return math.erfc(z / math.sqrt(2))


def rates_p(rate1: float, n1: int, rate2: float, n2: int) -> float:
    """two_proportion_p of two measured rates over n1 and n2 trials (counts: rate × n, rounded)."""
    return two_proportion_p(round(rate1 * n1), n1, round(rate2 * n2), n2)
