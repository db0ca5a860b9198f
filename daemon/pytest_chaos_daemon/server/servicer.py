"""The ChaosDaemon gRPC service: one request pipeline, shared by every fault kind.

validate -> log -> resolve the target (runtimes/resolver.py: per-runtime pool, bounded in time) ->
refuse what no fault may touch -> hold it by pidfd -> wait for its lock and a
slot (within the request's deadline) -> run the fault -> respond. Every
failure becomes a gRPC status with a message for the user; nothing reaches the
client as UNKNOWN.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2, json_format

from ..api.contract import MAX_LEASE_S
from ..api.v1 import chaos_daemon_pb2 as pb
from ..api.v1 import chaos_daemon_pb2_grpc as pb_grpc
from ..confinement.nsexec import Confiner
from ..confinement.target import HeldTarget
from ..errors import DaemonError, DeadlineExceeded, InvalidArgument, ResourceExhausted
from ..faults import BY_FIELD, fault_for
from ..faults.helloworld import exec_hello_world, source_of
from ..host import cgroups as node
from ..lifecycle import journal
from ..lifecycle.injections import Injections
from ..lifecycle.journal import Record
from ..runtimes import ListingRuntime, RunningContainer, RuntimeRegistry
from ..runtimes.resolver import RUNTIME_LOOKUP_TIMEOUT_S, TargetResolver
from .interceptors import Context
from .logs import log, truncate_fields

MAX_CONTAINER_ID_LEN = 512
# Requests waiting beyond this are refused (RESOURCE_EXHAUSTED) rather than queued.
MAX_PENDING = 2048
# A listing's containers per runtime, beyond which the rest are left out (a response stays well under 4 MiB).
MAX_LISTED_CONTAINERS = 10000
MAX_IDS_PER_CALL = 1000
DEADLINE_MARGIN_S = 0.1
Response = TypeVar("Response")
_INJECTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


@dataclasses.dataclass(frozen=True)
class Limits:
    exec_timeout_s: float = 30.0
    max_concurrent: int = 16
    allow_pid_targets: bool = False


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
    lease = injection.lease
    if lease.seconds < 0 or lease.nanos < 0 or lease.nanos > 999_999_999 or lease.seconds > MAX_LEASE_S:
        raise InvalidArgument(f"injection.lease must be between 0 and {MAX_LEASE_S}s (0: the daemon's default)")


def validate_injection_ids(ids: Sequence[str]) -> list[str]:
    if len(ids) > MAX_IDS_PER_CALL:
        raise InvalidArgument(f"injection_ids: at most {MAX_IDS_PER_CALL} per call; got {len(ids)}")
    for injection_id in ids:
        if not _INJECTION_ID.fullmatch(injection_id):
            raise InvalidArgument(f"injection_ids: {injection_id[:200]!r} is not an injection id "
                                  "(1-128 letters, digits, '_', '.', ':' or '-')")
    return list(ids)


def validate_duration(duration: duration_pb2.Duration) -> float | None:
    seconds = duration.seconds + duration.nanos / 1e9
    if duration.seconds < 0 or duration.nanos < 0 or duration.nanos > 999_999_999 or seconds > MAX_LEASE_S:
        raise InvalidArgument(f"duration must be between 0 and {MAX_LEASE_S}s (0: until recovered)")
    return seconds or None


_STATES = {
    journal.ACTIVE: pb.InjectionStatus.ACTIVE, journal.APPLYING: pb.InjectionStatus.ACTIVE,
    journal.ONE_SHOT: pb.InjectionStatus.ONE_SHOT, journal.RECOVERED: pb.InjectionStatus.RECOVERED,
    journal.EXPIRED: pb.InjectionStatus.EXPIRED, journal.FAILED: pb.InjectionStatus.FAILED,
}


def injection_status(record: Record | None, injection_id: str = "") -> pb.InjectionStatus:
    """The protocol's view of a journal record; UNKNOWN_INJECTION for None."""
    if record is None:
        return pb.InjectionStatus(injection_id=injection_id, state=pb.InjectionStatus.UNKNOWN_INJECTION,
                                  detail="this daemon knows no injection of this id")
    status = pb.InjectionStatus(
        injection_id=record.id, container_id=record.container_id, pid=record.pid, state=_STATES[record.state],
        kind=record.kind, detail=record.detail, owner=record.owner, mechanism=record.mechanism,
        cgroup=node.layout_name(),
    )
    status.applied_at.FromNanoseconds(int(record.applied_at * 1e9))
    if record.live and record.expires_at is not None:
        status.expires_at.FromNanoseconds(int(record.expires_at * 1e9))
    if record.ended_at is not None:
        status.ended_at.FromNanoseconds(int(record.ended_at * 1e9))
    return status


