"""Chaos Mesh's selection modes: how many of the selected candidates become targets."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TypeVar

from .errors import ChaosSpecError
from .quantities import finite_float

T = TypeVar("T")

MODES = ("one", "all", "fixed", "fixed-percent", "random-max-percent")
MAX_FIXED = 2**63 - 1  # Chaos Mesh's value is an int64; above a float's range, describing the spec failed
_VALUE_RULES = {
    "fixed": f"an integer greater than 0, at most {MAX_FIXED}",
    "fixed-percent": "a number in (0, 100]",
    "random-max-percent": "a number in [0, 100]",
}


def check_mode(mode: object, value: object) -> float | int | None:
    """Validate ``mode`` and its ``value``; return the value as a number (or None)."""
    if mode not in MODES:
        raise ChaosSpecError("mode", f"unknown mode {mode!r}; accepted modes: {', '.join(MODES)}")
    if mode in ("one", "all"):
        if value is not None:
            raise ChaosSpecError("value", f"mode {mode!r} takes no value (got {value!r})")
        return None
    rule = _VALUE_RULES[mode]
    if value is None:
        raise ChaosSpecError("value", f"mode {mode!r} needs a value: {rule}")
    number = _as_number(value, integer=mode == "fixed")
    ok = {
        "fixed": number is not None and 0 < number <= MAX_FIXED,
        "fixed-percent": number is not None and 0 < number <= 100,
        "random-max-percent": number is not None and 0 <= number <= 100,
    }[mode]
    if not ok:
        raise ChaosSpecError("value", f"mode {mode!r} needs {rule}; got {value!r}")
    return number


def _as_number(value: object, integer: bool) -> float | int | None:
    # Chaos Mesh's value is a string ("2", "50"); accept that and plain numbers.
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = int(value) if integer else float(value)
        except ValueError:
            return None
    if integer:
        return value if isinstance(value, int) else None
    return value if isinstance(value, int | float) and finite_float(value) is not None else None


def choose(candidates: Sequence[T], mode: str, value: float | int | None, rng: random.Random) -> list[T]:
    """The targets ``mode`` picks from ``candidates``, drawn with ``rng``; order kept."""
    count = len(candidates)
    if mode == "all":
        return list(candidates)
    if mode == "one":
        wanted = min(1, count)
    elif mode not in MODES:
        raise ChaosSpecError("mode", f"unknown mode {mode!r}; accepted modes: {', '.join(MODES)}")
    elif value is None:
        raise ChaosSpecError("value", f"mode {mode!r} needs a value: {_VALUE_RULES[mode]}")
    elif mode == "fixed":
        wanted = min(int(value), count)
    elif mode == "fixed-percent":
        wanted = math.ceil(count * value / 100)
    else:  # random-max-percent
        percent = rng.randint(0, int(value)) if float(value).is_integer() else rng.uniform(0, value)
        wanted = math.ceil(count * percent / 100)
    picked = sorted(rng.sample(range(count), min(wanted, count)))
    return [candidates[i] for i in picked]
