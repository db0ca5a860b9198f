"""Timing helpers shared by the benchmarks: interleaved rounds, medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any


def interleaved_medians(actions: Mapping[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each action, run once each per round, after one warm-up each.

    Interleaving puts every action under the same machine noise, so their
    ratio means something on a shared machine where absolute times do not.
    """
    for action in actions.values():
        action()
    samples: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(rounds):
        for name, action in actions.items():
            start = time.perf_counter()
            action()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def apply_and_recover(session: Any, kind: str, selector: dict, params: dict) -> tuple[float, float]:
    """Seconds to apply ``kind`` through the plugin's session (``mode="all"``), then to recover it."""
    spec = session.spec((kind,), {"selector": selector, "mode": "all", **params})
    start = time.perf_counter()
    experiment = session.apply(spec)
    applied = time.perf_counter()
    session.recover(experiment)
    return applied - start, time.perf_counter() - applied
