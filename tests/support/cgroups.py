"""A process's cgroups read from outside the daemon, on any layout: cgroup v1, hybrid, or v2 only.

On v1 and hybrid hosts each resource has a controller hierarchy of its own
(``cpuacct.usage``, ``memory.usage_in_bytes``, the v1 freezer); on a v2-only
host one unified cgroup holds them all (``cpu.stat``, ``memory.current``,
``cgroup.freeze``). These helpers answer the same question either way.
"""

from __future__ import annotations

import os
import time

from pytest_chaos_daemon.confinement import procfs
from pytest_chaos_daemon.confinement.tracking import NAMED_V1, V2_SUBTREE

# The v1 controller that counts each resource.
V1_CONTROLLERS = {"cpu": "cpuacct", "memory": "memory", "pids": "pids", "freezer": "freezer"}


def layout() -> str:
    """``v1``, ``hybrid`` or ``v2``, from this process's own memberships (as the daemon decides)."""
    memberships = procfs.read_cgroups(os.getpid())
    v1 = any(m.controllers and not all(c.startswith("name=") for c in m.controllers) for m in memberships)
    if v1:
        return "hybrid" if any(m.v2 for m in memberships) else "v1"
    return "v2"


def tracking_modes() -> list[str]:
    """The daemon's ``--probe-tracking`` choices this host can run: the named v1 hierarchy where v1
    controllers are, cgroup v2 subtrees where the unified hierarchy is (both on a hybrid host)."""
    return {"v1": [NAMED_V1], "hybrid": [NAMED_V1, V2_SUBTREE], "v2": [V2_SUBTREE]}[layout()]


def cgroup_dir(pid: int, resource: str) -> str:
    """The directory of the cgroup that accounts ``resource`` (cpu, memory, pids, freezer) for ``pid``."""
    mounts = procfs.cgroup_mounts()
    memberships = procfs.read_cgroups(pid)
    controller = V1_CONTROLLERS[resource]
    wanted = [m for m in memberships if controller in m.controllers] or [m for m in memberships if m.v2]
    assert wanted, f"process {pid} has no cgroup for {resource}"
    directory = procfs.cgroup_dir(wanted[0], mounts)
    assert directory is not None, f"the {resource} cgroup of {pid} ({wanted[0].path}) is not mounted here"
    return directory


def v2_dir(pid: int) -> str:
    """The directory of ``pid``'s cgroup in the unified hierarchy (on a hybrid host too)."""
    [membership] = [m for m in procfs.read_cgroups(pid) if m.v2]
    directory = procfs.cgroup_dir(membership, procfs.cgroup_mounts())
    assert directory is not None, f"the unified cgroup of {pid} ({membership.path}) is not mounted here"
    return directory


def is_v1(resource: str, pid: int) -> bool:
    return any(V1_CONTROLLERS[resource] in m.controllers for m in procfs.read_cgroups(pid))


def cpu_usage_s(pid: int) -> float:
    """CPU time the cgroup of ``pid`` has used, in seconds, from the kernel's own counter (descendants included)."""
    directory = cgroup_dir(pid, "cpu")
    if is_v1("cpu", pid):
        return _number(os.path.join(directory, "cpuacct.usage")) / 1e9
    with open(os.path.join(directory, "cpu.stat")) as f:
        return next(int(line.split()[1]) for line in f if line.startswith("usage_usec ")) / 1e6


def cpu_seconds(pid: int, interval: float = 1.0) -> float:
    """CPU seconds the cgroup of ``pid`` used over ``interval``."""
    before = cpu_usage_s(pid)
    time.sleep(interval)
    return cpu_usage_s(pid) - before


def memory_bytes(pid: int) -> int:
    """Memory charged to the cgroup of ``pid`` (descendants included)."""
    directory = cgroup_dir(pid, "memory")
    return _number(os.path.join(directory, "memory.usage_in_bytes" if is_v1("memory", pid) else "memory.current"))


def within(pid: int, of: int, resource: str) -> bool:
    """Whether ``pid`` is held to the cgroup of ``of`` for ``resource``: the same cgroup, or one below it (a
    probe made in the target's cgroup v2)."""
    mine, theirs = cgroup_dir(pid, resource), cgroup_dir(of, resource)
    return mine == theirs or mine.startswith(theirs.rstrip("/") + "/")


def _number(path: str) -> int:
    with open(path) as f:
        return int(f.read())
