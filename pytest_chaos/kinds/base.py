"""The interface every fault kind implements on the plugin side."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ..model import Target
from ..transport import DaemonClient


class FaultKind(Protocol):
    name: str
    # Whether anything stays in force after ``inject`` and needs ``recover``.
    recoverable: bool

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Validated parameters; raises ChaosSpecError naming the bad one."""
        ...

    def inject(self, client: DaemonClient, target: Target, params: Mapping[str, Any]) -> None:
        """Apply the fault to ``target`` and fill in what the daemon reported."""
        ...

    def recover(self, client: DaemonClient, target: Target) -> None:
        """Undo what ``inject`` did to ``target``."""
        ...
