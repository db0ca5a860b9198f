"""container-pause: every process of the target stops until recovered (cgroup freezer; SIGSTOP for pid://)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api.v1 import chaos_daemon_pb2 as pb
from .applied import AppliedKind


class ContainerPause(AppliedKind):
    name = "container-pause"
    field = "container_pause"

    def message(self, params: Mapping[str, Any]) -> pb.ContainerPause:
        return pb.ContainerPause()
