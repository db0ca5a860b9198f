"""Errors a chaos experiment can end in."""

from __future__ import annotations

# Characters of a ChaosSpecError's field and message: a value of any size (a manifest's, up to 1 MiB) may be
# quoted in them.
MAX_FIELD = MAX_MESSAGE = 1000


class ChaosSpecError(ValueError):
    """An experiment's arguments are wrong: raised before anything is injected."""

    def __init__(self, field: str, message: str) -> None:
        field, message = cut(field, MAX_FIELD), cut(message, MAX_MESSAGE)
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ChaosError(RuntimeError):
    """An experiment could not be applied: nothing selected, daemon unreachable, or the fault failed."""


class DaemonUnreachable(ChaosError):
    """No connection to the daemon could be made: nothing was sent, so the call may go to another address."""


def cut(text: str, limit: int) -> str:
    """``text``, or its start and its end around a note of how much is left out: a message says what was wrong
    first and what is accepted last, and a field names its document first and its path last."""
    if len(text) <= limit:
        return text
    head, tail = limit * 2 // 3, limit // 3
    return f"{text[:head]} ...[{len(text) - head - tail} characters cut]... {text[-tail:]}"
