"""network-bandwidth: the target's traffic goes through a token bucket, as Chaos Mesh's NetworkChaos bandwidth.

``rate`` as Chaos Mesh writes it ("1mbps": bytes per second, 1024-based) or
as tc does ("8mbit"); ``limit`` (bytes queued), ``buffer`` (the bucket, in
bytes), ``peakrate`` and ``minburst`` as tc tbf's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api.contract import MAX_RATE
from ..api.v1 import chaos_daemon_pb2 as pb
from ..errors import ChaosSpecError
from .network import NetworkKind, rate_bytes, size_bytes


class NetworkBandwidth(NetworkKind):
    name = "network-bandwidth"
    field = "network_bandwidth"
    own = ("rate", "limit", "buffer", "peakrate", "minburst")

    def check_own(self, params: Mapping[str, Any]) -> dict[str, Any]:
        checked = {"rate": rate_bytes(params.get("rate"), "rate"), "limit": size_bytes(params.get("limit"), "limit"),
                   "buffer": size_bytes(params.get("buffer"), "buffer"), "peakrate": 0,
                   "minburst": size_bytes(params.get("minburst"), "minburst")}
        peakrate = params.get("peakrate")
        if peakrate is not None:
            checked["peakrate"] = peakrate if isinstance(peakrate, int) and not isinstance(peakrate, bool) \
                and 0 < peakrate <= MAX_RATE else rate_bytes(peakrate, "peakrate")
        if bool(checked["peakrate"]) != bool(checked["minburst"]):
            raise ChaosSpecError("peakrate", "and minburst go together (tc tbf's peakrate and mtu)")
        if checked["peakrate"] and checked["peakrate"] <= checked["rate"]:
            raise ChaosSpecError("peakrate", f"must be above rate ({checked['rate']} bytes/s)")
        return checked

    def network_message(self, params: Mapping[str, Any], scope: pb.NetworkScope) -> pb.NetworkBandwidth:
        return pb.NetworkBandwidth(scope=scope, rate=params["rate"], limit=params["limit"], buffer=params["buffer"],
                                   peakrate=params["peakrate"], minburst=params["minburst"])
