"""Run a command where a DaemonSet pod's container runs on a cgroup v2 node: a cgroup of its own and a
private cgroup namespace rooted there, with the node's whole cgroup tree mounted beside its own view.

    python3 tests/support/pod_placement.py --cgroup NAME -- pytest-chaos-daemon ...

What Kubernetes gives a privileged, hostPID pod on such a node (and what this
reproduces): the node's pid namespace, a cgroup (``NAME``, made in the unified
hierarchy, as a child of the caller's) that becomes the root of a new cgroup
namespace, a mount namespace whose ``/sys/fs/cgroup`` shows that private view,
and a hostPath mount of the node's ``/sys/fs/cgroup`` (the DaemonSet mounts it
at /host/sys/fs/cgroup; here it goes under /run, since the daemon finds cgroup
mounts through mountinfo, not by path). The caller removes ``NAME`` after the
command ends (``remove``).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import sys
import time

CLONE_NEWNS, CLONE_NEWCGROUP = 0x00020000, 0x02000000
MS_REC, MS_PRIVATE, MS_BIND, MNT_DETACH = 0x4000, 1 << 18, 4096, 2
HOST_VIEW_ROOT = "/run/pytest-chaos-pod-placement"
_libc = ctypes.CDLL(None, use_errno=True)


def unified_mount() -> tuple[str, str]:
    """(mount point, root) of this process's cgroup v2 mount whose root is widest."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[0] == "cgroup2":
                fields = left.split()
                found.append((fields[4], fields[3]))
    if not found:
        raise SystemExit("pod_placement: no cgroup v2 mount: this host has no unified hierarchy")
    return min(found, key=lambda mount: len(mount[1]))


def cgroup_path(name: str) -> str:
    """Where the placement's cgroup ``name`` is, under this process's unified cgroup."""
    mount_point, root = unified_mount()
    with open("/proc/self/cgroup") as f:
        own = next(line.rstrip("\n").split(":", 2)[2] for line in f if line.startswith("0::"))
    return os.path.join(mount_point, own[len(root.rstrip("/")):].lstrip("/"), name)


def remove(name: str) -> None:
    """Remove the placement's cgroup, once its processes are gone (children first: the daemon's own probes
    end with it), and its mount point for the node's view."""
    path = cgroup_path(name)
    for directory, _, _ in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
        for _ in range(500):  # a killed process leaves its cgroup a moment after it is reaped
            try:
                os.rmdir(directory)
                break
            except FileNotFoundError:
                break
            except OSError as err:
                if err.errno != errno.EBUSY:
                    raise
                time.sleep(0.01)
    for directory in (os.path.join(HOST_VIEW_ROOT, name), HOST_VIEW_ROOT):
        try:
            os.rmdir(directory)
        except OSError:  # gone, or another placement's still there
            pass


def _check(result: int, what: str) -> None:
    if result != 0:
        raise SystemExit(f"pod_placement: {what}: {os.strerror(ctypes.get_errno())}")


def _mount(source: str, target: str, fstype: str | None, flags: int) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags, None),
           f"mount {source} on {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cgroup", required=True, help="the cgroup to make and run in (a name, no slashes)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or "/" in args.cgroup:
        parser.error("give --cgroup NAME and a command after --")
    mount_point, _ = unified_mount()
    cgroup = cgroup_path(args.cgroup)
    os.makedirs(cgroup, exist_ok=True)
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    host_view = os.path.join(HOST_VIEW_ROOT, args.cgroup)
    os.makedirs(host_view, exist_ok=True)
    _check(_libc.unshare(CLONE_NEWCGROUP | CLONE_NEWNS), "unshare the cgroup and mount namespaces")
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    _mount(mount_point, host_view, None, MS_BIND | MS_REC)  # the node's tree, as a hostPath volume
    # The pod's own view, rooted at its cgroup, where the node's was (the kernel refuses to stack a mount of
    # the same filesystem on the root of another).
    _check(_libc.umount2(mount_point.encode(), MNT_DETACH), f"umount {mount_point}")
    _mount("cgroup2", mount_point, "cgroup2", 0)
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main())
