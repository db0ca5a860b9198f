"""What the network kinds share: Chaos Mesh's NetworkChaos fields, checked at collection, and the scope the
daemon gets (device, direction, peers).

``target`` (a second selection: ``{"selector": ..., "mode": ..., "value": ...}``)
is checked with the run's backend when the spec is built (``spec.py``) and
resolved when the experiment is applied (``session.py``): peers with an address
the backend knows (pods) go to the daemon as addresses, local ones as target
ids whose addresses the daemon reads on its node. ``external_targets`` are IPv4
addresses, CIDRs or host names, resolved when applied.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf.message import Message

from ..api.contract import MAX_LATENCY_MS, MAX_RATE
from ..api.v1 import chaos_daemon_pb2 as pb
from ..errors import ChaosError, ChaosSpecError
from ..quantities import finite_float
from .applied import AppliedKind
from .base import InjectContext

DIRECTIONS = {"to": pb.NetworkScope.DIRECTION_TO, "from": pb.NetworkScope.DIRECTION_FROM,
              "both": pb.NetworkScope.DIRECTION_BOTH}
SCOPE_PARAMETERS = ("direction", "target", "external_targets", "device")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
                "h": 3_600_000_000_000}
_HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                        r"[A-Za-z0-9])?)*\.?")
_DEVICE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")
# Chaos Mesh's rate units are bytes per second, each 1024 times the last; tc's bit units are added.
_RATE = re.compile(r"(\d+)\s*(tbps|gbps|mbps|kbps|bps|tbit|gbit|mbit|kbit|bit)")
_RATE_BYTES = {"bps": 1, "kbps": 1 << 10, "mbps": 1 << 20, "gbps": 1 << 30, "tbps": 1 << 40,
               "bit": 1 / 8, "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8, "tbit": 1e12 / 8}
RATE_FORMS = ("a rate like '1mbps' (bytes per second, as Chaos Mesh: bps, kbps, mbps, gbps, tbps, each 1024 times "
              "the last) or '8mbit' (bits per second, as tc: bit, kbit, mbit, gbit, tbit), up to 1tbps")


def correlation(params: Mapping[str, Any], field: str = "correlation") -> float:
    """netem's correlation with the previous packet, a percentage (0 if not given). The daemon honours it
    where the kernel's netem makes the fault, and refuses one other than 0 where its packet queue does."""
    return percent(params.get(field.split(".")[-1], 0), field)


def percent(value: object, field: str) -> float:
    """A percentage from 0 to 100, as a number or a string like Chaos Mesh's "25"."""
    number = finite_float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip().rstrip("%"))
        except ValueError:
            number = None
    if number is None or not 0 <= number <= 100:
        raise ChaosSpecError(field, f"must be a percentage from 0 to 100 (a number or a string like '25'); got {value!r}")
    return number


def duration_ns(value: object, field: str, required: bool = False) -> int:
    """Nanoseconds from a Go-style duration like '100ms', '1.5s', '10us', up to the daemon's 60s."""
    if value is None and not required:
        return 0
    match = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    # A float: a number too long for one is inf, out of range rather than an OverflowError.
    nanoseconds = float(match.group(1)) * _DURATION_NS[match.group(2)] if match else math.nan
    if not 0 <= nanoseconds <= MAX_LATENCY_MS * 1e6:
        raise ChaosSpecError(field, f"{'is required: ' if value is None else 'must be '}a duration like '100ms', "
                                    f"'1.5s' or '10us', up to {MAX_LATENCY_MS / 1000:g}s; got {value!r}")
    return int(nanoseconds)


def rate_bytes(value: object, field: str) -> int:
    match = _RATE.fullmatch(value.strip().lower()) if isinstance(value, str) else None
    # A float: a count too long for one is inf, out of range rather than an OverflowError.
    rate = float(match.group(1)) * _RATE_BYTES[match.group(2)] if match else 0.0
    if not 0 < rate <= MAX_RATE:
        raise ChaosSpecError(field, f"{'is required: ' if value is None else 'must be '}{RATE_FORMS}; got {value!r}")
    return max(1, int(rate))


def size_bytes(value: object, field: str) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value < 1 << 32:
        raise ChaosSpecError(field, f"must be a number of bytes from 1 to {(1 << 32) - 1}; got {value!r}")
    return value


