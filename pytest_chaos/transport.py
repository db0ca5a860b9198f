"""Talking to a chaos daemon over gRPC."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NoReturn

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .api.contract import TLS_SERVER_NAME, grpc_target
from .api.v1 import chaos_daemon_pb2 as pb
from .api.v1 import chaos_daemon_pb2_grpc as pb_grpc
from .defaults import DEFAULT_RPC_TIMEOUT_S
from .errors import ChaosError, DaemonUnreachable

# Called with the client and each ApplyRequest before it is sent; raises ChaosError to refuse it (handshake.py).
Preflight = Callable[["DaemonClient", pb.ApplyRequest], None]

@dataclasses.dataclass(frozen=True)
class ClientTls:
    """Client certificate, key and the CA the daemon's certificate must chain to (mutual TLS)."""

    cert: bytes
    key: bytes
    ca: bytes
    server_name: str = TLS_SERVER_NAME


class DaemonClient:
    """One daemon's API, with errors turned into ``ChaosError`` naming the daemon."""

    def __init__(self, address: str, timeout_s: float = DEFAULT_RPC_TIMEOUT_S, tls: ClientTls | None = None,
                 preflight: Preflight | None = None) -> None:
        self.address = address
        self._timeout_s = timeout_s
        self._preflight = preflight
        target = grpc_target(address)
        if tls:
            credentials = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)
            options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target)
        self._stub = pb_grpc.ChaosDaemonStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def is_serving(self, timeout_s: float = 2.0) -> bool:
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def get_info(self) -> pb.GetInfoResponse | None:
        """The daemon's version, kinds and node (GetInfo); None from a daemon that predates the call."""
        try:
            reply: pb.GetInfoResponse = self._stub.GetInfo(pb.GetInfoRequest(), timeout=self._timeout_s)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            self._raise(err, "GetInfo", "the daemon")
        return reply

    def exec_hello_world(
        self, container_id: str, injection_id: str = "", source: pb.ProcessListSource = pb.PROCESS_LIST_SOURCE_PS
    ) -> pb.ExecHelloWorldResponse:
        request = pb.ExecHelloWorldRequest(
            container_id=container_id, injection=pb.Injection(id=injection_id), source=source
        )
        reply: pb.ExecHelloWorldResponse = self._call("ExecHelloWorldChaos", self._stub.ExecHelloWorldChaos, request,
                                                      container_id)
        return reply

    def apply(
        self, container_id: str, injection_id: str, fault: dict[str, Any], lease_s: float, owner: str,
        duration_s: float | None = None,
    ) -> pb.ApplyResponse:
        """Apply one fault (``fault``: the ApplyRequest oneof field and its message) to one target."""
        request = pb.ApplyRequest(container_id=container_id, injection=_injection(injection_id, lease_s, owner), **fault)
        if duration_s:
            request.duration.FromNanoseconds(int(duration_s * 1e9))
        if self._preflight is not None:
            self._preflight(self, request)
        reply: pb.ApplyResponse = self._call("Apply", self._stub.Apply, request, container_id)
        return reply

    def recover(self, injection_ids: list[str]) -> list[pb.InjectionStatus]:
        reply = self._call("Recover", self._stub.Recover, pb.RecoverRequest(injection_ids=injection_ids),
                           f"{len(injection_ids)} injection(s)")
        return list(reply.injections)

    def renew(self, injection_ids: list[str], lease_s: float) -> list[pb.InjectionStatus]:
        request = pb.RenewRequest(injection_ids=injection_ids)
        request.lease.FromNanoseconds(int(lease_s * 1e9))
        return list(self._call("Renew", self._stub.Renew, request, f"{len(injection_ids)} injection(s)").injections)

    def list_injections(self, include_ended: bool = False) -> list[pb.InjectionStatus]:
        request = pb.ListInjectionsRequest(include_ended=include_ended)
        return list(self._call("ListInjections", self._stub.ListInjections, request, "the daemon").injections)

    def list_containers(self) -> pb.ListContainersResponse:
        reply: pb.ListContainersResponse = self._call(
            "ListContainers", self._stub.ListContainers, pb.ListContainersRequest(), "its node")
        return reply

    def _call(self, name: str, method: Callable[..., Any], request: Message, container_id: str) -> Any:
        try:
            return method(request, timeout=self._timeout_s)
        except grpc.RpcError as err:
            self._raise(err, name, container_id)

    def _raise(self, err: grpc.RpcError, name: str, container_id: str) -> NoReturn:
        code = err.code()
        if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (err.details() or "").lower():
            raise DaemonUnreachable(
                f"chaos daemon unreachable at {self.address}: {err.details()} "
                "(is pytest-chaos-daemon running there? check --chaos-daemon)"
            ) from None
        raise ChaosError(
            f"chaos daemon at {self.address}: {name} on {container_id} failed with "
            f"{code.name if code else 'UNKNOWN'}: {err.details()}"
        ) from None


def _injection(injection_id: str, lease_s: float, owner: str) -> pb.Injection:
    injection = pb.Injection(id=injection_id, owner=owner)
    injection.lease.FromNanoseconds(int(lease_s * 1e9))
    return injection
