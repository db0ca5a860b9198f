"""Command line: ``python -m pytest_chaos_cluster build|up|down|status|docker-runtime``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import settings
from .kind.bed import BOUNDED_RUNTIME, WORKERS
from .kind.images import COREDNS_VERSION, KIND_VERSION
from .util import ClusterError


def default_repo() -> Path:
    """The pytest-chaos checkout: the current directory if it has daemon/Dockerfile,
    else the one this package was loaded from (an editable install of cluster/ or a checkout)."""
    for cand in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (cand / "daemon" / "Dockerfile").is_file():
            return cand
    return Path.cwd()


DESCRIPTION = f"""\
pytest-chaos's multi-node test bed: a real kind {KIND_VERSION} cluster (one control plane,
two workers) on Docker Engine, with nothing pulled from a registry. kind, CoreDNS
{COREDNS_VERSION}, Kubernetes {settings.K8S_VERSION} and etcd {settings.ETCD_VERSION} are built from the Go module
proxy; a Debian bookworm base image (mmdebstrap) and a node image with every image
kubeadm runs are built here; the pod network is our own (kindnetd is not available).
Needs root, Docker Engine, mmdebstrap and Go >= 1.24; everything is cached.

  build           build and cache the binaries and images (minutes cold, seconds warm)
  up              build what is missing, create the cluster (or find it up), route the
                  nodes' pod CIDRs (also from this host), wait for every node to be Ready,
                  load the daemon and busybox images with `kind load docker-image`; prints
                  the kubeconfig path last. Then deploy as the README's "On kind" says
  down            delete the cluster, its Docker network and this host's routes to its pods
  status          the nodes (exit 1 unless all are Ready)
  docker-runtime  build runc-bounded-caps, the Docker runtime for machines whose
                  capability bounding set lacks capabilities; prints its path
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, default=settings.STATE_DIR,
                   help="kind config, kubeconfig and build logs "
                        "(default: %(default)s; env PYTEST_CHAOS_CLUSTER_STATE)")
    p.add_argument("--cache-dir", type=Path, default=settings.CACHE_ROOT,
                   help="built binaries and image tarballs, keyed by version or digest "
                        "(default: %(default)s; env PYTEST_CHAOS_CACHE)")
    p.add_argument("--kubernetes-version", default=settings.K8S_VERSION, metavar="vX.Y.Z",
                   help="Kubernetes version to build/use (default: %(default)s, the tested pin)")
    p.add_argument("--etcd-version", default=settings.ETCD_VERSION, metavar="vX.Y.Z",
                   help="etcd version to build/use (default: %(default)s)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pytest_chaos_cluster", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="{build,up,down,status,docker-runtime}")

    b = sub.add_parser("build", help="build and cache the binaries and images",
                       description="Build kind, CoreDNS, the Kubernetes and etcd binaries, the base image "
                                   "and the node image into the cache, with progress lines. A cold build "
                                   "takes minutes; a cached one returns at once.")
    _common(b)
    b.add_argument("--force", action="store_true", help="rebuild the Kubernetes and etcd binaries even if cached")

    u = sub.add_parser("up", help="build what is missing, create the cluster; prints its kubeconfig",
                       description="Build what is missing, create (or find up) the kind cluster, give it "
                                   "its pod network, wait for every node to be Ready and load the daemon "
                                   "and busybox images. Prints the kubeconfig path as the last line.")
    _common(u)
    u.add_argument("--workers", type=int, default=WORKERS,
                   help="worker nodes besides the control plane (default: %(default)s)")
    u.add_argument("--timeout", type=float, default=300, metavar="SECONDS",
                   help="how long to wait for the nodes (default: %(default)s)")
    u.add_argument("--repo", type=Path, default=None,
                   help="pytest-chaos checkout whose daemon/Dockerfile builds the daemon image "
                        "(default: the current directory if it has daemon/Dockerfile, else the "
                        "checkout this package runs from)")

    d = sub.add_parser("down", help="delete the cluster, its network and routes (idempotent)",
                       description="Delete the kind cluster, its Docker network and this host's routes "
                                   "into its pod subnet. Safe to run repeatedly.")
    _common(d)
    d.add_argument("--verify", action="store_true",
                   help="then exit 1, naming them, if node containers, the network, dangling volumes, "
                        "routes, mounts or Kubernetes/CNI iptables chains of the cluster are left on this host")

    _common(sub.add_parser("status", help="show the nodes; exit 1 unless all are Ready"))
    _common(sub.add_parser(
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
    from .kind import bed
    try:
        if args.command == "build":
            bed.build(layout, force=args.force)
        elif args.command == "up":
            if args.workers < 1:
                raise ClusterError(f"--workers must be at least 1 (got {args.workers}): the bed is multi-node")
            print(bed.up(layout, repo=(args.repo or default_repo()).resolve(), workers=args.workers,
                         timeout=args.timeout))
        elif args.command == "down":
            bed.down(layout)
            left = bed.leftovers() if args.verify else []
            if left:
                raise ClusterError("the cluster left: " + ", ".join(left))
        elif args.command == "status":
            return 0 if bed.status(layout) else 1
        elif args.command == "docker-runtime":
            from .build import build_bounded_runc
            print(build_bounded_runc(layout))
    except ClusterError as exc:
        print(f"pytest-chaos-cluster: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pytest-chaos-cluster: interrupted", file=sys.stderr)
        return 130
    return 0
