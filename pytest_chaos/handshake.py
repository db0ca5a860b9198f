"""The version handshake: what a daemon knows, asked once, and a refusal when it lacks what a request needs.

protobuf drops a field it does not know: a daemon older than the plugin would
apply a fault without a parameter the test set, and the test would pass under
other chaos than it asked for. So before its first Apply to a daemon the
plugin asks it (GetInfo; once per daemon address in a session) which kinds it
applies and which request fields each reads, and refuses a request that needs
what the daemon lacks, naming both versions and what is missing. A daemon
without GetInfo predates the handshake (0.2.0) and is refused too. Which
fields a request sets is the request itself (``contract.set_field_paths``):
no list to keep up to date beside the kinds.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence

from .api.contract import set_field_paths
from .api.v1 import chaos_daemon_pb2 as pb
from .api.version import VERSION
from .errors import ChaosError
from .transport import DaemonClient

PLUGIN, DAEMON = "pytest-chaos", "pytest-chaos-daemon"
HANDSHAKE_SINCE = "0.2.0"  # the first daemon with GetInfo
_FAULT_FIELDS = frozenset(field.name for field in pb.ApplyRequest.DESCRIPTOR.oneofs_by_name["fault"].fields)


class DaemonSkew(ChaosError):
    """The daemon lacks a kind or a field the request needs (or the handshake itself): refused, nothing applied."""


@dataclasses.dataclass(frozen=True)
class KindInfo:
    kind: str
    field: str
    fields: frozenset[str]
    mechanisms: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class DaemonInfo:
    """One daemon's answer to GetInfo."""

    address: str
    version: str
    kinds: dict[str, KindInfo]  # by ApplyRequest field
    apply_fields: frozenset[str]
    cgroup: str
    netem: bool
    netem_missing: str
    kernel: str
    runtimes: tuple[tuple[str, bool], ...]  # (runtime, reachable)
    kind_names: frozenset[str] = frozenset()  # every kind: several may share a field (the TCP toxics)

    @classmethod
    def from_reply(cls, address: str, reply: pb.GetInfoResponse) -> DaemonInfo:
        return cls(
            address=address, version=reply.version,
            kinds={k.field: KindInfo(k.kind, k.field, frozenset(k.fields), tuple(k.mechanisms)) for k in reply.kinds},
            apply_fields=frozenset(reply.apply_fields), cgroup=reply.cgroup, netem=reply.netem,
            netem_missing=reply.netem_missing, kernel=reply.kernel,
            runtimes=tuple((r.runtime, r.reachable) for r in reply.runtimes),
            kind_names=frozenset(k.kind for k in reply.kinds),
        )

    @property
    def name(self) -> str:
        """``pytest-chaos-daemon 0.2.0``: what a report shows."""
        return f"{DAEMON} {self.version}"

    def describe(self) -> str:
        """One line: version, cgroup layout, netem, kernel and the runtimes that answered."""
        netem = "netem" if self.netem else f"no netem ({self.netem_missing})"
        reached = ", ".join(name for name, reachable in self.runtimes if reachable) or "none"
        return f"{self.name}; {self.cgroup}; {netem}; kernel {self.kernel}; runtimes reached: {reached}"


def fetch(client: DaemonClient) -> DaemonInfo:
    """Ask the daemon; DaemonSkew for one that predates the handshake."""
    reply = client.get_info()
    if reply is None:
        raise DaemonSkew(
            f"daemon at {client.address} predates the version handshake: it answers UNIMPLEMENTED for GetInfo, "
            f"so it is {DAEMON} older than {HANDSHAKE_SINCE}; this plugin is {PLUGIN} {VERSION} and cannot tell "
            f"which kinds and fields that daemon knows, so nothing was applied; {_upgrade()}"
        )
    return DaemonInfo.from_reply(client.address, reply)


def check_kind(info: DaemonInfo, kind: str) -> None:
    """DaemonSkew unless the daemon applies ``kind`` (the plugin's name: "network-delay")."""
    names = info.kind_names | {k.kind for k in info.kinds.values()}
    if kind not in names:
        known = ", ".join(sorted(names))
        raise DaemonSkew(f'{_versions(info)}: the daemon does not know kind "{kind}" (it knows: {known}); '
                         f"{_upgrade()}")


def check_request(info: DaemonInfo, request: pb.ApplyRequest, kind: str = "") -> None:
    """DaemonSkew unless the daemon knows the request's kind and every field it sets."""
    field = request.WhichOneof("fault")
    if field is None:
        return  # nothing to compare: the daemon refuses it itself
    known = info.kinds.get(field)
    if known is None:
        check_kind(info, kind or field)
        return
    lacking = [path for path in set_field_paths(getattr(request, field)) if path not in known.fields]
    # The request's own fields (an injection's, a duration) are named as ApplyRequest's.
    lacking += [f"ApplyRequest.{path}" for path in set_field_paths(request, skip=_FAULT_FIELDS)
                if path not in info.apply_fields]
    if lacking:
        raise DaemonSkew(
            f"{_versions(info)}: the daemon does not know field{'s' if len(lacking) > 1 else ''} "
            f'{_quoted(lacking)} of kind "{known.kind}", which this experiment sets (it would drop '
            f"{'them' if len(lacking) > 1 else 'it'} unread and apply other chaos than asked); {_upgrade()}"
        )


class Handshakes:
    """The session's handshakes: each daemon address asked once, its answer kept for the session."""

    def __init__(self) -> None:
        self._infos: dict[str, DaemonInfo] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def info(self, client: DaemonClient) -> DaemonInfo:
        """The daemon's answer, asked at first contact; raises DaemonSkew (or ChaosError: unreachable).
        A failure is not kept: the next contact asks again."""
        with self._lock:
            lock = self._locks.setdefault(client.address, threading.Lock())
        with lock:  # targets on one daemon are injected at once: one of them asks
            if client.address not in self._infos:
                self._infos[client.address] = fetch(client)
            return self._infos[client.address]

    def check(self, client: DaemonClient, request: pb.ApplyRequest) -> None:
        """``DaemonClient``'s preflight: refuse a request the daemon would not fully understand."""
        check_request(self.info(client), request)

    def check_kind(self, client: DaemonClient, kind: str) -> None:
        check_kind(self.info(client), kind)

    def known(self, address: str) -> DaemonInfo | None:
        """The answer of the daemon at ``address``, if it was asked."""
        return self._infos.get(address)


def _versions(info: DaemonInfo) -> str:
    return f"daemon at {info.address} is {info.name}; this plugin is {PLUGIN} {VERSION}"


def _upgrade() -> str:
    return (f"upgrade the daemon to {DAEMON} {VERSION} (they release together: pip install "
            f"'{DAEMON}=={VERSION}', or in a cluster the DaemonSet's image of {VERSION})")


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f'"{name}"' for name in names)
