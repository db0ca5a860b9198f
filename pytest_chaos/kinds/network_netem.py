"""network-netem: several of netem's effects at once on the target's packets, as Chaos Mesh's NetworkChaos netem
action: ``delay``, ``loss``, ``duplicate`` and ``corrupt`` sections, each with the fields of the kind of that
name (``{"latency": "90ms", "jitter": "10ms", "correlation": "25"}``, ``{"loss": "25", "correlation": "25"}``).

Made as one fault: one netem qdisc holding every effect where the node has
netem, each with its own correlation; otherwise one packet queue, which
refuses a correlation other than 0 (see network-delay).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api.v1 import chaos_daemon_pb2 as pb
from ..errors import ChaosSpecError
from .network import NetworkKind
from .network_corrupt import NetworkCorrupt
from .network_delay import NetworkDelay
from .network_duplicate import NetworkDuplicate
from .network_loss import NetworkLoss

SECTIONS: dict[str, NetworkKind] = {"delay": NetworkDelay(), "loss": NetworkLoss(), "duplicate": NetworkDuplicate(),
                                    "corrupt": NetworkCorrupt()}
EXAMPLE = "delay={'latency': '90ms'}, loss={'loss': '25'}"


class NetworkNetem(NetworkKind):
    name = "network-netem"
    field = "network_netem"
    own = tuple(SECTIONS)

    def check_own(self, params: Mapping[str, Any]) -> dict[str, Any]:
        present = [section for section in SECTIONS if section in params]
        if not present:
            raise ChaosSpecError("delay", f"network-netem needs at least one of {', '.join(SECTIONS)}, "
                                          f"like {EXAMPLE}")
        checked: dict[str, Any] = {}
        for section in present:
            kind, fields = SECTIONS[section], params[section]
            if not isinstance(fields, Mapping):
                raise ChaosSpecError(section, f"must be a dict of {', '.join(kind.own)}; got {fields!r}")
            unknown = sorted(map(str, set(fields) - set(kind.own)))
            if unknown:
                raise ChaosSpecError(f"{section}.{unknown[0]}", f"unknown field; accepted: {', '.join(kind.own)}")
            try:
                checked[section] = kind.check_own(fields)
            except ChaosSpecError as err:
                raise ChaosSpecError(f"{section}.{err.field}", err.message) from None
        return checked

    def network_message(self, params: Mapping[str, Any], scope: pb.NetworkScope) -> pb.NetworkNetem:
        message = pb.NetworkNetem(scope=scope)
        for section, kind in SECTIONS.items():
            if section in params:
                part = kind.network_message(params[section], pb.NetworkScope())
                part.ClearField("scope")  # the fault's scope is the message's own
                getattr(message, section).CopyFrom(part)
        return message
