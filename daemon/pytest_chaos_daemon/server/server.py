"""Serving the daemon: the ChaosDaemon service plus gRPC health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import stat
from typing import NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..api.contract import grpc_target
from ..api.v1 import chaos_daemon_pb2 as pb
from ..api.v1 import chaos_daemon_pb2_grpc as pb_grpc
from ..confinement.nsexec import ChildProcesses, Confiner
from ..confinement.tracking import start_tracker
from ..faults import FAULTS, FaultContext
from ..host import cgroups as node
from ..host.netem import NetemSupport
from ..lifecycle.injections import DEFAULT_LEASE_S, Injections
from ..lifecycle.journal import DEFAULT_STATE_DIR, Journal
from ..lifecycle.lifetime import ParentWatch
from ..runtimes import RuntimeRegistry
from .info import daemon_info
from .interceptors import HandlerWrapping
from .logs import log
from .probes import ProbeHealth
from .servicer import ChaosDaemonServicer, Limits
from .tls import TlsFiles, client_certificate_check

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ChaosDaemon"].full_name
# The name in the daemons' certificates (pytest-chaos-daemon-certs); clients
# check it whatever address they dial (pod IP, port-forward relay).


async def serve(
    listen: str,
    runtimes: RuntimeRegistry,
    limits: Limits,
    confine_helper: str,
    tls: TlsFiles | None = None,
    health_listen: str | None = None,
    exit_with_parent: int | None = None,
    insecure: bool = False,
    state_dir: str = DEFAULT_STATE_DIR,
    default_lease_s: float = DEFAULT_LEASE_S,
    recover_on_exit: bool = False,
    probe_tracking: str = "auto",
    network_emulation: str = "auto",
    cgroup_namespace: str = "",
) -> None:
    # What the daemon starts is tracked from here on; leftovers of a daemon
    # that died are killed now.
    tracker = start_tracker(node.cgroup_layout(), probe_tracking)
    children = ChildProcesses(tracker)
    # Behind mutual TLS every call's client certificate is checked (tls.py).
    interceptors: list[HandlerWrapping] = [HandlerWrapping(decode_safely=True)]
    if tls:
        interceptors.insert(0, client_certificate_check())
    # No cap on concurrent RPCs here: fault requests queue in the servicer
    # (bounded there), and health and reflection must answer while they do.
    server = grpc.aio.server(interceptors=interceptors)
    confiner = Confiner(children, confine_helper)
    # Injections of daemons that died are taken over before serving.
    netem = NetemSupport(children, network_emulation)
    emulation = await netem.describe()  # checked once, before serving, so the start line tells
    ctx = FaultContext(runtimes, children, confiner, limits.exec_timeout_s, netem)
    injections = Injections(Journal(state_dir), FAULTS, ctx, default_lease_s, recover_on_exit)
    await injections.start()
    servicer = ChaosDaemonServicer(runtimes, confiner, limits, injections,
                                   functools.partial(daemon_info, FAULTS, ctx, limits.allow_pid_targets))
    pb_grpc.add_ChaosDaemonServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # not in the health stubs
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )

    target = grpc_target(listen)
    socket_path = target.removeprefix("unix://") if target.startswith("unix://") else None
    if socket_path:
        _add_private_unix_port(server, target)
    elif tls:
        server.add_secure_port(target, tls.credentials())
    elif not insecure:
        raise SystemExit(f"--listen {listen}: plaintext TCP needs --insecure; TCP means mutual TLS "
                         "(--tls-cert/--tls-key/--tls-client-ca)")
    else:
        server.add_insecure_port(target)
        # Loopback included: any local user could reach the port and get root.
        log(logging.WARNING, "listening on plaintext TCP without mutual TLS (--insecure): whoever reaches "
            "the port gets root on this node; use --tls-cert/--tls-key/--tls-client-ca anywhere but a trusted "
            "test machine", listen=listen)

    # Kubernetes' gRPC probes speak plaintext only: behind mutual TLS, health
    # is served again, alone, on a plaintext port of its own.
    health_server = None
    health_target = grpc_target(health_listen) if health_listen else ""
    health_socket_path = health_target.removeprefix("unix://") if health_target.startswith("unix://") else None
    if health_listen:
        health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(ProbeHealth(health_servicer), health_server)
        if health_socket_path:
            _add_private_unix_port(health_server, health_target)
        else:
            health_server.add_insecure_port(health_target)
        await health_server.start()

    await server.start()
    for service in (SERVICE_NAME, ""):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log(logging.INFO, "serving", listen=listen, tls=bool(tls), health_listen=health_listen, runtimes=runtimes.prefixes,
        pid_targets=limits.allow_pid_targets, confine_helper=confine_helper,
        tracking=tracker.description, cgroup=node.layout_name(), cgroup_namespace=cgroup_namespace,
        network_emulation=emulation)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # The parent's exit takes the same path as SIGTERM.
    parent = ParentWatch(exit_with_parent, loop, stop.set) if exit_with_parent else None
    try:
        await stop.wait()
    finally:
        log(logging.INFO, "shutting down")
        if parent:
            parent.close()
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace=2)
        await injections.close()
        children.kill_all()
        servicer.close()
        tracker.close()
        if health_server:
            await health_server.stop(grace=None)
        for path in (socket_path, health_socket_path):
            if path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


def _add_private_unix_port(server: grpc.aio.Server, target: str) -> None:
    _remove_stale_socket(target.removeprefix("unix://"))
    # The socket is created 0600 from the start: the main one grants root on
    # this node, and a health socket has no reason to be reachable by others.
    old_umask = os.umask(0o177)
    try:
        server.add_insecure_port(target)
    finally:
        os.umask(old_umask)


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead server; refuse a live one or anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        _refuse(f"--listen {path}: exists and is not a socket; refusing to replace it")
    # Only a refused connection proves nobody serves it; anything else (accepted,
    # timed out, another error) may be a live server, whose socket must stay.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            log(logging.INFO, "removing a stale socket", path=path)
            os.unlink(path)
            return
        except FileNotFoundError:
            return
        except OSError as err:
            _refuse(f"--listen {path}: cannot tell whether another process serves it ({err}); "
                    "stop it or choose another --listen")
    _refuse(f"--listen {path}: another process is serving {path}; stop it or choose another --listen")


def _refuse(message: str) -> NoReturn:
    # Through the log, not SystemExit's text: once logging is configured, fd 2
    # is a pipe whose relay thread may not outlive the interpreter's exit.
    log(logging.ERROR, message)
    raise SystemExit(1)
