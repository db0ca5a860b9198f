"""What the node offers the daemon: its cgroup layout, and the node's view of cgroups.

On cgroup v2 every Kubernetes container, privileged and hostPID included,
gets a private cgroup namespace rooted at its own cgroup. A daemon there sees
each target's cgroup as ``/../..``: paths relative to its own namespace,
which differ from one daemon pod to its successor, so they can neither be
journaled nor shown to the user. The daemon therefore enters the cgroup
namespace of PID 1 of its pid namespace (the node's init, with hostPID) at
start, before any thread exists (``setns`` moves only the calling thread, and
threads inherit it), as Chaos Mesh's daemon does: from then on every path in
/proc/PID/cgroup and mountinfo is the node's.

A daemon that cannot open PID 1's namespace (no hostPID, or an init it may
not inspect) stays where it is; targets outside its cgroup namespace are then
refused with what to do (``target.py``).
"""

from __future__ import annotations

import ctypes
import functools
import os

from ..confinement import procfs

CLONE_NEWCGROUP = 0x02000000
V1, HYBRID, V2 = "v1", "hybrid", "v2"
LAYOUT_NAMES = {V1: "cgroup v1", HYBRID: "cgroup v1 (hybrid)", V2: "cgroup v2"}


def enter_node_cgroup_namespace(init_pid: int = 1) -> str:
    """Join the cgroup namespace of ``init_pid`` if the daemon is not in it; what happened, for the log.

    Call before any thread starts: only the calling thread moves."""
    try:
        own = procfs.namespace_id("/proc/self/ns/cgroup")
    except OSError:
        return "this kernel has no cgroup namespaces"
    try:
        fd = os.open(f"/proc/{init_pid}/ns/cgroup", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        return f"stayed in its own: cannot open PID {init_pid}'s cgroup namespace ({err.strerror})"
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == own:
            return f"already in PID {init_pid}'s"
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWCGROUP) != 0:
            error = os.strerror(ctypes.get_errno())
            return f"stayed in its own: cannot enter PID {init_pid}'s cgroup namespace ({error})"
    finally:
        os.close(fd)
    cgroup_layout.cache_clear()
    return f"entered PID {init_pid}'s"


@functools.cache
def cgroup_layout() -> str:
    """``v1``, ``hybrid`` (v1 controllers beside the unified hierarchy) or ``v2`` (unified only), from the
    daemon's own memberships."""
    memberships = procfs.read_cgroups(os.getpid())
    has_v1 = any(m.controllers and not all(c.startswith("name=") for c in m.controllers) for m in memberships)
    has_v2 = any(m.v2 for m in memberships)
    if has_v1:
        return HYBRID if has_v2 else V1
    return V2


def layout_name() -> str:
    """The node's cgroup layout for the user: "cgroup v2", "cgroup v1 (hybrid)", "cgroup v1"."""
    return LAYOUT_NAMES[cgroup_layout()]