class ChaosDaemonServicer(pb_grpc.ChaosDaemonServicer):
    def __init__(self, runtimes: RuntimeRegistry, confiner: Confiner, limits: Limits, injections: Injections,
                 info: Callable[[], Awaitable[pb.GetInfoResponse]]) -> None:
        self._runtimes = runtimes
        self._info = info
        self._confiner = confiner
        self._limits = limits
        self._injections = injections
        # Bounds how many fault commands run at once; further requests wait.
        self._slots = asyncio.Semaphore(limits.max_concurrent)
        self._pending = 0
        # One probe at a time per target: concurrent probes would list each other.
        self._target_locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()
        self._resolver = TargetResolver(runtimes, limits.allow_pid_targets)

    def close(self) -> None:
        self._resolver.close()

    async def GetInfo(self, request: pb.GetInfoRequest, context: Context) -> pb.GetInfoResponse:
        return await self._handle(_Call("GetInfo", request, context), self._get_info)

    async def _get_info(self, call: _Call) -> pb.GetInfoResponse:
        call.log_request()
        return await self._info()

    async def ExecHelloWorldChaos(
        self, request: pb.ExecHelloWorldRequest, context: Context
    ) -> pb.ExecHelloWorldResponse:
        return await self._handle(_Call("ExecHelloWorldChaos", request, context), self._hello_world)

    async def _hello_world(self, call: _Call) -> pb.ExecHelloWorldResponse:
        request: pb.ExecHelloWorldRequest = call.request
        validate_container_id(request.container_id)
        validate_injection(request.injection)
        source = source_of(request.source)
        call.log_request(source=source)
        async with self._target(request.container_id, call.context) as target:
            listing = await exec_hello_world(self._confiner, target, source, self._limits.exec_timeout_s)
        return pb.ExecHelloWorldResponse(
            status=pb.InjectionStatus(
                injection_id=request.injection.id,
                container_id=request.container_id,
                pid=target.pid,
                state=pb.InjectionStatus.ONE_SHOT,
                mechanism=listing.mechanism,
                cgroup=node.layout_name(),
            ),
            output=listing.output,
            processes=[pb.Process(pid=row.pid, user=row.user, command=row.command) for row in listing.processes],
            truncated=listing.truncated,
        )

    async def Apply(self, request: pb.ApplyRequest, context: Context) -> pb.ApplyResponse:
        return await self._handle(_Call("Apply", request, context), self._apply)

    async def _apply(self, call: _Call) -> pb.ApplyResponse:
        request: pb.ApplyRequest = call.request
        validate_container_id(request.container_id)
        validate_injection(request.injection)
        if not request.injection.id:
            raise InvalidArgument("injection.id is required: the handle Recover and Renew use")
        field = request.WhichOneof("fault")
        if field is None or field not in BY_FIELD:
            raise InvalidArgument(f"no fault given; accepted: {', '.join(BY_FIELD)}")
        fault = fault_for(field, request)
        params = fault.check(request)
        duration_s = validate_duration(request.duration)
        call.log_request(kind=fault.kind)
        async with self._target(request.container_id, call.context) as target:
            record, output = await self._injections.apply(
                fault.kind, request.container_id, target, params, request.injection, duration_s
            )
        return pb.ApplyResponse(
            status=injection_status(record),
            processes=[pb.Process(pid=row.pid, user=row.user, command=row.command) for row in output.processes],
            output=output.text,
            truncated=output.truncated,
        )

    async def Recover(self, request: pb.RecoverRequest, context: Context) -> pb.RecoverResponse:
        return await self._handle(_Call("Recover", request, context), self._recover)

    async def _recover(self, call: _Call) -> pb.RecoverResponse:
        ids = validate_injection_ids(call.request.injection_ids)
        call.log_request()
        records = [await self._injections.recover(injection_id) for injection_id in ids]
        return pb.RecoverResponse(injections=[injection_status(r, i) for r, i in zip(records, ids, strict=False)])

    async def Renew(self, request: pb.RenewRequest, context: Context) -> pb.RenewResponse:
        return await self._handle(_Call("Renew", request, context), self._renew)

    async def _renew(self, call: _Call) -> pb.RenewResponse:
        ids = validate_injection_ids(call.request.injection_ids)
        validate_injection(pb.Injection(lease=call.request.lease))
        records = self._injections.renew(ids, call.request.lease)
        return pb.RenewResponse(injections=[injection_status(r, i) for r, i in zip(records, ids, strict=False)])

    async def ListInjections(
        self, request: pb.ListInjectionsRequest, context: Context
    ) -> pb.ListInjectionsResponse:
        return await self._handle(_Call("ListInjections", request, context), self._list)

    async def _list(self, call: _Call) -> pb.ListInjectionsResponse:
        records = self._injections.listing(call.request.include_ended)
        return pb.ListInjectionsResponse(injections=[injection_status(r) for r in records])

    async def ListContainers(
        self, request: pb.ListContainersRequest, context: Context
    ) -> pb.ListContainersResponse:
        return await self._handle(_Call("ListContainers", request, context), self._list_containers)

    async def _list_containers(self, call: _Call) -> pb.ListContainersResponse:
        runtimes = self._runtimes.listing()
        # Every runtime at once, each in its own pool: the answer waits for the slowest, not for their sum.
        listings = await asyncio.gather(*(self._listing(name, runtime) for name, runtime in runtimes.items()))
        response = pb.ListContainersResponse()
        for (name, runtime), (containers, error) in zip(runtimes.items(), listings, strict=True):
            response.runtimes.add(runtime=name, endpoint=runtime.endpoint, reachable=error is None, error=error or "")
            for container in containers[:MAX_LISTED_CONTAINERS]:
                response.containers.add(container_id=container.container_id, name=container.name,
                                        labels=container.labels)
        return response

    async def _listing(self, name: str, runtime: ListingRuntime) -> tuple[list[RunningContainer], str | None]:
        if not os.path.exists(runtime.endpoint):
            return [], f"no socket at {runtime.endpoint}"
        try:
            return await self._resolver.ask(name, runtime.list_running), None
        except TimeoutError:
            return [], f"it did not answer within {RUNTIME_LOOKUP_TIMEOUT_S:g}s"
        except DaemonError as err:
            return [], err.message

    async def _handle(self, call: _Call, handler: Callable[[_Call], Awaitable[Response]]) -> Response:
        """Run ``handler``, turning every failure into a status with a message, logged."""
        failure: tuple[grpc.StatusCode, str] | None = None
        self._pending += 1
        try:
            if self._pending > MAX_PENDING:
                raise ResourceExhausted(f"the daemon has {self._pending - 1} requests in progress; retry later")
            return await handler(call)
        except DaemonError as err:
            failure = (err.code, err.message)
        except asyncio.CancelledError:
            log(logging.INFO, "request cancelled", rpc=call.rpc, peer=call.peer)
            raise
        except Exception as err:  # a bug: say so, keep the details in the log
            log(logging.ERROR, "request failed unexpectedly", rpc=call.rpc, peer=call.peer, exc_info=err)
            failure = (grpc.StatusCode.INTERNAL, f"internal error in the daemon ({type(err).__name__}); see its log")
        finally:
            self._pending -= 1
        log(logging.WARNING, "request failed", rpc=call.rpc, peer=call.peer, code=failure[0].name, error=failure[1])
        await call.context.abort(*failure)
        raise AssertionError("unreachable: abort raises")

    @contextlib.asynccontextmanager
    async def _target(self, container_id: str, context: Context) -> AsyncIterator[HeldTarget]:
        """Resolve, check and hold the target; hold its lock and a slot while the fault runs."""
        target = await self._resolver.hold(container_id)
        with target:
            lock = self._target_locks.get(target.pid)
            if lock is None:
                lock = self._target_locks[target.pid] = asyncio.Lock()
            async with _within_deadline(lock, context, f"waiting for another fault on {container_id}"):
                async with _within_deadline(self._slots, context, "waiting for a free slot"):
                    yield target


