"""Command line: ``python -m pytest_chaos_cluster build|up|down|status|docker-runtime|vm``."""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import tomllib
from pathlib import Path

from . import settings, vm
from .kind.bed import BOUNDED_RUNTIME, WORKERS
from .kind.images import COREDNS_VERSION, KIND_VERSION
from .util import ClusterError
from .vm import CONTAINERD_SOCKET, CONTAINERD_VERSION, GUEST_SHARE, GUEST_VENV, VM_FAILED


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
  vm build|run    the second test bed: a qemu VM with Debian 12's stock kernel (cgroup v2
                  only, netem) and containerd 2.x; runs one command in it (see vm --help)
"""

VM_DESCRIPTION = f"""\
A second test bed: a qemu VM (TCG, one vCPU, no network: -nic none) booting Debian 12's
stock kernel, cgroup v2 only, every module loadable (sch_netem ...), with containerd
{CONTAINERD_VERSION} built from the Go module proxy, Debian's runc, busybox-static,
stress-ng, iproute2, iptables, and a Python 3.11 venv at {GUEST_VENV}
holding the project's runtime and test dependencies (not the project itself: install
its wheels from the share). Needs root, mmdebstrap, Go >= 1.24 and qemu-system-x86;
everything is cached.

  build   build and cache the image (minutes cold, seconds warm)
  run     boot it, run COMMAND as root in the guest, power off; exits with COMMAND's
          status, or {VM_FAILED} when the VM itself failed (no boot, timeout, kernel panic)

In the guest: the share (--share DIR) is mounted read-write at {GUEST_SHARE} and is the
working directory; {GUEST_VENV}/bin is first on PATH; containerd answers on
{CONTAINERD_SOCKET} (default config: runc, cgroupfs driver); /sys/fs/cgroup is
cgroup2; lo is up. The console streams to stdout and to a log under the state dir.

Example (the project's wheel and tests in the share; JUnit XML comes back in it):

  python3 -m pip wheel --no-deps -w SHARE/wheels .
  python3 -m pytest_chaos_cluster vm run --share SHARE -- sh -c \\
      'pip install -q --no-deps --no-index wheels/*.whl && python -m pytest -q --junitxml=junit.xml tests'

Python: image = pytest_chaos_cluster.vm.build(Layout(), repo), then
pytest_chaos_cluster.vm.run(image, argv, share=DIR, timeout=SECONDS) -> COMMAND's status
(raises vm.VMError when the VM failed).
"""


def _dirs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, default=settings.STATE_DIR,
                   help="kind config, kubeconfig and build logs "
                        "(default: %(default)s; env PYTEST_CHAOS_CLUSTER_STATE)")
    p.add_argument("--cache-dir", type=Path, default=settings.CACHE_ROOT,
                   help="built binaries and image tarballs, keyed by version or digest "
                        "(default: %(default)s; env PYTEST_CHAOS_CACHE)")


def _common(p: argparse.ArgumentParser) -> None:
    _dirs(p)
    p.add_argument("--kubernetes-version", default=settings.K8S_VERSION, metavar="vX.Y.Z",
                   help="Kubernetes version to build/use (default: %(default)s, the tested pin)")
    p.add_argument("--etcd-version", default=settings.ETCD_VERSION, metavar="vX.Y.Z",
                   help="etcd version to build/use (default: %(default)s)")


def version() -> str:
    """This distribution's version: installed, from its metadata; in a source checkout, from its pyproject.toml."""
    try:
        return importlib.metadata.version("pytest-chaos-cluster")
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown (neither installed nor in its source tree)"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pytest_chaos_cluster", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"pytest-chaos-cluster {version()}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="{build,up,down,status,docker-runtime,vm}")

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
    _vm_parser(sub.add_parser("vm", help="the VM test bed: Debian 12's kernel, cgroup v2, containerd 2.x",
                              description=VM_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter))
    return ap


def _vm_parser(vm: argparse.ArgumentParser) -> None:
    vsub = vm.add_subparsers(dest="vm_command", required=True, metavar="{build,run}")
    repo_help = ("pytest-chaos checkout whose pyproject.toml names the venv's dependencies (default: the current "
                 "directory if it has daemon/Dockerfile, else the checkout this package runs from)")
    b = vsub.add_parser("build", help="build and cache the VM image",
                        description="Build the rootfs (mmdebstrap), containerd (Go module proxy), the venv's wheels "
                                    "(pip download) and the ext4 disk, kernel and initrd into the cache. Cold: minutes; "
                                    "cached: seconds.")
    _dirs(b)
    b.add_argument("--repo", type=Path, default=None, help=repo_help)
    b.add_argument("--force", action="store_true", help="rebuild the disk even if cached")
    r = vsub.add_parser("run", help="boot the VM, run COMMAND as root, power off; exit with its status",
                        usage="%(prog)s [options] -- COMMAND [ARGS...]",
                        description=f"Build the image if needed, boot it and run COMMAND as root in the guest "
                                    f"(in {GUEST_SHARE} with --share, else /root), then power off. Exits with "
                                    f"COMMAND's status, or {VM_FAILED} when the VM failed: it did not reach its init "
                                    f"within --boot-timeout, did not finish within --timeout (qemu is killed), "
                                    f"panicked, or its init failed.")
    _dirs(r)
    r.add_argument("--repo", type=Path, default=None, help=repo_help)
    r.add_argument("--share", type=Path, default=None, metavar="DIR",
                   help=f"host directory mounted read-write at {GUEST_SHARE} (virtio-9p), the command's working "
                        "directory: put wheels and tests in, read results back")
    r.add_argument("--timeout", type=float, default=1500, metavar="SECONDS",
                   help="kill the VM and fail if it has not finished by then (default: %(default)s)")
    r.add_argument("--boot-timeout", type=float, default=300, metavar="SECONDS",
                   help="kill the VM and fail if its init has not started by then (default: %(default)s)")
    r.add_argument("--memory", type=int, default=2048, metavar="MB", help="guest memory (default: %(default)s)")
    r.add_argument("--env", "-e", action="append", default=[], metavar="NAME=VALUE",
                   help="set an environment variable for COMMAND (repeatable)")
    r.add_argument("--verbose-boot", action="store_true", help="show the kernel's boot messages (no 'quiet')")
    r.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND", help="what to run in the guest, after --")


def _vm(args: argparse.Namespace, layout: settings.Layout) -> int:
    repo = (args.repo or default_repo()).resolve()
    if args.vm_command == "build":
        vm.build(layout, repo, force=args.force)
        return 0
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise ClusterError("vm run: no COMMAND (usage: vm run [options] -- COMMAND [ARGS...])")
    env = dict(e.split("=", 1) for e in args.env if "=" in e)
    if len(env) != len(args.env):
        raise ClusterError(f"--env takes NAME=VALUE (got {args.env})")
    try:
        image = vm.build(layout, repo)
        return vm.run(image, argv, share=args.share, timeout=args.timeout, boot_timeout=args.boot_timeout,
                      memory=args.memory, env=env, log_dir=layout.logs / "vm", verbose_boot=args.verbose_boot)
    except ClusterError as exc:
        print(f"pytest-chaos-cluster: vm run: error: {exc}", file=sys.stderr)
        return VM_FAILED


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    layout = settings.Layout(state=args.state_dir.resolve(), cache=args.cache_dir.resolve(),
                             k8s_version=getattr(args, "kubernetes_version", settings.K8S_VERSION),
                             etcd_version=getattr(args, "etcd_version", settings.ETCD_VERSION))
    from .kind import bed
    try:
        if args.command == "vm":
            return _vm(args, layout)
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
