"""network-delay: the target's packets are held for a latency (± jitter), as Chaos Mesh's NetworkChaos delay.

``reorder`` (``{"reorder": "25", "gap": 0}``) sends that share of packets at
once, so they overtake the held ones, as netem's reorder without a gap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb

from ..errors import ChaosSpecError
from .network import NetworkKind, duration_ns, no_correlation, percent

REORDER_FIELDS = ("reorder", "correlation", "gap")


class NetworkDelay(NetworkKind):
    name = "network-delay"
    field = "network_delay"
    own = ("latency", "jitter", "correlation", "reorder")

    def check_own(self, params: Mapping[str, Any]) -> dict[str, Any]:
        latency = duration_ns(params.get("latency"), "latency", required=True)
        if latency == 0:
            raise ChaosSpecError("latency", "must be above 0, like '100ms'")
        checked: dict[str, Any] = {"latency_ns": latency, "jitter_ns": duration_ns(params.get("jitter"), "jitter")}
        no_correlation(params)
        if (reorder := params.get("reorder")) is not None:
            if not isinstance(reorder, Mapping) or "reorder" not in reorder:
                raise ChaosSpecError("reorder", f"must be a dict like {{'reorder': '25', 'gap': 0}}; got {reorder!r}")
            unknown = sorted(map(str, set(reorder) - set(REORDER_FIELDS)))
            if unknown:
                raise ChaosSpecError(f"reorder.{unknown[0]}", f"unknown field; accepted: {', '.join(REORDER_FIELDS)}")
            no_correlation(reorder, "reorder.correlation")
            gap = reorder.get("gap", 0)
            if gap not in (0, 1):
                raise ChaosSpecError("reorder.gap", f"{gap!r} is refused: a gap needs the kernel's netem, and "
                                                    f"pytest-chaos emulates delay with a packet queue; give 0")
            checked["reorder"] = percent(reorder["reorder"], "reorder.reorder")
        return checked

    def network_message(self, params: Mapping[str, Any], scope: pb.NetworkScope) -> pb.NetworkDelay:
        message = pb.NetworkDelay(scope=scope)
        message.latency.FromNanoseconds(params["latency_ns"])
        message.jitter.FromNanoseconds(params["jitter_ns"])
        if "reorder" in params:
            message.reorder.CopyFrom(pb.NetworkDelay.Reorder(reorder=params["reorder"]))
        return message
