"""Serving the daemon: the ChaosDaemon service plus gRPC health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import stat

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .api.v1 import chaos_daemon_pb2 as pb, chaos_daemon_pb2_grpc as pb_grpc
from .logs import log
from .nsexec import ChildProcesses
from .runtimes import RuntimeRegistry
from .servicer import ChaosDaemonServicer

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ChaosDaemon"].full_name
# The name in the daemons' certificates (pytest-chaos-daemon-certs); clients
# check it whatever address they dial (pod IP, port-forward relay).
TLS_SERVER_NAME = "chaos-daemon.pytest-chaos.local"


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """Server certificate and key, and the CA that client certificates must chain to."""

    cert: str
    key: str
    client_ca: str

    def credentials(self) -> grpc.ServerCredentials:
        def read(path: str) -> bytes:
            with open(path, "rb") as f:
                return f.read()

        return grpc.ssl_server_credentials(
            [(read(self.key), read(self.cert))], root_certificates=read(self.client_ca), require_client_auth=True
        )


def grpc_target(listen: str) -> str:
    """``unix:///path`` stays; ``tcp://host:port`` and ``host:port`` become ``host:port``."""
    if listen.startswith("unix://"):
        return listen
    return listen.removeprefix("tcp://")


async def serve(
    listen: str,
    runtimes: RuntimeRegistry,
    exec_timeout_s: float,
    max_concurrent: int,
    tls: TlsFiles | None = None,
    health_listen: str | None = None,
) -> None:
    children = ChildProcesses()
    server = grpc.aio.server(maximum_concurrent_rpcs=max_concurrent * 8)
    pb_grpc.add_ChaosDaemonServicer_to_server(
        ChaosDaemonServicer(runtimes, children, exec_timeout_s, max_concurrent), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )

    target = grpc_target(listen)
    socket_path = target.removeprefix("unix://") if target.startswith("unix://") else None
    if socket_path:
        _remove_stale_socket(socket_path)
        # The socket grants root on this node: create it 0600 from the start.
        old_umask = os.umask(0o177)
        try:
            server.add_insecure_port(target)
        finally:
            os.umask(old_umask)
    elif tls:
        server.add_secure_port(target, tls.credentials())
    else:
        server.add_insecure_port(target)
        host = target.rpartition(":")[0].strip("[]")
        if host not in ("127.0.0.1", "localhost", "::1"):
            log(logging.WARNING, "listening on TCP without mutual TLS; use --tls-cert/--tls-key/--tls-client-ca "
                "anywhere but a trusted test machine", listen=listen)

    # Kubernetes' gRPC probes speak plaintext only: behind mutual TLS, health
    # is served again, alone, on a plaintext port of its own.
    health_server = None
    if health_listen:
        health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_server.add_insecure_port(grpc_target(health_listen))
        await health_server.start()

    await server.start()
    for service in (SERVICE_NAME, ""):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log(logging.INFO, "serving", listen=listen, tls=bool(tls), health_listen=health_listen, runtimes=runtimes.prefixes)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        log(logging.INFO, "shutting down")
        await health_servicer.enter_graceful_shutdown()
        children.kill_all()
        await server.stop(grace=2)
        if health_server:
            await health_server.stop(grace=None)
        if socket_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path)


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SystemExit(f"--listen {path}: exists and is not a socket; refusing to replace it")
    os.unlink(path)
