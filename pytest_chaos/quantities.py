"""Numbers as markers and manifests write them, made safe to compare.

A YAML integer may have hundreds of digits, and ``float()`` of one too large
for a float raises OverflowError rather than giving inf: every check that
takes "a number" goes through ``finite_float``.
"""

from __future__ import annotations

import math


def finite_float(value: object) -> float | None:
    """``value`` as a finite float if it is an int or a float, never a bool (YAML reads on, no, true as
    booleans); None for anything else, and for inf, nan or an int beyond a float's range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None
