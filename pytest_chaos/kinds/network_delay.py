"""network-delay: the target's packets are held for a latency (± jitter), as Chaos Mesh's NetworkChaos delay.

``reorder`` (``{"reorder": "25", "correlation": "50", "gap": 5}``) sends that
share of packets at once, so they overtake the held ones, as netem's reorder.
Correlations and a gap above 1 need the node's netem: the daemon refuses
them where its packet queue makes the fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api.v1 import chaos_daemon_pb2 as pb
from ..errors import ChaosSpecError
from .network import NetworkKind, correlation, duration_ns, percent

REORDER_FIELDS = ("reorder", "correlation", "gap")
MAX_GAP = 1 << 30  # as the daemon accepts


class NetworkDelay(NetworkKind):
    name = "network-delay"
    field = "network_delay"
    own = ("latency", "jitter", "correlation", "reorder")

    def check_own(self, params: Mapping[str, Any]) -> dict[str, Any]:
        latency = duration_ns(params.get("latency"), "latency", required=True)
        if latency == 0:
            raise ChaosSpecError("latency", "must be above 0, like '100ms'")
        checked: dict[str, Any] = {"latency_ns": latency, "jitter_ns": duration_ns(params.get("jitter"), "jitter"),
                                   "correlation": correlation(params)}
        if (reorder := params.get("reorder")) is not None:
            if not isinstance(reorder, Mapping) or "reorder" not in reorder:
                raise ChaosSpecError("reorder", f"must be a dict like {{'reorder': '25', 'gap': 0}}; got {reorder!r}")
            unknown = sorted(map(str, set(reorder) - set(REORDER_FIELDS)))
            if unknown:
                raise ChaosSpecError(f"reorder.{unknown[0]}", f"unknown field; accepted: {', '.join(REORDER_FIELDS)}")
            gap = reorder.get("gap", 0)
            if isinstance(gap, bool) or not isinstance(gap, int) or not 0 <= gap <= MAX_GAP:
                raise ChaosSpecError("reorder.gap", f"must be a whole number of packets from 0 to {MAX_GAP} "
                                                    f"(netem's gap); got {gap!r}")
            checked["reorder"] = {"reorder": percent(reorder["reorder"], "reorder.reorder"),
                                  "correlation": correlation(reorder, "reorder.correlation"), "gap": gap}
        return checked

    def network_message(self, params: Mapping[str, Any], scope: pb.NetworkScope) -> pb.NetworkDelay:
        message = pb.NetworkDelay(scope=scope, correlation=params["correlation"])
        message.latency.FromNanoseconds(params["latency_ns"])
        message.jitter.FromNanoseconds(params["jitter_ns"])
        if "reorder" in params:
            message.reorder.CopyFrom(pb.NetworkDelay.Reorder(**params["reorder"]))
        return message
