"""The run's backend, built from pytest's options: the local backend's daemon flags, or the cluster's access."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from .. import keys
from ..api.contract import CONTAINERD_SOCKET, DOCKER_SOCKET
from ..defaults import ACCESS_MODES, BACKENDS, DEFAULT_DAEMON_NAMESPACE
from ..embedded import EMBEDDED_STATE_DIR, EmbeddedDaemon
from ..options import flag, option
from .base import Backend
from .kubernetes import KubernetesBackend
from .local import LocalBackend

if TYPE_CHECKING:
    from ..transport import ClientTls

# What the daemon the plugin starts is told about the container runtimes (with --chaos-daemon, that daemon's own).
RUNTIME_OPTIONS = ("chaos_containerd_socket", "chaos_containerd_namespace", "chaos_docker_socket")


def from_config(config: pytest.Config) -> Backend:
    """The backend the options ask for; raises pytest.UsageError for options that do not go together.

    With the local backend and no --chaos-daemon, the daemon it will start is kept in ``config.stash``
    (``keys.EMBEDDED``): started by the plugin when a chaos test is collected, stopped with the run."""
    name = option(config, "chaos_backend", "local")
    if name not in BACKENDS:
        raise pytest.UsageError(f"--chaos-backend={name!r}: accepted backends: {', '.join(BACKENDS)}")
    if name == "kubernetes":
        return _kubernetes(config)
    return _local(config)


def _kubernetes(config: pytest.Config) -> KubernetesBackend:
    if option(config, "chaos_daemon", ""):
        raise pytest.UsageError("--chaos-daemon applies to the local backend; the kubernetes backend "
                                "finds the daemon on each target's node (see --chaos-daemon-namespace)")
    access = option(config, "chaos_daemon_access", "auto")
    if access not in ACCESS_MODES:
        raise pytest.UsageError(f"chaos_daemon_access={access!r}: accepted: {', '.join(ACCESS_MODES)}")
    return KubernetesBackend(
        kubeconfig=option(config, "chaos_kubeconfig", "") or None,
        context=option(config, "chaos_context", "") or None,
        daemon_namespace=option(config, "chaos_daemon_namespace", DEFAULT_DAEMON_NAMESPACE),
        access=access,
    )


def _local(config: pytest.Config) -> LocalBackend:
    external = option(config, "chaos_daemon", "")
    containerd_socket = option(config, "chaos_containerd_socket", CONTAINERD_SOCKET)
    namespaces = [n for n in option(config, "chaos_containerd_namespace", "*").split(",") if n]
    docker_socket = option(config, "chaos_docker_socket", DOCKER_SOCKET)
    if external:
        if given := [f"--{o.replace('_', '-')}" for o in RUNTIME_OPTIONS if option(config, o, "")]:
            raise pytest.UsageError(
                f"{', '.join(given)} configure the daemon the plugin starts; with --chaos-daemon={external}, "
                "that daemon lists and resolves containers with its own settings (pytest-chaos-daemon "
                "--containerd-socket, --containerd-namespace, --docker-socket)"
            )
        daemon_address = lambda: external  # noqa: E731
    else:
        # pid:// targets are the local backend's own: its daemon accepts them.
        embedded = EmbeddedDaemon(
            # No one restarts it: what is in force when it stops is recovered then.
            ["--allow-pid-targets", "--recover-on-exit", "--state-dir", EMBEDDED_STATE_DIR,
             "--containerd-socket", containerd_socket,
             "--docker-socket", docker_socket]
            + [arg for ns in namespaces for arg in ("--containerd-namespace", ns)]
        )
        config.stash[keys.EMBEDDED] = embedded
        daemon_address = embedded.ensure_started
    certs = option(config, "chaos_daemon_certs", "")
    if certs and not external:
        raise pytest.UsageError("--chaos-daemon-certs applies with --chaos-daemon (a daemon listening on TCP)")
    if external and not external.startswith("unix://") and not certs and not flag(config, "chaos_daemon_insecure"):
        raise pytest.UsageError(
            f"--chaos-daemon={external} is TCP, and TCP means mutual TLS: pass --chaos-daemon-certs=DIR "
            "(ca.crt, client.crt, client.key from pytest-chaos-daemon-certs), or --chaos-daemon-insecure "
            "to talk plaintext to a daemon started with --insecure on a trusted test machine"
        )
    runtimes = (f"the daemon at {external}" if external else
                f"containerd {containerd_socket} namespaces {','.join(namespaces)}; docker {docker_socket}")
    return LocalBackend(daemon_address, tls=_client_tls(certs), runtimes=runtimes)


def _client_tls(directory: str) -> ClientTls | None:
    if not directory:
        return None
    try:
        read = {name: open(os.path.join(directory, name), "rb").read() for name in ("ca.crt", "client.crt", "client.key")}
    except OSError as err:
        raise pytest.UsageError(f"--chaos-daemon-certs={directory}: {err}") from None
    from ..transport import ClientTls  # gRPC: only a run that talks TLS to a daemon of its own choosing

    return ClientTls(cert=read["client.crt"], key=read["client.key"], ca=read["ca.crt"])
