"""process-kill: a signal to the processes inside each target whose command name is ``process``,
or whose command line ``process`` matches as a regular expression. Targets list the signalled
processes in ``processes``."""

from __future__ import annotations

import re
import signal
from collections.abc import Mapping
from typing import Any

from ..api.contract import MAX_PROCESS_LEN, RE2_REFUSES, process_pattern
from ..api.v1 import chaos_daemon_pb2 as pb
from ..errors import ChaosSpecError
from ..model import Target
from .applied import AppliedKind
from .base import InjectContext

MAX_SIGNAL = 64
SIGNAL_ACCEPTED = "a signal name such as 'SIGTERM' or 'TERM' (any case) or a number from 1 to 64"


class ProcessKill(AppliedKind):
    name = "process-kill"
    field = "process_kill"
    recoverable = False
    parameters = ("process", "signal")

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        params = super().check_params(params)
        process = params.get("process")
        if not isinstance(process, str) or not process:
            raise ChaosSpecError("process", "is required: a command name, or a regular expression searched in each "
                                            f"command line; got {process!r}")
        if len(process) > MAX_PROCESS_LEN:
            raise ChaosSpecError("process", f"must be at most {MAX_PROCESS_LEN} characters; got {len(process)}")
        check_pattern(process)
        return {"process": process, "signal": check_signal(params.get("signal", "SIGKILL"))}

    def message(self, params: Mapping[str, Any]) -> pb.ProcessKill:
        return pb.ProcessKill(process=params["process"], signal=params["signal"])

    def inject(self, ctx: InjectContext, target: Target, params: Mapping[str, Any]) -> None:
        super().inject(ctx, target, params)
        # No command prints anything here: the report shows what got the signal instead.
        rows = [f"{p.pid:>5} {p.user:<10} {p.command}" for p in target.processes]
        target.output = "\n".join([f"{signal_name(params['signal'])} sent to:", "  PID USER       COMMAND", *rows])


def check_pattern(process: str) -> None:
    """Refuse at collection what the daemon's matcher refuses. The daemon matches with RE2 (linear time,
    no backreferences or lookarounds); where google-re2 is installed here (with the daemon, as the local
    backend has it) it checks, elsewhere Python's ``re`` checks the syntax and the daemon the rest."""
    try:
        process_pattern(process)
    except ImportError:
        try:
            re.compile(process)
        except re.error as err:
            raise ChaosSpecError("process", f"{process!r} is not a valid regular expression ({err})") from None
    except ValueError as err:
        raise ChaosSpecError("process", f"{process!r} is not a regular expression RE2 accepts ({err}); give a "
                                        f"command name or {RE2_REFUSES}") from None


def check_signal(value: object) -> int:
    """A signal's number from its name ("SIGTERM", "term") or number (1-64); raises ChaosSpecError."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 1 <= value <= MAX_SIGNAL:
            return value
    elif isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        number = signal.Signals.__members__.get(name)
        if number is not None:
            return int(number)
    raise ChaosSpecError("signal", f"must be {SIGNAL_ACCEPTED}; got {value!r}")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # 32 and 33, which the C library keeps for itself
        return f"signal {signum}"
