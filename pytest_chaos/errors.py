"""Errors a chaos experiment can end in."""

from __future__ import annotations


class ChaosSpecError(ValueError):
    """An experiment's arguments are wrong: raised before anything is injected."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ChaosError(RuntimeError):
    """An experiment could not be applied: nothing selected, daemon unreachable, or the fault failed."""


class DaemonUnreachable(ChaosError):
    """No connection to the daemon could be made: nothing was sent, so the call may go to another address."""
