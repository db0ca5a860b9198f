"""The plugin's session on a test's own daemon, as the local backend reaches it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pytest_chaos.backends.local import LocalBackend
from pytest_chaos.session import ChaosSession


def local_session(daemon: Any, seed: int = 1) -> Iterator[ChaosSession]:
    """A session on ``daemon`` (a RunningDaemon); what a failed test left is recovered now, not at its lease's
    end. Use as a fixture body: ``yield from local_session(daemon)``."""
    chaos = ChaosSession(LocalBackend(lambda: daemon.address), seed=seed)
    yield chaos
    for _, experiment in chaos.experiments:
        chaos.recover(experiment)
    chaos.close()
