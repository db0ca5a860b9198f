"""The interface every fault kind implements on the plugin side."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ..backends import Backend
from ..model import Target
from ..transport import DaemonClient


@dataclasses.dataclass(frozen=True)
class InjectContext:
    """What a kind may use to inject into one target."""

    client: DaemonClient | None  # the daemon on the target's node; None for kinds that use none
    backend: Backend
    lease_s: float  # the daemon recovers the fault if not renewed within this
    duration_s: float | None  # the daemon recovers the fault this long after applying it
    owner: str  # who applied it, for the daemon's listings
    targets: tuple[Target, ...] = ()  # every target of the experiment (pod-kill acts once per pod)
    peers: tuple[Target, ...] = ()  # what the experiment's ``target`` selected (network kinds)
    seed: int = 0  # for the fault's own random choices (a packet's fate), from the run's --chaos-seed


class FaultKind(Protocol):
    name: str
    # Whether anything stays in force after ``inject`` and needs recovering;
    # recoverable kinds are recovered through the daemon's Recover.
    recoverable: bool
    # The backends that offer the kind; empty: every backend.
    backends: tuple[str, ...]
    # Whether it works through the daemon on the target's node (pod-kill talks to the API server alone).
    uses_daemon: bool

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Validated parameters; raises ChaosSpecError naming the bad one."""
        ...

    def inject(self, ctx: InjectContext, target: Target, params: Mapping[str, Any]) -> None:
        """Apply the fault to ``target`` and fill in what the daemon reported. Raises ChaosError."""
        ...


class RecoveredByPlugin(Protocol):
    """A recoverable kind without a daemon (pod-failure): the plugin recovers it, through the backend."""

    def recover(self, backend: Backend, targets: Sequence[Target]) -> None:
        """End the fault on ``targets`` and settle each one's state and detail."""
        ...
