"""containerd: containers and tasks through containerd's own gRPC API."""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from ..api.contract import CONTAINERD_SOCKET
from ..errors import FailedPrecondition, NotFound, Unavailable
from ..runtime_api import (
    containerd_containers_pb2 as containers_pb2,
)
from ..runtime_api import (
    containerd_containers_pb2_grpc as containers_grpc,
)
from ..runtime_api import (
    containerd_namespaces_pb2 as namespaces_pb2,
)
from ..runtime_api import (
    containerd_namespaces_pb2_grpc as namespaces_grpc,
)
from ..runtime_api import (
    containerd_tasks_pb2 as tasks_pb2,
)
from ..runtime_api import (
    containerd_tasks_pb2_grpc as tasks_grpc,
)
from .base import RunningContainer, check_container_ref

if TYPE_CHECKING:
    from ..confinement.target import HeldTarget

DEFAULT_SOCKET = CONTAINERD_SOCKET
DEFAULT_NAMESPACE = "k8s.io"
ALL_NAMESPACES = "*"
# Docker Engine, when run on the system containerd, mirrors its containers
# into this namespace without their Docker names or labels: the Docker client
# reports them properly, so a scan of all namespaces leaves this one out.
DOCKER_MIRROR_NAMESPACE = "moby"
CALL_TIMEOUT_S = 10.0
REMEMBERED_CONTAINERS = 4096


