"""The ChaosDaemon gRPC service: validates each request and dispatches to a fault module."""

from __future__ import annotations

import asyncio
import logging
import re
import weakref

import grpc
from google.protobuf import json_format

from .api.v1 import chaos_daemon_pb2 as pb, chaos_daemon_pb2_grpc as pb_grpc
from .errors import DaemonError, InvalidArgument
from .faults.helloworld import exec_hello_world
from .logs import log
from .nsexec import ChildProcesses
from .runtimes import RuntimeRegistry

MAX_CONTAINER_ID_LEN = 512
_INJECTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


def validate_container_id(container_id: str) -> str:
    if not container_id:
        raise InvalidArgument("container_id is required, e.g. containerd://ID, docker://ID, cri-o://ID or pid://N")
    if len(container_id) > MAX_CONTAINER_ID_LEN:
        raise InvalidArgument(f"container_id is longer than {MAX_CONTAINER_ID_LEN} characters")
    return container_id


def validate_injection(injection: pb.Injection) -> None:
    if injection.id and not _INJECTION_ID.fullmatch(injection.id):
        raise InvalidArgument(
            "injection.id must be 1-128 letters, digits, '_', '.', ':' or '-', starting with a letter or digit"
        )
    if injection.lease.seconds < 0 or injection.lease.nanos < 0:
        raise InvalidArgument("injection.lease must not be negative")


class ChaosDaemonServicer(pb_grpc.ChaosDaemonServicer):
    def __init__(
        self, runtimes: RuntimeRegistry, children: ChildProcesses, exec_timeout_s: float, max_concurrent: int
    ) -> None:
        self._runtimes = runtimes
        self._children = children
        self._exec_timeout_s = exec_timeout_s
        # Bounds how many fault commands run at once; further requests wait.
        self._slots = asyncio.Semaphore(max_concurrent)
        # One probe at a time per target: concurrent probes would list each other.
        self._target_locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()

    def _target_lock(self, pid: int) -> asyncio.Lock:
        lock = self._target_locks.get(pid)
        if lock is None:
            lock = self._target_locks[pid] = asyncio.Lock()
        return lock

    async def ExecHelloWorldChaos(
        self, request: pb.ExecHelloWorldRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExecHelloWorldResponse:
        log(logging.INFO, "ExecHelloWorldChaos", request=json_format.MessageToDict(request))
        try:
            validate_container_id(request.container_id)
            validate_injection(request.injection)
            pid = await asyncio.to_thread(self._runtimes.pid_of, request.container_id)
            async with self._target_lock(pid), self._slots:
                output, rows = await exec_hello_world(
                    self._children, request.container_id, pid, self._exec_timeout_s
                )
        except DaemonError as err:
            log(logging.WARNING, "request failed", rpc="ExecHelloWorldChaos", code=err.code.name, error=err.message)
            await context.abort(err.code, err.message)
        return pb.ExecHelloWorldResponse(
            status=pb.InjectionStatus(
                injection_id=request.injection.id,
                container_id=request.container_id,
                pid=pid,
                state=pb.InjectionStatus.ONE_SHOT,
            ),
            output=output,
            processes=[pb.Process(pid=row.pid, user=row.user, command=row.command) for row in rows],
        )