class _Call:
    """One request as the pipeline sees it: its peer, for logs, and the response."""

    def __init__(self, rpc: str, request: Any, context: Context) -> None:
        self.rpc = rpc
        self.request = request
        self.context = context
        self.peer = context.peer()
        auth = context.auth_context()
        name = next(iter(auth.get("x509_common_name") or ()), None)
        self.subject = name.decode(errors="replace") if name is not None else None

    def log_request(self, **extra: Any) -> None:
        fields = json_format.MessageToDict(self.request, preserving_proto_field_name=True)
        subject: dict[str, Any] = {"subject": self.subject} if self.subject else {}
        log(logging.INFO, self.rpc, request=truncate_fields(fields), peer=self.peer, **subject, **extra)


@contextlib.asynccontextmanager
async def _within_deadline(
    primitive: asyncio.Lock | asyncio.Semaphore, context: Context, waiting_for: str
) -> AsyncIterator[None]:
    # Give up a little before the client does, so it hears why.
    remaining = context.time_remaining()
    if remaining is not None:
        remaining = max(remaining - DEADLINE_MARGIN_S, 0.0)
    try:
        await asyncio.wait_for(primitive.acquire(), remaining)
    except TimeoutError:
        raise DeadlineExceeded(f"the request's deadline passed while {waiting_for}") from None
    try:
        yield
    finally:
        primitive.release()
