"""network-loss: a share of the target's packets is dropped, as Chaos Mesh's NetworkChaos loss."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb

from ..errors import ChaosSpecError
from .network import NetworkKind, no_correlation, percent


class NetworkLoss(NetworkKind):
    name = "network-loss"
    field = "network_loss"
    own = ("loss", "correlation")

    def check_own(self, params: Mapping[str, Any]) -> dict[str, Any]:
        if "loss" not in params:
            raise ChaosSpecError("loss", "is required: the percentage of packets dropped, like '25'")
        no_correlation(params)
        return {"loss": percent(params["loss"], "loss"), "correlation": 0.0}

    def network_message(self, params: Mapping[str, Any], scope: pb.NetworkScope) -> pb.NetworkLoss:
        return pb.NetworkLoss(scope=scope, loss=params["loss"])