class ContainerdRuntime:
    """Resolves ``containerd://ID`` by looking ID up in the configured namespaces."""

    prefix = "containerd"
    kill_mechanism = "containerd task kill (SIGKILL)"

    def __init__(
        self, socket_path: str = DEFAULT_SOCKET, namespaces: Sequence[str] = (DEFAULT_NAMESPACE,)
    ) -> None:
        self.endpoint = socket_path
        self._namespaces = tuple(namespaces)
        self._channel = grpc.insecure_channel(f"unix://{socket_path}")
        self._containers = containers_grpc.ContainersStub(self._channel)
        self._tasks = tasks_grpc.TasksStub(self._channel)
        self._namespaces_api = namespaces_grpc.NamespacesStub(self._channel)
        self._labels: dict[str, dict[str, dict[str, str]]] = {}  # namespace -> container id -> labels
        # A container's namespace never changes: found once, each lookup after is one call, not one per namespace.
        self._namespace_by_id: dict[str, str] = {}

    def close(self) -> None:
        self._channel.close()

    def pid_of(self, ref: str) -> int:
        check_container_ref(self.prefix, ref)
        remembered = self._namespace_by_id.get(ref)
        if remembered is not None:
            try:
                return self._running_pid(ref, remembered)
            except (NotFound, FailedPrecondition):
                self._namespace_by_id.pop(ref, None)  # gone from there: search every namespace again
        return self._running_pid(ref, self._namespace_of(ref))

    def kill(self, ref: str, target: HeldTarget) -> None:
        check_container_ref(self.prefix, ref)
        namespace = self._namespace_of(ref)
        target.check_alive()  # the task the daemon resolved is still the one running
        request = tasks_pb2.KillRequest(container_id=ref, signal=int(signal.SIGKILL), all=True)
        try:
            self._call(self._tasks.Kill, request, namespace)
        except NotFound:
            raise FailedPrecondition(
                f"container containerd://{ref} (namespace {namespace}) has no running task"
            ) from None
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            raise FailedPrecondition(
                f"containerd refused to kill containerd://{ref} (namespace {namespace}): {err.details()}"
            ) from None

    def namespaces(self) -> list[str]:
        if ALL_NAMESPACES not in self._namespaces:
            return list(self._namespaces)
        reply = self._call(self._namespaces_api.List, namespaces_pb2.ListNamespacesRequest(), "")
        return sorted(ns.name for ns in reply.namespaces if ns.name != DOCKER_MIRROR_NAMESPACE)

    def list_running(self) -> list[RunningContainer]:
        """Every running container of the namespaces, sorted by id within each (containerd's own order).

        The namespaces are asked at once, one round trip for all. A container's
        labels are set when it is created, so they are listed only for ids not
        seen before; the running set itself is asked every time.
        """
        namespaces = self.namespaces()
        running: dict[str, set[str]] = {}
        tasks = self._call_each(self._tasks.List, tasks_pb2.ListTasksRequest(), namespaces)
        for namespace, reply in zip(namespaces, tasks, strict=True):
            # containerd 1.6 fills a listed task's `id` (its container's id) and leaves container_id empty.
            running[namespace] = {t.container_id or t.id for t in reply.tasks if t.status == tasks_pb2.RUNNING}
        unlabelled = [ns for ns, ids in running.items() if ids - self._labels.get(ns, {}).keys()]
        listings = self._call_each(self._containers.List, containers_pb2.ListContainersRequest(), unlabelled)
        for namespace, listing in zip(unlabelled, listings, strict=True):
            self._labels[namespace] = {c.id: dict(c.labels) for c in listing.containers}
        return [
            RunningContainer(container_id=f"containerd://{ref}", name=ref, labels=self._labels[namespace][ref])
            for namespace, ids in running.items()
            for ref in sorted(ids)
            if ref in self._labels.get(namespace, {})  # a task whose container was deleted as it was listed
        ]

    def _namespace_of(self, ref: str) -> str:
        if (remembered := self._namespace_by_id.get(ref)) is not None:
            return remembered
        for namespace in self.namespaces():
            try:
                self._call(self._containers.Get, containers_pb2.GetContainerRequest(id=ref), namespace)
            except NotFound:
                continue
            if len(self._namespace_by_id) >= REMEMBERED_CONTAINERS:
                self._namespace_by_id.clear()
            self._namespace_by_id[ref] = namespace
            return namespace
        raise NotFound(
            f"container containerd://{ref} not found in containerd namespace(s) "
            f"{', '.join(self.namespaces()) or '(none)'} at {self.endpoint}"
        )

    def _running_pid(self, ref: str, namespace: str) -> int:
        try:
            reply = self._call(self._tasks.Get, tasks_pb2.GetRequest(container_id=ref), namespace)
        except NotFound:
            raise FailedPrecondition(
                f"container containerd://{ref} (namespace {namespace}) has no running task"
            ) from None
        process = reply.process
        if process.status != tasks_pb2.RUNNING or process.pid == 0:
            state = tasks_pb2.Status.Name(process.status).lower()
            raise FailedPrecondition(
                f"container containerd://{ref} (namespace {namespace}) is {state}, not running"
            )
        return int(process.pid)

    def _call(self, method: Callable[..., Any], request: Any, namespace: str) -> Any:
        try:
            return method(request, metadata=_namespaced(namespace), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as err:
            raise self._mapped(err) from None

    def _call_each(self, method: Any, request: Any, namespaces: Sequence[str]) -> list[Any]:
        """``method`` in every namespace, all in flight at once: one round trip instead of one per namespace."""
        calls = [method.future(request, metadata=_namespaced(ns), timeout=CALL_TIMEOUT_S) for ns in namespaces]
        replies = []
        for call in calls:
            try:
                replies.append(call.result())
            except grpc.RpcError as err:
                raise self._mapped(err) from None
        return replies

    def _mapped(self, err: grpc.RpcError) -> Exception:
        code = err.code()
        if code == grpc.StatusCode.NOT_FOUND:
            return NotFound(err.details() or "not found")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return Unavailable(
                f"containerd is unreachable at {self.endpoint}: {err.details()} "
                "(is containerd running? set the socket with --containerd-socket)"
            )
        return err


def _namespaced(namespace: str) -> tuple[tuple[str, str], ...]:
    return (("containerd-namespace", namespace),) if namespace else ()
