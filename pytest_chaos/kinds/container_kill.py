"""container-kill: SIGKILL to the container through its runtime (containerd, Docker); to its PID for CRI-O and pid://."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api.v1 import chaos_daemon_pb2 as pb
from .applied import AppliedKind


class ContainerKill(AppliedKind):
    name = "container-kill"
    field = "container_kill"
    recoverable = False

    def message(self, params: Mapping[str, Any]) -> pb.ContainerKill:
        return pb.ContainerKill()
