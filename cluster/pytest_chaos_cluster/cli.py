"""Command line: ``python -m pytest_chaos_cluster up|down|status|build``.

A single-node Kubernetes cluster built from upstream components for running
pytest-chaos end to end on a machine without kind (see DESIGN.md section 6).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import settings
from .kind.bed import BOUNDED_RUNTIME
from .kind.images import KIND_VERSION
from .util import ClusterError


def default_repo() -> Path:
    """The pytest-chaos checkout: the current directory if it has daemon/Dockerfile,
    else the one this package was loaded from (an editable install of cluster/ or a checkout)."""
    for cand in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (cand / "daemon" / "Dockerfile").is_file():
            return cand
    return Path.cwd()


DESCRIPTION = f"""\
Single-node Kubernetes {settings.K8S_VERSION} cluster from upstream components, for
pytest-chaos end-to-end tests. Needs root and the Debian packages containerd, runc,
containernetworking-plugins, iptables, iproute2, openssl, busybox-static (and
docker.io + mmdebstrap for the daemon image); Go >= 1.24 to build the binaries.

  build   build etcd {settings.ETCD_VERSION} and kube-apiserver, kube-controller-manager,
          kube-scheduler, kubelet, kubectl from the Go module proxy into the cache
  up      build (if not cached), make certificates, configure and (re)start
          containerd, import the pause/busybox/daemon images, start the cluster and
          wait for the node to be Ready; prints the admin kubeconfig path last
  down    stop everything `up` started and remove pods, mounts, network devices
          and iptables rules it left (idempotent)
  status  show which components run and whether the node is Ready (exit 1 if not)
  kind    the multi-node bed instead: kind {KIND_VERSION} with one control plane and two workers,
          on Docker Engine, from images built here (`kind --help`)