class NetworkKind(AppliedKind):
    """A NetworkChaos action: the scope parameters plus the kind's own (``own``)."""

    peer_selection = True  # ``target`` is a second selection, resolved with the run's backend
    own: tuple[str, ...] = ()

    @property
    def parameters(self) -> tuple[str, ...]:  # type: ignore[override]
        return SCOPE_PARAMETERS + self.own

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        checked = super().check_params(params)
        direction = checked.get("direction", "to")
        if not isinstance(direction, str) or direction not in DIRECTIONS:
            raise ChaosSpecError("direction", f"must be one of {', '.join(DIRECTIONS)}; got {direction!r}")
        checked["direction"] = direction
        checked["device"] = check_device(checked.get("device"))
        checked["external_targets"] = check_external_targets(checked.get("external_targets"))
        self.check_direction(direction, "target" in checked, bool(checked["external_targets"]))
        checked.update(self.check_own(params))
        return checked

    def check_direction(self, direction: str, has_target: bool, has_external: bool) -> None:
        """Chaos Mesh's rules for netem and bandwidth actions (partition has its own)."""
        if has_external and direction != "to":
            raise ChaosSpecError("external_targets", f"works only with direction 'to' (got {direction!r}), as in "
                                                     f"Chaos Mesh")
        if direction != "to" and not has_target:
            raise ChaosSpecError("direction", f"{direction!r} needs `target` (a second selection of peers)")

    def check_own(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def build(self, ctx: InjectContext, params: Mapping[str, Any]) -> Message:
        return self.network_message(params, self.scope(ctx, params))

    def network_message(self, params: Mapping[str, Any], scope: pb.NetworkScope) -> Message:
        raise NotImplementedError

    def scope(self, ctx: InjectContext, params: Mapping[str, Any]) -> pb.NetworkScope:
        """The daemon's scope: external targets resolved now, peer targets as addresses or target ids."""
        peers = resolve_external_targets(params["external_targets"])
        peer_ids: list[str] = []
        for peer in ctx.peers:
            if peer.address:
                if f"{peer.address}/32" not in peers:
                    peers.append(f"{peer.address}/32")
            elif peer.container_id not in peer_ids:
                peer_ids.append(peer.container_id)
        if "target" in params and not (peers or peer_ids):
            raise ChaosError(f"{self.name}: the peers selected by target have no address")
        return pb.NetworkScope(device=params["device"] or "", direction=DIRECTIONS[params["direction"]], peers=peers,
                               peer_container_ids=peer_ids, seed=ctx.seed)


def check_device(device: object) -> str | None:
    if device is None:
        return None
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ChaosSpecError("device", f"must be an interface name (1 to 15 letters, digits, '_', '.', '-'), "
                                       f"like 'eth0'; got {device!r}")
    return device


def check_external_targets(targets: object) -> list[str]:
    if targets is None:
        return []
    if isinstance(targets, str) or not isinstance(targets, Sequence):
        raise ChaosSpecError("external_targets", f"must be a list of IPv4 addresses, CIDRs or host names; got {targets!r}")
    checked = []
    for item in targets:
        if not isinstance(item, str):
            raise ChaosSpecError("external_targets", f"holds {item!r}: each must be a string")
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            if not _HOST_NAME.fullmatch(item):
                raise ChaosSpecError("external_targets", f"holds {item!r}, which is neither an IPv4 address or "
                                                         f"CIDR nor a host name") from None
            checked.append(item)
            continue
        if network.version != 4:
            raise ChaosSpecError("external_targets", f"holds {item!r}: only IPv4 is supported")
        checked.append(str(network))
    return checked


def resolve_external_targets(targets: Sequence[str]) -> list[str]:
    """CIDRs for ``targets``, host names resolved now (IPv4), as Chaos Mesh does when the fault is applied."""
    resolved: list[str] = []
    for item in targets:
        try:
            networks = [str(ipaddress.ip_network(item, strict=False))]
        except ValueError:
            try:
                infos = socket.getaddrinfo(item, None, socket.AF_INET)
            except socket.gaierror as err:
                raise ChaosError(f"external_targets: cannot resolve {item!r}: {err.strerror}") from None
            networks = [f"{info[4][0]}/32" for info in infos]
        resolved += [n for n in networks if n not in resolved]
    return resolved


class PercentKind(NetworkKind):
    """A kind whose one parameter is the share of packets it acts on (``percent_field``), as netem's loss,
    duplicate and corrupt, with a correlation Chaos Mesh writes beside it."""

    percent_field = ""
    what = ""  # "dropped", ...

    @property
    def own(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.percent_field, "correlation")

    def check_own(self, params: Mapping[str, Any]) -> dict[str, Any]:
        field = self.percent_field
        if field not in params:
            raise ChaosSpecError(field, f"is required: the percentage of packets {self.what}, like '10'")
        return {field: percent(params[field], field), "correlation": correlation(params)}

    def network_message(self, params: Mapping[str, Any], scope: pb.NetworkScope) -> Message:
        message: Message = getattr(pb, self.message_type)(scope=scope, correlation=params["correlation"])
        setattr(message, self.percent_field, params[self.percent_field])
        return message

    @property
    def message_type(self) -> str:
        return "Network" + self.percent_field.capitalize()
