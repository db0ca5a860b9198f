"""``pytest-chaos-daemon``: the command line of the node daemon."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from . import logs
from .runtimes import RuntimeRegistry, containerd, cri, docker, process
from .server import TlsFiles, serve

DEFAULT_PORT = 31767
DEFAULT_LISTEN = f"tcp://0.0.0.0:{DEFAULT_PORT}"

DESCRIPTION = """\
The pytest-chaos node daemon. It runs as root on each node (hostPID in
Kubernetes), resolves container ids to host PIDs through the container
runtime named by the id's prefix (containerd://, docker://, cri-o://, or
pid://N for a bare process), enters the target's namespaces with nsenter and
injects the requested fault. Logs are JSON lines on stderr.
"""

EPILOG = """\
examples:
  pytest-chaos-daemon                                   # TCP on port 31767
  pytest-chaos-daemon --listen unix:///run/pytest-chaos.sock
  pytest-chaos-daemon --containerd-namespace '*'        # search every containerd namespace
  pytest-chaos-daemon --tls-cert server.crt --tls-key server.key --tls-client-ca ca.crt
      --health-listen tcp://0.0.0.0:31766               # mutual TLS, as in a cluster
                                                        # (certificates: pytest-chaos-daemon-certs)
health and reflection: grpc.health.v1.Health and server reflection are served,
so `grpcurl -plaintext HOST:31767 list` works.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pytest-chaos-daemon",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="ADDRESS",
        help="where to serve gRPC: tcp://HOST:PORT, HOST:PORT, or unix:///PATH "
        "(the socket is created mode 0600). Default: %(default)s",
    )
    parser.add_argument(
        "--containerd-socket", default=containerd.DEFAULT_SOCKET, metavar="PATH",
        help="containerd's API socket, for containerd:// ids. Default: %(default)s",
    )
    parser.add_argument(
        "--containerd-namespace", action="append", metavar="NAME",
        help="containerd namespace to look containerd:// ids up in; repeat for several, "
        f"'*' for all (except '{containerd.DOCKER_MIRROR_NAMESPACE}'). Default: {containerd.DEFAULT_NAMESPACE}",
    )
    parser.add_argument(
        "--docker-socket", default=docker.DEFAULT_SOCKET, metavar="PATH",
        help="Docker Engine API socket, for docker:// ids. Default: %(default)s",
    )
    parser.add_argument(
        "--crio-socket", default=cri.DEFAULT_SOCKET, metavar="PATH",
        help="CRI socket (CRI-O, or any CRI server), for cri-o:// ids. Default: %(default)s",
    )
    parser.add_argument(
        "--exec-timeout", type=float, default=30.0, metavar="SECONDS",
        help="kill a fault command that runs longer than this. Default: %(default)s",
    )
    parser.add_argument(
        "--max-concurrent", type=int, default=16, metavar="N",
        help="fault commands run at once; further requests wait. Default: %(default)s",
    )
    parser.add_argument(
        "--health-listen", metavar="ADDRESS",
        help="also serve grpc.health.v1 alone, in plaintext, here (e.g. tcp://0.0.0.0:31766): "
        "Kubernetes' gRPC probes cannot speak TLS",
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="server certificate; enables mutual TLS on TCP")
    parser.add_argument("--tls-key", metavar="PEM", help="server private key")
    parser.add_argument("--tls-client-ca", metavar="PEM", help="CA that client certificates must chain to")
    parser.add_argument(
        "--log-level", choices=logs.LEVELS, default="info", help="Default: %(default)s"
    )
    return parser


def build_runtimes(args: argparse.Namespace) -> RuntimeRegistry:
    return RuntimeRegistry(
        {
            "containerd": containerd.ContainerdRuntime(
                args.containerd_socket, args.containerd_namespace or [containerd.DEFAULT_NAMESPACE]
            ),
            "docker": docker.DockerRuntime(args.docker_socket),
            "cri-o": cri.CriRuntime(args.crio_socket),
            "pid": process.ProcessRuntime(),
        }
    )


def tls_files(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TlsFiles | None:
    given = [args.tls_cert, args.tls_key, args.tls_client_ca]
    if not any(given):
        return None
    if not all(given):
        parser.error("mutual TLS needs all three of --tls-cert, --tls-key and --tls-client-ca")
    if args.listen.startswith("unix://"):
        parser.error("TLS applies to TCP listeners; a unix socket is protected by its file mode")
    return TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_concurrent < 1:
        parser.error("--max-concurrent must be at least 1")
    if args.exec_timeout <= 0:
        parser.error("--exec-timeout must be positive")
    tls = tls_files(parser, args)
    logs.configure(args.log_level)
    if os.geteuid() != 0:
        print("pytest-chaos-daemon: warning: not root; entering other processes' namespaces will fail",
              file=sys.stderr)
    asyncio.run(
        serve(args.listen, build_runtimes(args), args.exec_timeout, args.max_concurrent, tls, args.health_listen)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
