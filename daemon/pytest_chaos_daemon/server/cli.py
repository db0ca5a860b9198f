"""``pytest-chaos-daemon``: the command line of the node daemon."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from ..api.version import VERSION
from ..confinement import confine
from ..confinement.tracking import NAMED_V1, V2_SUBTREE
from ..host import cgroups as node
from ..host import netem
from ..lifecycle.injections import DEFAULT_LEASE_S
from ..lifecycle.journal import DEFAULT_STATE_DIR
from ..lifecycle.lifetime import REMOVABLE_PREFIX, RemovableDirectory
from ..runtimes import RuntimeRegistry, containerd, cri, docker, process
from . import logs
from .server import serve
from .servicer import Limits
from .tls import TlsFiles

DEFAULT_PORT = 31767
DEFAULT_LISTEN = f"tcp://0.0.0.0:{DEFAULT_PORT}"
MAX_EXEC_TIMEOUT_S = 3600.0
MAX_CONCURRENT = 256

DESCRIPTION = """\
The pytest-chaos node daemon. It runs as root on each node (hostPID in
Kubernetes), resolves container ids to host PIDs through the container
runtime named by the id's prefix (containerd://, docker://, cri-o://, or
pid://N for a bare process), enters the target's namespaces with nsenter and
injects the requested fault. Logs are JSON lines on stderr.
"""

EPILOG = """\
examples:
  pytest-chaos-daemon --tls-cert server.crt --tls-key server.key --tls-client-ca ca.crt
      --health-listen tcp://0.0.0.0:31766               # TCP port 31767, mutual TLS, as in a cluster
                                                        # (certificates: pytest-chaos-daemon-certs)
  pytest-chaos-daemon --listen unix:///run/pytest-chaos.sock
  pytest-chaos-daemon --listen tcp://127.0.0.1:31767 --insecure   # plaintext: trusted test machines only
  pytest-chaos-daemon --containerd-namespace '*' ...    # search every containerd namespace
