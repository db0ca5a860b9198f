"""CRI (CRI-O, or any CRI server): ContainerStatus with verbose info carries the PID."""

from __future__ import annotations

import json
import signal
from typing import TYPE_CHECKING

import grpc

from ..errors import FailedPrecondition, NotFound, Unavailable
from ..runtime_api import cri_runtime_pb2 as cri_pb2
from ..runtime_api import cri_runtime_pb2_grpc as cri_grpc
from .base import check_container_ref

if TYPE_CHECKING:
    from ..confinement.target import HeldTarget

DEFAULT_SOCKET = "/var/run/crio/crio.sock"
CALL_TIMEOUT_S = 10.0


class CriRuntime:
    """Resolves ``cri-o://ID`` through the CRI RuntimeService."""

    prefix = "cri-o"
    # The CRI has no kill call (StopContainer waits out a grace period): the
    # container's init gets SIGKILL, which ends every process of its pid namespace.
    kill_mechanism = "SIGKILL to the container's init process (pidfd)"

    def __init__(self, socket_path: str = DEFAULT_SOCKET) -> None:
        self.endpoint = socket_path
        self._channel = grpc.insecure_channel(f"unix://{socket_path}")
        self._runtime = cri_grpc.RuntimeServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def pid_of(self, ref: str) -> int:
        check_container_ref(self.prefix, ref)
        request = cri_pb2.ContainerStatusRequest(container_id=ref, verbose=True)
        try:
            reply = self._runtime.ContainerStatus(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"container cri-o://{ref} not found by the CRI runtime at {self.endpoint}") from None
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable(
                    f"the CRI runtime is unreachable at {self.endpoint}: {err.details()} "
                    "(is CRI-O running? set the socket with --crio-socket)"
                ) from None
            raise
        if reply.status.state != cri_pb2.CONTAINER_RUNNING:
            state = cri_pb2.ContainerState.Name(reply.status.state).removeprefix("CONTAINER_").lower()
            raise FailedPrecondition(f"container cri-o://{ref} is {state}, not running")
        try:
            pid = int(json.loads(reply.info["info"])["pid"])
        except (KeyError, ValueError, TypeError):
            raise FailedPrecondition(
                f"the CRI runtime at {self.endpoint} gave no PID for cri-o://{ref} in its verbose status"
            ) from None
        if pid <= 0:
            raise FailedPrecondition(f"container cri-o://{ref} has no process")
        return pid

    def kill(self, ref: str, target: HeldTarget) -> None:
        check_container_ref(self.prefix, ref)
        target.send_signal(signal.SIGKILL)
