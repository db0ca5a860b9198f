"""network-duplicate: a share of the target's packets is sent twice, as Chaos Mesh's NetworkChaos duplicate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb

from ..errors import ChaosSpecError
from .network import NetworkKind, no_correlation, percent


class NetworkDuplicate(NetworkKind):
    name = "network-duplicate"
    field = "network_duplicate"
    own = ("duplicate", "correlation")

    def check_own(self, params: Mapping[str, Any]) -> dict[str, Any]:
        if "duplicate" not in params:
            raise ChaosSpecError("duplicate", "is required: the percentage of packets sent twice, like '10'")
        no_correlation(params)
        return {"duplicate": percent(params["duplicate"], "duplicate"), "correlation": 0.0}

    def network_message(self, params: Mapping[str, Any], scope: pb.NetworkScope) -> pb.NetworkDuplicate:
        return pb.NetworkDuplicate(scope=scope, duplicate=params["duplicate"])