"""


KIND_DESCRIPTION = f"""\
A real kind {KIND_VERSION} cluster (one control plane, two workers) for the multi-node
end-to-end tests, with nothing pulled from a registry: kind, CoreDNS, a Debian bookworm
base image (mmdebstrap) and a node image for Kubernetes {settings.K8S_VERSION} are built
here and cached; the pod network is our own (kindnetd is not available here).

  up      build what is missing, create the cluster (or find it up), route the nodes'
          pod CIDRs (also from this host), wait for every node to be Ready and load the
          daemon and busybox images with `kind load docker-image`; prints the
          kubeconfig path last. Then deploy as the README says: kubectl apply -k daemon/deploy
  down    delete the cluster, its Docker network and this host's routes to its pods
  status  the nodes (exit 1 unless all are Ready)
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, default=settings.STATE_DIR,
                   help="certificates, kubeconfigs, configs, etcd data, logs and PID files "
                        "(default: %(default)s; env PYTEST_CHAOS_CLUSTER_STATE)")
    p.add_argument("--cache-dir", type=Path, default=settings.CACHE_ROOT,
                   help="built binaries keyed by version, and image tarballs "
                        "(default: %(default)s; env PYTEST_CHAOS_CACHE)")
    p.add_argument("--kubernetes-version", default=settings.K8S_VERSION, metavar="vX.Y.Z",
                   help="Kubernetes version to build/use (default: %(default)s, the tested pin; "
                        "1.34-1.37 accept containerd 1.6's CRI)")
    p.add_argument("--etcd-version", default=settings.ETCD_VERSION, metavar="vX.Y.Z",
                   help="etcd version to build/use (default: %(default)s)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pytest_chaos_cluster", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="{build,up,down,status,kind}")

    b = sub.add_parser("build", help="build and cache the binaries (seconds when cached)",
                       description="Build the cluster binaries from the Go module proxy into "
                                   "<cache-dir>/k8s-<version>/bin and <cache-dir>/etcd-<version>/bin. "
                                   "A cold build takes minutes (progress is printed); a cached "
                                   "version returns at once.")
    _common(b)
    b.add_argument("--force", action="store_true", help="rebuild even if the version is cached")

    u = sub.add_parser("up", help="start the cluster and wait for the node to be Ready",
                       description="Build if needed, then start a single-node cluster. Prints the "
                                   "admin kubeconfig path as the last line of stdout.")
    _common(u)
    u.add_argument("--timeout", type=float, default=180, metavar="SECONDS",
                   help="how long to wait for the node to become Ready (default: %(default)s)")
    u.add_argument("--node-ip", metavar="IP",
                   help="node IP the kubelet serves on and the apiserver advertises "
                        "(default: the IPv4 address of the default-route interface)")
    u.add_argument("--repo", type=Path, default=None,
                   help="pytest-chaos checkout whose daemon/Dockerfile builds the daemon image "
                        "(default: the current directory if it has daemon/Dockerfile, else the "
                        "checkout this package runs from)")
    u.add_argument("--no-daemon-image", dest="daemon_image", action="store_false",
                   help=f"do not build/import {settings.DAEMON_IMAGE} (no Docker needed)")
    u.add_argument("--containerd", choices=("system", "dedicated"), default="system",
                   help="system: use/configure the machine's containerd at "
                        f"{settings.CONTAINERD_SOCKET} (the socket daemon/deploy mounts); "
                        "dedicated: run a separate containerd of our own "
                        "(/run/pytest-chaos-cluster/containerd.sock) and leave the system one "
                        "alone; `up` then prints an overlay dir to `kubectl apply -k` "
                        "(default: %(default)s)")
    u.add_argument("--no-restart-containerd", dest="restart_containerd", action="store_false",
                   help="fail instead of restarting a running containerd that this tool did not "
                        "start when its config does not suit the kubelet")

    d = sub.add_parser("down", help="stop the cluster and remove everything it left behind",
                       description="Stop kubelet, control plane and (if started by `up`) containerd; "
                                   "remove pod containers, mounts, netns, cni0, CNI/KUBE iptables "
                                   "chains, the kubelet dir and etcd data. Safe to run repeatedly.")
    _common(d)
    d.add_argument("--keep-data", action="store_true",
                   help="keep etcd data so the next `up` resumes the same cluster objects")
    d.add_argument("--purge", action="store_true",
                   help="also delete the state dir (certificates, logs) and the CNI config; "
                        "cached binaries and imported images stay")

    s = sub.add_parser("status", help="show components and node readiness (exit 1 unless all is up)",
                       description="Show each component's PID and whether the node is Ready.")
    _common(s)

    k = sub.add_parser("kind", help="the multi-node bed: a kind cluster built without a registry",
                       description=KIND_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    kind_sub = k.add_subparsers(dest="kind_command", required=True, metavar="{up,down,status,docker-runtime}")
    ku = kind_sub.add_parser("up", help="build, create and prepare the kind cluster; prints its kubeconfig")
    _common(ku)
    ku.add_argument("--workers", type=int, default=2, help="worker nodes besides the control plane "
                                                           "(default: %(default)s)")
    ku.add_argument("--timeout", type=float, default=300, metavar="SECONDS",
                    help="how long to wait for the nodes (default: %(default)s)")
    ku.add_argument("--repo", type=Path, default=None,
                    help="pytest-chaos checkout whose daemon/Dockerfile builds the daemon image")
    kd = kind_sub.add_parser("down", help="delete the cluster, its network and routes (idempotent)")
    _common(kd)
    kd.add_argument("--verify", action="store_true",
                    help="then exit 1, naming them, if node containers, the network, dangling volumes, "
                         "routes or mounts of the bed are left")
    _common(kind_sub.add_parser("status", help="show the nodes; exit 1 unless all are Ready"))
    _common(kind_sub.add_parser(
        "docker-runtime", help="build runc-bounded-caps and print its path",
        description="Docker 20.10 gives a --privileged container (a kind node) every capability the kernel "
                    "knows; where this machine's bounding set lacks some, runc refuses. runc-bounded-caps "
                    "narrows a container's capabilities to the bounding set, then runs runc. Run dockerd with "
                    f"--add-runtime {BOUNDED_RUNTIME}=PATH --default-runtime {BOUNDED_RUNTIME} "
                    "(scripts/setup.sh does)."))
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    layout = settings.Layout(state=args.state_dir.resolve(), cache=args.cache_dir.resolve(),
                             k8s_version=args.kubernetes_version, etcd_version=args.etcd_version)
    from . import cluster
    try:
        if args.command == "build":
            cluster.build_only(layout, args.force)
        elif args.command == "up":
            cluster.up(layout, repo=(args.repo or default_repo()).resolve(), daemon_image=args.daemon_image,
                       timeout=args.timeout, node_ip=args.node_ip,
                       containerd_mode=args.containerd, restart_containerd=args.restart_containerd)
        elif args.command == "down":
            cluster.down(layout, keep_data=args.keep_data, purge=args.purge)
        elif args.command == "status":
            return 0 if cluster.status(layout) else 1
        elif args.command == "kind":
            return _kind(args, layout)
    except ClusterError as exc:
        print(f"pytest-chaos-cluster: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pytest-chaos-cluster: interrupted", file=sys.stderr)
        return 130
    return 0


def _kind(args: argparse.Namespace, layout: settings.Layout) -> int:
    from .kind import bed
    if args.kind_command == "up":
        if args.workers < 1:
            raise ClusterError(f"--workers must be at least 1 (got {args.workers}): the bed is multi-node")
        kubeconfig = bed.up(layout, repo=(args.repo or default_repo()).resolve(), workers=args.workers,
                            timeout=args.timeout)
        print(kubeconfig)
    elif args.kind_command == "down":
        bed.down(layout)
        left = bed.leftovers() if args.verify else []
        if left:
            raise ClusterError("the kind bed left: " + ", ".join(left))
    elif args.kind_command == "docker-runtime":
        from .build import build_bounded_runc
        print(build_bounded_runc(layout))
    else:
        return 0 if bed.status(layout) else 1
    return 0
