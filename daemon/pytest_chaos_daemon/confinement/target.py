"""A target process, held from resolution to the end of the request.

Resolving a container gives a PID, and a PID can be recycled. The daemon
opens a pidfd right after resolving, checks the runtime still names that PID,
reads everything it needs from /proc, then checks the pidfd's process is still
alive: if it is, every read was of that process and not of a successor.

It also refuses targets no fault may touch: the daemon itself and its
ancestors, PID 1 of the daemon's pid namespace, and kernel threads.
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal
from collections.abc import Sequence

from ..errors import FailedPrecondition, NotFound, PermissionDenied
from . import procfs

# Entered in this order by the confine helper: user first, mount last.
NAMESPACES = ("user", "cgroup", "ipc", "uts", "net", "pid", "mnt")


class HeldTarget:
    """A live process named by ``description`` (its container id), pinned by a pidfd."""

    def __init__(self, pid: int, description: str) -> None:
        self.pid = pid
        self.description = description
        refuse_protected(pid, description)
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise NotFound(f"target {description} (host pid {pid}) has exited") from None
        try:
            self.stat = procfs.read_stat(pid)
        except OSError:
            self.close()
            raise NotFound(f"target {description} (host pid {pid}) has exited") from None
        if self.stat.kernel_thread:
            self.close()
            raise FailedPrecondition(f"target {description} (host pid {pid}) is a kernel thread; faults apply to processes")

    def alive(self) -> bool:
        try:
            signal.pidfd_send_signal(self._pidfd, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # alive, just not ours to signal
        return True

    def check_alive(self) -> None:
        if not self.alive():
            raise NotFound(f"target {self.description} (host pid {self.pid}) exited during the request")

    def send_signal(self, signum: int) -> None:
        """Signal the held process through its pidfd, so a recycled PID is never signalled."""
        try:
            signal.pidfd_send_signal(self._pidfd, signum)
        except ProcessLookupError:
            raise NotFound(f"target {self.description} (host pid {self.pid}) has exited") from None
        except PermissionError:
            raise PermissionDenied(f"the daemon may not signal target {self.description} (host pid {self.pid})") from None

    def exited(self) -> bool:
        """Whether the held process has exited (a zombie counts): its pidfd turns readable then."""
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return bool(poller.poll(0))

    def confirm(self, pid: int) -> None:
        """Check ``pid``, the runtime's answer asked again now that the pidfd pins the process, is this one."""
        if pid != self.pid or not self.alive():
            raise NotFound(f"target {self.description} restarted during the request (host pid {self.pid} -> {pid})")

    def open_namespace(self, name: str) -> int:
        """An fd for the target's namespace ``name`` (read while the pidfd pins it)."""
        try:
            return os.open(f"/proc/{self.pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except PermissionError:
            raise PermissionDenied(
                f"the daemon may not inspect target {self.description} (host pid {self.pid}): "
                f"access to /proc/{self.pid}/ns/{name} was denied (the daemon must run as root)"
            ) from None
        except FileNotFoundError:
            raise NotFound(f"target {self.description} (host pid {self.pid}) has exited") from None

    def close(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def __enter__(self) -> HeldTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def refuse_protected(pid: int, description: str) -> None:
    """Targets no fault may touch, whatever a client asks."""
    if pid == 1:
        raise PermissionDenied(
            f"target {description} is PID 1 of the daemon's pid namespace (the node's init); refused"
        )
    if pid in procfs.ancestors(os.getpid()):
        raise PermissionDenied(f"target {description} (host pid {pid}) is the chaos daemon or one of its ancestors; refused")


@dataclasses.dataclass
class Confinement:
    """What the confine helper needs to run a program as the target would: fds to pass and its arguments."""

    fds: list[int]
    args: list[str]

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def confinement(
    target: HeldTarget, mounts: list[procfs.CgroupMount], skip_hierarchies: frozenset[str],
    namespaces: Sequence[str] = NAMESPACES, user: tuple[int, int] | None = None, skip_v2: bool = False,
) -> Confinement:
    """Open the target's namespaces, root and cgroups; read its credentials.

    ``skip_hierarchies``: cgroup hierarchies of the daemon's own (its tracking
    hierarchy), never joined. ``skip_v2``: the program's tracking cgroup is a
    child of the target's cgroup v2, which it joins instead. ``namespaces``: which of the target's to enter;
    without "mnt" the target's root is not entered either, so the program
    comes from the daemon's filesystem. ``user``: (uid, gid) to run as with no
    capabilities at all, instead of the target's credentials.
    """
    result = Confinement([], [])
    try:
        _open_namespaces(target, result, namespaces)
        if "mnt" in namespaces:
            root = _open(target, f"/proc/{target.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            result.fds.append(root)
            result.args += ["--root-fd", str(root)]
        _open_cgroups(target, mounts, skip_hierarchies, result, skip_v2)
        if user is None:
            _credentials(target, result)
        else:
            result.args += ["--uid", str(user[0]), "--gid", str(user[1]),
                            "--cap-bnd", "0", "--cap-eff", "0", "--cap-inh", "0"]
        target.check_alive()
    except BaseException:
        result.close()
        raise
    return result


def cgroups_of(target: HeldTarget, mounts: list[procfs.CgroupMount], skip_hierarchies: frozenset[str],
               skip_v2: bool = False) -> Confinement:
    """The target's cgroups alone, to join (``confinement``'s, without namespaces or credentials): one of the
    daemon's own programs serving a target (a packet queue) is charged to it and held to its limits."""
    result = Confinement([], [])
    try:
        _open_cgroups(target, mounts, skip_hierarchies, result, skip_v2)
        target.check_alive()
    except BaseException:
        result.close()
        raise
    return result


def _open(target: HeldTarget, path: str, flags: int) -> int:
    try:
        return os.open(path, flags)
    except PermissionError:
        raise PermissionDenied(f"the daemon may not open {path} of target {target.description}") from None
    except FileNotFoundError:
        raise NotFound(f"target {target.description} (host pid {target.pid}) has exited") from None


def _open_namespaces(target: HeldTarget, result: Confinement, namespaces: Sequence[str]) -> None:
    for name in [n for n in NAMESPACES if n in namespaces]:  # the helper's order, whatever the caller's
        fd = target.open_namespace(name)
        own = os.stat(f"/proc/self/ns/{name}")
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
            os.close(fd)  # already there (and a user namespace cannot be re-entered)
            continue
        result.fds.append(fd)
        result.args += ["--ns-fd", f"{name}:{fd}"]


def v2_cgroup(target: HeldTarget) -> str | None:
    """The target's cgroup in the unified hierarchy, as the node names it; None on a cgroup v1 node."""
    memberships = _memberships(target)
    for membership in memberships:
        if membership.v2:
            _check_visible(target, membership)
            return membership.path
    return None


def _memberships(target: HeldTarget) -> list[procfs.CgroupMembership]:
    try:
        return procfs.read_cgroups(target.pid)
    except FileNotFoundError:
        raise NotFound(f"target {target.description} (host pid {target.pid}) has exited") from None


def _check_visible(target: HeldTarget, membership: procfs.CgroupMembership) -> None:
    if membership.path.startswith("/.."):
        raise FailedPrecondition(
            f"target {target.description} is outside the daemon's cgroup namespace ({membership.path}); the "
            "daemon enters the node's at start when it runs with the node's pid namespace (hostPID: true in "
            "Kubernetes) and may open /proc/1/ns/cgroup; otherwise run it in the node's cgroup namespace"
        )


def _open_cgroups(
    target: HeldTarget, mounts: list[procfs.CgroupMount], skip: frozenset[str], result: Confinement,
    skip_v2: bool,
) -> None:
    memberships = _memberships(target)
    has_v1_controllers = any(m.controllers and not _named_only(m.controllers) for m in memberships)
    for membership in memberships:
        if membership.controllers & skip or (skip_v2 and membership.v2):
            continue
        _check_visible(target, membership)
        directory = procfs.cgroup_dir(membership, mounts)
        # Named v1 hierarchies hold no resources, and on a hybrid host the v2
        # tree holds none either: those are joined when visible, not required.
        required = not _named_only(membership.controllers) and not (membership.v2 and has_v1_controllers)
        if directory is None:
            if required:
                hierarchy = ",".join(sorted(membership.controllers)) or "cgroup2"
                raise FailedPrecondition(
                    f"the {hierarchy} cgroup of target {target.description} ({membership.path}) is not mounted "
                    "where the daemon can see it; mount the host's /sys/fs/cgroup into the daemon"
                )
            continue
        try:
            fd = os.open(os.path.join(directory, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
        except OSError as err:
            if not required:
                continue
            raise FailedPrecondition(f"cannot join the cgroup {directory} of target {target.description}: {err}") from None
        result.fds.append(fd)
        result.args += ["--cgroup-fd", str(fd)]


def _named_only(controllers: frozenset[str]) -> bool:
    return bool(controllers) and all(c.startswith("name=") for c in controllers)


def _credentials(target: HeldTarget, result: Confinement) -> None:
    try:
        status = procfs.read_status(target.pid)
        uid_map, gid_map = procfs.read_id_map(target.pid, "uid"), procfs.read_id_map(target.pid, "gid")
    except FileNotFoundError:
        raise NotFound(f"target {target.description} (host pid {target.pid}) has exited") from None
    uid, gid = uid_map.inside(status.uid), gid_map.inside(status.gid)
    if uid is None or gid is None:
        raise FailedPrecondition(
            f"target {target.description} runs as uid {status.uid}/gid {status.gid}, "
            "which its own user namespace does not map"
        )
    groups = [g for g in (gid_map.inside(group) for group in status.groups) if g is not None]
    result.args += ["--uid", str(uid), "--gid", str(gid)]
    if groups:
        result.args += ["--groups", ",".join(map(str, groups))]
    result.args += [
        "--cap-bnd", f"{status.cap_bnd:x}",
        "--cap-eff", f"{status.cap_eff & status.cap_prm:x}",
        "--cap-inh", f"{status.cap_inh:x}",
    ]

