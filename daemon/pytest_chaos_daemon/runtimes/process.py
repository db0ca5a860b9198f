"""``pid://N``: a bare process on the daemon's host, no runtime involved."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

from ..errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from ..confinement.target import HeldTarget

PID_MAX = 4194304  # the kernel's ceiling for pid_max on 64-bit


class ProcessRuntime:
    prefix = "pid"
    endpoint = "/proc"
    kill_mechanism = "SIGKILL to the process (pidfd)"

    def pid_of(self, ref: str) -> int:
        if not ref.isascii() or not ref.isdigit() or not 0 < int(ref) <= PID_MAX:
            raise InvalidArgument(f"container id pid://{ref!r} is malformed: expected a PID from 1 to {PID_MAX}")
        pid = int(ref)
        if not os.path.exists(f"/proc/{pid}"):
            raise NotFound(f"process pid://{pid} not found on this node")
        return pid

    def kill(self, ref: str, target: HeldTarget) -> None:
        target.send_signal(signal.SIGKILL)