TCP means mutual TLS: a TCP --listen needs the three --tls-* flags, or --insecure.
health and reflection: grpc.health.v1.Health and server reflection are served, so
`grpcurl -cacert ca.crt -cert client.crt -key client.key -authority chaos-daemon.pytest-chaos.local HOST:31767 list`
works; --health-listen serves grpc.health.v1.Health alone, in plaintext.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pytest-chaos-daemon",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
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
        "--exec-timeout", type=_seconds, default=30.0, metavar="SECONDS",
        help=f"kill a fault command that runs longer than this ({MAX_EXEC_TIMEOUT_S:g} at most). Default: %(default)s",
    )
    parser.add_argument(
        "--max-concurrent", type=_count, default=16, metavar="N",
        help=f"fault commands run at once (1 to {MAX_CONCURRENT}); further requests wait. Default: %(default)s",
    )
    parser.add_argument(
        "--allow-pid-targets", action="store_true",
        help="accept pid://N targets (bare processes of this node). Off by default: in a cluster, targets are "
        "containers; the plugin's own local daemon turns it on",
    )
    parser.add_argument(
        "--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR",
        help="where the journal of injections lives (created 0700); a restarted daemon, or another sharing "
        "DIR, recovers or keeps what a daemon that died left there. Default: %(default)s",
    )
    parser.add_argument(
        "--default-lease", type=_seconds, default=DEFAULT_LEASE_S, metavar="SECONDS",
        help="a recoverable fault whose client stops renewing it is recovered this long after the last "
        "renewal, when the request names no lease. Default: %(default)s",
    )
    parser.add_argument(
        "--recover-on-exit", action="store_true",
        help="recover every fault in force when the daemon stops (SIGTERM, or its --exit-with-parent exiting), "
        "for a daemon no one restarts, like the plugin's own. Without it they stay, journaled, for the next daemon",
    )
    parser.add_argument(
        "--confine-helper", metavar="PATH",
        help="the pytest-chaos-confine program that runs commands inside targets. Default: the one built with "
        "this wheel; in a source checkout, the build of this source (python3 -m pytest_chaos_daemon.confinement.confine)",
    )
    parser.add_argument(
        "--probe-tracking", choices=("auto", NAMED_V1, V2_SUBTREE), default="auto",
        help=f"how programs the daemon starts are tracked so none outlives it: {NAMED_V1}, a named cgroup v1 "
        f"hierarchy of the daemon's own; {V2_SUBTREE}, cgroups made under the target's cgroup (or the daemon's) "
        "in the unified hierarchy, killed with cgroup.kill. auto: cgroup-v2 on a cgroup v2 node, the named "
        "hierarchy elsewhere. Default: %(default)s",
    )
    parser.add_argument(
        "--network-emulation", choices=netem.CHOICES, default=netem.AUTO,
        help="how network-loss, -delay, -duplicate and -corrupt are made: netem, the kernel's qdisc (refused "
        "where the kernel lacks it); queue, the daemon's packet queue (netem's correlations and reorder gap are "
        "refused there); auto: netem where the kernel has it and the device's qdisc is free, the queue "
        "elsewhere. Default: %(default)s",
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
        "--insecure", action="store_true",
        help="allow a TCP --listen without mutual TLS: whoever reaches the port gets root on this node; "
        "for trusted test machines only (a warning is logged at every start)",
    )
    parser.add_argument(
        "--exit-with-parent", type=int, metavar="PID",
        help="shut down, as on SIGTERM, when process PID exits; PID must be the daemon's parent. "
        "Watched through a pidfd, with the parent-death signal (SIGTERM) as a second line",
    )
    parser.add_argument(
        "--remove-on-exit", metavar="DIR",
        help="remove DIR and its contents (e.g. the socket's and the log's directory) when the daemon stops "
        f"after serving. DIR must be an absolute path named {REMOVABLE_PREFIX}*, a directory (not a symlink) "
        "owned by the daemon's user, mode 0700",
    )
    parser.add_argument(
        "--log-level", choices=logs.LEVELS, default="info", help="Default: %(default)s"
    )
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (0 < value <= MAX_EXEC_TIMEOUT_S):  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"{text} must be more than 0 and at most {MAX_EXEC_TIMEOUT_S:g} seconds")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_CONCURRENT:
        raise argparse.ArgumentTypeError(f"{text} must be from 1 to {MAX_CONCURRENT}")
    return value


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
    tcp = not args.listen.startswith("unix://")
    if not any(given):
        if tcp and not args.insecure:
            parser.error(f"--listen {args.listen} is TCP, and TCP means mutual TLS: pass --tls-cert, --tls-key "
                         "and --tls-client-ca (pytest-chaos-daemon-certs writes them), or --insecure to serve "
                         "plaintext on a trusted test machine")
        return None
    if args.insecure:
        parser.error("--insecure contradicts --tls-cert/--tls-key/--tls-client-ca; pass one or the other")
    if not all(given):
        parser.error("mutual TLS needs all three of --tls-cert, --tls-key and --tls-client-ca")
    if args.listen.startswith("unix://"):
        parser.error("TLS applies to TCP listeners; a unix socket is protected by its file mode")
    return TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.exit_with_parent is not None and args.exit_with_parent < 1:
        parser.error("--exit-with-parent must be a process id")
    tls = tls_files(parser, args)
    removable = None
    if args.remove_on_exit:
        try:
            removable = RemovableDirectory(args.remove_on_exit)
        except ValueError as err:
            parser.error(f"--remove-on-exit {args.remove_on_exit}: {err}; refusing it")
    # First, before logging or gRPC start a thread: setns moves only the calling thread.
    cgroup_namespace = node.enter_node_cgroup_namespace()
    logs.configure(args.log_level)
    if os.geteuid() != 0:
        print("pytest-chaos-daemon: warning: not root; entering other processes' namespaces will fail",
              file=sys.stderr)
    try:
        helper = args.confine_helper or confine.helper_path()
    except confine.HelperUnavailable as err:
        parser.error(str(err))
    limits = Limits(exec_timeout_s=args.exec_timeout, max_concurrent=args.max_concurrent,
                    allow_pid_targets=args.allow_pid_targets)
    asyncio.run(
        serve(args.listen, build_runtimes(args), limits, helper, tls, args.health_listen,
              exit_with_parent=args.exit_with_parent, insecure=args.insecure, state_dir=args.state_dir,
              default_lease_s=args.default_lease, recover_on_exit=args.recover_on_exit,
              probe_tracking=args.probe_tracking, network_emulation=args.network_emulation,
              cgroup_namespace=cgroup_namespace)
    )
    # Only after serving: a daemon that fails to start leaves its log to whoever started it.
    if removable:
        removable.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
