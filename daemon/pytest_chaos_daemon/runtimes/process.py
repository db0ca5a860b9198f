"""``pid://N``: a bare process on the daemon's host, no runtime involved."""

from __future__ import annotations

import os

from ..errors import InvalidArgument, NotFound

PID_MAX = 4194304  # the kernel's ceiling for pid_max on 64-bit


class ProcessRuntime:
    prefix = "pid"
    endpoint = "/proc"

    def pid_of(self, ref: str) -> int:
        if not ref.isascii() or not ref.isdigit() or not 0 < int(ref) <= PID_MAX:
            raise InvalidArgument(f"container id pid://{ref!r} is malformed: expected a PID from 1 to {PID_MAX}")
        pid = int(ref)
        if not os.path.exists(f"/proc/{pid}"):
            raise NotFound(f"process pid://{pid} not found on this node")
        return pid
