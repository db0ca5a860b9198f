"""Whether a process is paused, and getting a frozen process's kill through.

A process a freezer holds (container-pause, ``docker pause``) can be neither
ptraced to a stop nor, under a cgroup v1 freezer, killed: a SIGKILL stays
pending until the freezer thaws. The daemon's own programs run in a target's
cgroups (stress-ng, packet queues, responders, proxies), so a target paused
meanwhile holds them too; stopping them moves them out of the v1 freezer
first. A v2 freezer lets a fatal signal through.
"""

from __future__ import annotations

import contextlib
import os

from . import procfs

FREEZER_V1, FREEZER_V2 = "cgroup v1 freezer", "cgroup v2 freezer"


def paused(pid: int) -> str | None:
    """How the process ``pid`` is paused, if it is: frozen (``frozen``), or stopped by a signal; None when it runs."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None
    return frozen(pid) or ("stopped by a signal (SIGSTOP)" if state in ("T", "t") else None)


def frozen(pid: int) -> str | None:
    """Which freezer cgroup holds the process ``pid`` frozen, its own or an ancestor's (container-pause,
    ``docker pause``, ...), if one does. A frozen process can be neither stopped nor ptraced until thawed."""
    try:
        memberships = procfs.read_cgroups(pid)
    except OSError:
        return None
    mounts = procfs.cgroup_mounts()
    for membership in memberships:
        directory = procfs.cgroup_dir(membership, mounts)
        if directory is None:
            continue
        if "freezer" in membership.controllers:  # freezer.state says FROZEN for an ancestor's freeze too
            if _read(os.path.join(directory, "freezer.state")) in ("FROZEN", "FREEZING"):
                return f"frozen by the {FREEZER_V1} ({membership.path})"
        elif membership.v2 and "frozen 1" in _read(os.path.join(directory, "cgroup.events")).splitlines():
            return f"frozen by the {FREEZER_V2} ({membership.path})"
    return None


def release_from_v1_freezer(pids: set[int]) -> int:
    """Move ``pids`` that a v1 freezer holds to the freezer hierarchy's root (never frozen), where they thaw, so
    a SIGKILL meant for them lands now rather than whenever the target is thawed. (A v2 freezer lets a fatal
    signal through, so it needs nothing.) How many were moved."""
    mounts = procfs.cgroup_mounts()
    root = procfs.cgroup_dir(procfs.CgroupMembership(frozenset({"freezer"}), "/"), mounts)
    moved = 0
    for pid in pids:
        try:
            membership = next(m for m in procfs.read_cgroups(pid) if "freezer" in m.controllers)
        except (OSError, StopIteration):
            continue
        directory = procfs.cgroup_dir(membership, mounts)
        if root is None or directory is None or _read(os.path.join(directory, "freezer.state")) == "THAWED":
            continue
        with contextlib.suppress(OSError):  # gone meanwhile
            with open(os.path.join(root, "cgroup.procs"), "w") as f:
                f.write(str(pid))
            moved += 1
    return moved


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""
