"""The ``local`` backend: processes and containers on this machine, one daemon for all.

With no daemon address given, the daemon is started on a private unix socket
the first time an experiment needs it (see ``embedded.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pytest_chaos_daemon.errors import DaemonError
from pytest_chaos_daemon.runtimes import RunningContainer
from pytest_chaos_daemon.runtimes.containerd import ContainerdRuntime
from pytest_chaos_daemon.runtimes.docker import DockerRuntime

from ..errors import ChaosError, ChaosSpecError
from ..model import Target
from ..transport import ClientTls
from .base import check_selector_keys

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

    def __init__(
        self,
        daemon_address: Callable[[], str],
        containerd_socket: str,
        containerd_namespaces: Sequence[str],
        docker_socket: str,
        tls: ClientTls | None = None,
    ) -> None:
        self._daemon_address = daemon_address
        self._containerd_socket = containerd_socket
        self._containerd_namespaces = list(containerd_namespaces)
        self._docker_socket = docker_socket
        self._runtimes: dict[str, ContainerdRuntime | DockerRuntime] = {}
        self._tls = tls
        self._lister: ThreadPoolExecutor | None = None

    def describe(self) -> str:
        return (
            f"local (containerd {self._containerd_socket} namespaces "
            f"{','.join(self._containerd_namespaces)}; docker {self._docker_socket})"
        )

    def close(self) -> None:
        if self._lister is not None:
            self._lister.shutdown()
            self._lister = None
        containerd = self._runtimes.pop("containerd", None)
        if isinstance(containerd, ContainerdRuntime):
            containerd.close()
        self._runtimes.clear()

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
        containers, searched = self._running_containers()
        wanted = selector.get("containers")
        labels = selector.get("labels", {})
        chosen = [
            c for c in containers
            if (wanted is None or any(_names(c, w) for w in wanted))
            and all(c.labels.get(k) == v for k, v in labels.items())
        ]
        if not chosen and not any(ok for _, ok in searched):
            raise ChaosError(
                "no container runtime reachable: " + "; ".join(msg for msg, _ in searched)
            )
        return [[Target(c.container_id, name=c.name)] for c in chosen]

    def daemon_address(self, target: Target) -> str:
        return self._daemon_address()

    def client_tls(self) -> ClientTls | None:
        # None: the private unix socket, or a plaintext daemon the user pointed at.
        return self._tls

    def _running_containers(self) -> tuple[list[RunningContainer], list[tuple[str, bool]]]:
        """Running containers of every reachable local runtime, and what was searched.

        The runtimes are asked at the same time: the selection waits for the slower one, not for both."""
        reachable = []
        searched: list[tuple[str, bool]] = []
        for name, socket_path in (("containerd", self._containerd_socket), ("docker", self._docker_socket)):
            if os.path.exists(socket_path):
                reachable.append((name, socket_path))
            else:
                searched.append((f"{name}: no socket at {socket_path}", False))
        if self._lister is None:
            self._lister = ThreadPoolExecutor(1, "chaos-runtime-list")
        pending = [(name, path, self._lister.submit(self._runtime(name).list_running)) for name, path in reachable[1:]]
        listings = [(name, path, self._listing(self._runtime(name).list_running)) for name, path in reachable[:1]]
        listings += [(name, path, self._listing(future.result)) for name, path, future in pending]
        found: list[RunningContainer] = []
        for name, socket_path, (containers, error) in listings:
            if error is None:
                found.extend(containers)
                searched.append((f"{name} at {socket_path}", True))
            else:
                searched.append((f"{name}: {error}", False))
        return found, searched

    @staticmethod
    def _listing(call: Callable[[], list[RunningContainer]]) -> tuple[list[RunningContainer], str | None]:
        try:
            return call(), None
        except DaemonError as err:
            return [], err.message

    def _runtime(self, name: str) -> ContainerdRuntime | DockerRuntime:
        """The runtime client, made once per session: a gRPC channel costs a connection."""
        if name not in self._runtimes:
            self._runtimes[name] = (
                ContainerdRuntime(self._containerd_socket, self._containerd_namespaces)
                if name == "containerd" else DockerRuntime(self._docker_socket)
            )
        return self._runtimes[name]


def _names(container: RunningContainer, wanted: str) -> bool:
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
