"""network-partition: the target's traffic with its peers is dropped, as Chaos Mesh's NetworkChaos partition.

With ``to`` (the default) the connections the target opens towards the peers
fail, while the peers' connections to it keep working; ``from`` is the
mirror; ``both`` cuts every packet either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api.v1 import chaos_daemon_pb2 as pb
from ..errors import ChaosSpecError
from .network import NetworkKind


class NetworkPartition(NetworkKind):
    name = "network-partition"
    field = "network_partition"

    def check_direction(self, direction: str, has_target: bool, has_external: bool) -> None:
        if direction != "to" and not (has_target or has_external):
            raise ChaosSpecError("direction", f"{direction!r} needs `target` or `external_targets`, as in Chaos Mesh")

    def network_message(self, params: Mapping[str, Any], scope: pb.NetworkScope) -> pb.NetworkPartition:
        return pb.NetworkPartition(scope=scope)
