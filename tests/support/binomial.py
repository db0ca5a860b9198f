"""How far a count of random outcomes may stray before a test calls the fault wrong.

Faults such as loss, corruption and duplication act per packet at random, so a test
counts outcomes and compares with Binomial(n, p). The interval is wide enough that
an honest fault falls outside it about once in 10,000 checks (the suite has a few
dozen such checks per run), and narrow enough that a fault that did not act, or
acted at another rate, falls outside it.
"""

from __future__ import annotations

import math

LEVEL = 0.9999


def binomial_interval(n: int, p: float, level: float = LEVEL) -> tuple[int, int]:
    """The central interval holding ``level`` of Binomial(n, p): [low, high] counts."""
    tail = (1 - level) / 2

    def pmf(k: int) -> float:
        if p in (0, 1):
            return float(k == n * p)
        return math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                        + k * math.log(p) + (n - k) * math.log(1 - p))

    masses = [pmf(k) for k in range(n + 1)]
    low, below = 0, 0.0
    while below + masses[low] <= tail:
        below += masses[low]
        low += 1
    high, above = n, 0.0
    while above + masses[high] <= tail:
        above += masses[high]
        high -= 1
    return low, high
