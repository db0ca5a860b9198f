"""network-corrupt: a share of the target's packets get one bit flipped, so the receiver drops them on their
checksum, as Chaos Mesh's NetworkChaos corrupt."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb

from ..errors import ChaosSpecError
from .network import NetworkKind, no_correlation, percent


class NetworkCorrupt(NetworkKind):
    name = "network-corrupt"
    field = "network_corrupt"
    own = ("corrupt", "correlation")

    def check_own(self, params: Mapping[str, Any]) -> dict[str, Any]:
        if "corrupt" not in params:
            raise ChaosSpecError("corrupt", "is required: the percentage of packets corrupted, like '10'")
        no_correlation(params)
        return {"corrupt": percent(params["corrupt"], "corrupt"), "correlation": 0.0}

    def network_message(self, params: Mapping[str, Any], scope: pb.NetworkScope) -> pb.NetworkCorrupt:
        return pb.NetworkCorrupt(scope=scope, corrupt=params["corrupt"])
