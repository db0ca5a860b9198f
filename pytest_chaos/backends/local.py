"""The ``local`` backend: processes and containers on this machine, one daemon for all.

With no daemon address given, the daemon is started on a private unix socket
when the first chaos test is collected (see ``embedded.py``). The daemon
lists the running containers (its ListContainers call) as it resolves them:
the plugin never talks to a container runtime itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ChaosError, ChaosSpecError
from ..model import Target
from .base import PodApi, check_selector_keys

if TYPE_CHECKING:  # gRPC loads with the first call to the daemon, not with the backend
    from ..api.v1 import chaos_daemon_pb2 as pb
    from ..transport import ClientTls, DaemonClient

SELECTOR_KEYS = {
    "pids": "list of host PIDs of local processes",
    "containers": "list of container ids or names (local containerd and Docker)",
    "labels": "{key: value} that a local container's labels must all match",
}
# Docker prints ids shortened to 12 characters; accept a prefix that long or longer.
MIN_ID_PREFIX = 12


class LocalBackend:
    name = "local"
    selector_keys = SELECTOR_KEYS

    def __init__(self, daemon_address: Callable[[], str], tls: ClientTls | None = None, runtimes: str = "") -> None:
        """``runtimes``: what the daemon lists, for the run's header (its sockets and namespaces)."""
        self._daemon_address = daemon_address
        self._tls = tls
        self._runtimes = runtimes
        self._client: DaemonClient | None = None

    def describe(self) -> str:
        return f"local ({self._runtimes})" if self._runtimes else "local"

    def pod_api(self) -> PodApi | None:
        return None  # processes and containers, no pods

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def check_selector(self, selector: Mapping[str, Any], container_names: Sequence[str] | None) -> dict[str, Any]:
        if container_names is not None:
            raise ChaosSpecError(
                "container_names", "applies to Kubernetes pods (--chaos-backend=kubernetes); "
                "the local backend selects containers with the 'containers' selector"
            )
        check_selector_keys(selector, SELECTOR_KEYS, self.name)
        checked: dict[str, Any] = {}
        if "pids" in selector:
            if set(selector) != {"pids"}:
                raise ChaosSpecError("selector.pids", "cannot be combined with 'containers' or 'labels'")
            pids = selector["pids"]
            if not _is_list(pids) or not pids or not all(_is_pid(p) for p in pids):
                raise ChaosSpecError("selector.pids", f"must be a non-empty list of positive integers; got {pids!r}")
            checked["pids"] = [int(p) for p in pids]
        if "containers" in selector:
            names = selector["containers"]
            if not _is_list(names) or not names or not all(isinstance(n, str) and n for n in names):
                raise ChaosSpecError(
                    "selector.containers", f"must be a non-empty list of container ids or names; got {names!r}"
                )
            checked["containers"] = list(names)
        if "labels" in selector:
            labels = selector["labels"]
            if not isinstance(labels, Mapping) or not labels or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
            ):
                raise ChaosSpecError("selector.labels", f"must be a non-empty {{str: str}} mapping; got {labels!r}")
            checked["labels"] = dict(labels)
        return checked

    def candidates(self, selector: Mapping[str, Any], container_names: Sequence[str] | None) -> list[list[Target]]:
        if "pids" in selector:
            return [[Target(f"pid://{pid}")] for pid in selector["pids"] if _process_exists(pid)]
        listing = self._daemon().list_containers()
        wanted = selector.get("containers")
        labels = selector.get("labels", {})
        chosen = [
            c for c in listing.containers
            if (wanted is None or any(_names(c, w) for w in wanted))
            and all(c.labels.get(k) == v for k, v in labels.items())
        ]
        if not chosen and not any(r.reachable for r in listing.runtimes):
            raise ChaosError(
                "no container runtime reachable: "
                + "; ".join(f"{r.runtime} at {r.endpoint}: {r.error}" for r in listing.runtimes)
            )
        return [[Target(c.container_id, name=c.name)] for c in chosen]

    def daemon_address(self, target: Target, refresh: bool = False) -> str:
        return self._daemon_address()

    def client_tls(self) -> ClientTls | None:
        # None: the private unix socket, or a plaintext daemon the user pointed at.
        return self._tls

    def _daemon(self) -> DaemonClient:
        """The daemon lists the containers: it is the one that talks to the runtimes. One channel per run."""
        from ..transport import DaemonClient

        address = self._daemon_address()
        if self._client is None or self._client.address != address:
            if self._client is not None:
                self._client.close()
            self._client = DaemonClient(address, tls=self._tls)
        return self._client


def _names(container: pb.RunningContainer, wanted: str) -> bool:
    ref = container.container_id.partition("://")[2]
    if wanted in (container.container_id, ref, container.name):
        return True
    return len(wanted) >= MIN_ID_PREFIX and ref.startswith(wanted)


def _is_list(value: object) -> bool:
    return isinstance(value, (list, tuple))


def _is_pid(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _process_exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")
