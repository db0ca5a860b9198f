"""Tracking what the daemon starts, so nothing outlives it.

Every program the daemon runs starts in a cgroup of its own, a probe. A
program inside a target cannot leave it by a double fork or a ``setsid``, and
killing a probe kills every process in it. Two kinds of probe, chosen by the
node's cgroup layout (``start_tracker``):

``NamedHierarchyTracker`` (cgroup v1 and hybrid nodes): probes live in a named
cgroup v1 hierarchy of the daemon's own, with no controllers. It is orthogonal
to the target's cgroups, which the program joins too, and invisible from
inside a target. The daemon mounts it, keeps a directory fd and detaches the
mount at once, so it is in no mount table: runc, mounting a
``--cgroupns=private`` container's cgroups (a kind node's), would otherwise try
to mount it too and fail (only ``name=systemd`` is known to it). Probes are
named, in the journal and in logs, by paths under ``DEFAULT_MOUNT_POINT``,
which the daemon maps to the detached hierarchy (``real``).

``SubtreeTracker`` (cgroup v2 nodes): a process has one cgroup in the unified
hierarchy, so a probe there must also be what holds the program to the
target's limits. A program run inside a target gets a probe made as a child of
the target's own cgroup (memory, CPU and pids limits and the freezer apply to
it as to the target); the daemon's own programs (a packet queue, a DNS
responder) get one in the daemon's cgroup. Probes are killed with
``cgroup.kill`` (Linux 5.14) and named by their cgroup path as the node sees
it. Named v1 hierarchies are not used there: ``cgroup_no_v1=named`` turns them
off, and a v2 node's tools expect no v1 hierarchy at all.

Each daemon names its probes after itself, ``d-<pid namespace>-<pid>-<start
time>`` (``procfs.instance_key``). At start a daemon kills and removes the
probes of daemons that are gone (killed, say, with SIGKILL).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import itertools
import logging
import os
import re
import signal
import tempfile
import time

from ..host import cgroups as node
from ..server.logs import log
from . import procfs

HIERARCHY = "name=pytest-chaos-probes"
DEFAULT_MOUNT_POINT = "/run/pytest-chaos/probes"
NAMED_V1, V2_SUBTREE = "cgroup-v1-named", "cgroup-v2"
KILL_ROUNDS = 200
# How long a synchronous removal waits for killed processes to leave their cgroup.
RMDIR_WAIT_S = 0.5
MNT_DETACH = 2
# A probe cgroup of the named hierarchy, relative to the mount point: d-<instance key>/p-<n>.
_PROBE_PATH = re.compile(r"d-[0-9]+-[0-9]+-[0-9]+/p-[0-9]+")
# A probe cgroup of the v2 subtree: the last component of its path (its daemon's instance key in group 1).
V2_PROBE = re.compile(r"pytest-chaos-probe\.d-([0-9]+-[0-9]+-[0-9]+)\.p-[0-9]+")
_libc = ctypes.CDLL(None, use_errno=True)


@dataclasses.dataclass
class Probe:
    """One program's cgroup: ``path``, its name (in the journal and in logs), ``real``, where the
    daemon reaches it, and a directory fd the confine helper joins through."""

    path: str
    real: str
    dir_fd: int


class ProbeTracker:
    """What every tracker does; this base tracks nothing (callers fall back to process groups)."""

    available = False
    description = "process groups only (no tracking cgroup)"
    # Whether a probe takes the place of the target's cgroup v2 membership (it is a child of it).
    replaces_v2_membership = False

    def __init__(self) -> None:
        self._names = itertools.count()
        self._probes: dict[str, Probe] = {}
        self.key = ""

    def start(self) -> bool:
        """Make tracking ready and sweep what daemons that are gone left; whether it is available."""
        return False

    def new_probe(self, parent: str | None = None) -> Probe | None:
        """A new probe; ``parent`` is the target's cgroup v2 path (used where ``replaces_v2_membership``)."""
        if not self.available:
            return None
        path = self._probe_path(parent, next(self._names))
        real = self.real(path)
        os.mkdir(real)
        probe = Probe(path, real, os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        self._probes[path] = probe
        return probe

    def _probe_path(self, parent: str | None, number: int) -> str:
        raise NotImplementedError

    def real(self, path: str) -> str:
        """Where the daemon reaches the probe cgroup named ``path``; ValueError unless it names one."""
        raise ValueError(f"{path!r} is not a probe cgroup: this daemon tracks programs by process group only")

    def release(self, probe: Probe) -> None:
        """Kill whatever is left of ``probe`` and remove its cgroup."""
        _remove_tree(probe.real)
        os.close(probe.dir_fd)
        self._probes.pop(probe.path, None)

    def discard(self, path: str, wait_s: float = RMDIR_WAIT_S) -> int:
        """Kill what is left in the probe cgroup named ``path`` (this daemon's, or one a daemon that is gone
        journaled) and remove it, waiting up to ``wait_s`` for the killed to leave it (a caller that can wait
        without blocking passes 0 and calls again); return how many processes were signalled."""
        killed = _remove_tree(self.real(path), wait_s)
        probe = self._probes.pop(path, None)
        if probe is not None:
            os.close(probe.dir_fd)
        return killed

    def kill_all(self) -> None:
        for probe in list(self._probes.values()):
            kill_cgroup(probe.real)

    def close(self) -> None:
        for probe in list(self._probes.values()):
            self.release(probe)

    def _log_sweep(self, killed: int) -> int:
        if killed:
            log(logging.WARNING, "killed processes left by a daemon that is gone", count=killed)
        return killed


class NamedHierarchyTracker(ProbeTracker):
    """Probes in a named cgroup v1 hierarchy of the daemon's own, detached from every mount table."""

    def __init__(self, mount_point: str = DEFAULT_MOUNT_POINT) -> None:
        super().__init__()
        self.mount_point = mount_point
        self.daemon_dir = ""
        self._root = mount_point  # where the hierarchy's root is reached: /proc/self/fd/N once detached
        self._root_fd: int | None = None

    def start(self) -> bool:
        try:
            self._mount()
        except OSError as err:
            log(logging.WARNING, "cannot mount a named cgroup hierarchy to track fault commands", error=str(err))
            return False
        self.available = True
        self.key = procfs.instance_key(os.getpid())
        self.daemon_dir = os.path.join(self.mount_point, f"d-{self.key}")
        self.description = f"named cgroup v1 hierarchy ({HIERARCHY}), {self.daemon_dir}"
        self.sweep_dead_daemons()
        os.makedirs(os.path.join(self._root, os.path.basename(self.daemon_dir)), exist_ok=True)
        return True

    def sweep_dead_daemons(self) -> int:
        """Kill and remove what daemons that are gone left behind; return how many processes were killed."""
        killed = 0
        for name in sorted(os.listdir(self._root)):
            if not name.startswith("d-") or procfs.instance_alive(name.removeprefix("d-")):
                continue
            directory = os.path.join(self._root, name)
            try:
                probe_dirs = [os.path.join(directory, p) for p in os.listdir(directory)]
            except FileNotFoundError:
                continue  # another daemon starting at the same time swept it first
            for probe_dir in probe_dirs + [directory]:
                if os.path.isdir(probe_dir):
                    killed += kill_cgroup(probe_dir)
                    _rmdir(probe_dir)
        return self._log_sweep(killed)

    def _probe_path(self, parent: str | None, number: int) -> str:
        return os.path.join(self.daemon_dir, f"p-{number}")

    def real(self, path: str) -> str:
        relative = os.path.relpath(os.path.normpath(path), self.mount_point)
        if not _PROBE_PATH.fullmatch(relative):
            raise ValueError(f"{path!r} is not a probe cgroup under {self.mount_point}")
        return os.path.join(self._root, relative)

    def close(self) -> None:
        super().close()
        if self.daemon_dir:
            _rmdir(os.path.join(self._root, os.path.basename(self.daemon_dir)))
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None

    def _mount(self) -> None:
        # A mount an older daemon left in the mount table breaks runc's --cgroupns=private containers.
        if _is_mounted(self.mount_point):
            _detach(self.mount_point)
        os.makedirs(os.path.dirname(self.mount_point), mode=0o755, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=os.path.basename(self.mount_point) + ".", dir=os.path.dirname(self.mount_point))
        try:
            options = f"none,{HIERARCHY}".encode()
            if _libc.mount(b"pytest-chaos-probes", staging.encode(), b"cgroup", 0, options) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"mount -t cgroup -o {options.decode()} {staging}: {os.strerror(err)}")
            self._root_fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            _detach(staging)
        finally:
            os.rmdir(staging)
        self._root = f"/proc/self/fd/{self._root_fd}"


class SubtreeTracker(ProbeTracker):
    """Probes in the unified hierarchy: children of the target's cgroup, or of the daemon's own."""

    replaces_v2_membership = True

    def __init__(self) -> None:
        super().__init__()
        self.home = ""  # the daemon's own cgroup: where its own programs' probes go

    def start(self) -> bool:
        own = next((m.path for m in procfs.read_cgroups(os.getpid()) if m.v2), None)
        if own is None or own.startswith("/.."):
            log(logging.WARNING, "cannot track fault commands in cgroup v2: the daemon's own cgroup is "
                "not in its cgroup namespace's tree", cgroup=own)
            return False
        self.key = procfs.instance_key(os.getpid())
        self.home = own
        try:  # the daemon's own cgroup must be reachable and take children
            probe_dir = _v2_dir(self._probe_path(None, next(self._names)))
            os.mkdir(probe_dir)
            os.rmdir(probe_dir)
        except (OSError, ValueError) as err:
            log(logging.WARNING, "cannot track fault commands in cgroup v2 subtrees", error=str(err))
            return False
        self.available = True
        self.description = f"cgroup v2 subtrees (pytest-chaos-probe.d-{self.key}.p-N), killed with cgroup.kill"
        self.sweep_dead_daemons()
        return True

    def sweep_dead_daemons(self) -> int:
        """Kill and remove the probes of daemons that are gone, wherever they are in the tree."""
        killed = 0
        for directory, names in _walk_v2_tree():
            for name in names:
                match = V2_PROBE.fullmatch(name)
                if match and not procfs.instance_alive(match.group(1)):
                    killed += _remove_tree(os.path.join(directory, name))
        return self._log_sweep(killed)

    def _probe_path(self, parent: str | None, number: int) -> str:
        base = parent if parent is not None else self.home
        return f"{base.rstrip('/')}/pytest-chaos-probe.d-{self.key}.p-{number}"

    def real(self, path: str) -> str:
        if os.path.normpath(path) != path or not path.startswith("/") or not V2_PROBE.fullmatch(os.path.basename(path)):
            raise ValueError(f"{path!r} is not a probe cgroup of the unified hierarchy")
        return _v2_dir(path)


def _v2_dir(path: str) -> str:
    directory = procfs.cgroup_dir(procfs.CgroupMembership(frozenset(), path), procfs.cgroup_mounts())
    if directory is None:
        raise ValueError(f"the cgroup {path} is not under any cgroup v2 mount the daemon can see "
                         "(mount the node's /sys/fs/cgroup into it)")
    return directory


def _walk_v2_tree() -> list[tuple[str, list[str]]]:
    """(directory, child cgroup names) for every cgroup the daemon's widest cgroup v2 mount shows;
    probes are not descended into."""
    mounts = [m for m in procfs.cgroup_mounts() if not m.controllers]
    if not mounts:
        return []
    top = min(mounts, key=lambda m: len(m.root)).mount_point
    found, pending = [], [top]
    while pending:
        directory = pending.pop()
        try:
            names = [e.name for e in os.scandir(directory) if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        found.append((directory, names))
        pending += [os.path.join(directory, n) for n in names if not V2_PROBE.fullmatch(n)]
    return found


def start_tracker(layout: str, choice: str = "auto", mount_point: str = DEFAULT_MOUNT_POINT) -> ProbeTracker:
    """The tracker for ``layout`` (``node.cgroup_layout()``), or the one ``choice`` names, started; a
    tracker that tracks nothing when none can run (logged)."""
    if choice == "auto":
        order = [V2_SUBTREE, NAMED_V1] if layout == node.V2 else [NAMED_V1, V2_SUBTREE]
    else:
        order = [choice]
    for name in order:
        tracker: ProbeTracker = SubtreeTracker() if name == V2_SUBTREE else NamedHierarchyTracker(mount_point)
        if tracker.start():
            return tracker
    log(logging.WARNING, "no tracking cgroup: a command that leaves its process group may outlive a timeout, "
        "and faults that leave programs running are refused")
    return ProbeTracker()


def _detach(mount_point: str) -> None:
    if _libc.umount2(mount_point.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount -l {mount_point}: {os.strerror(err)}")



def kill_cgroup(path: str) -> int:
    """SIGKILL every process in the cgroup at ``path`` until none is left; return how many were signalled.
    cgroup v2's ``cgroup.kill`` takes the whole subtree at once; elsewhere each process is signalled."""
    signalled: set[int] = set()
    kill_file = os.path.join(path, "cgroup.kill")
    for round_ in range(KILL_ROUNDS):
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids = [int(line) for line in f if line.strip()]
        except OSError as err:  # ENODEV: removed while read, by another daemon sweeping it too
            if err.errno in (errno.ENOENT, errno.ENODEV):
                break
            raise
        if not pids:
            break
        signalled.update(pids)
        if round_ == 0 and os.path.exists(kill_file):
            with contextlib.suppress(OSError), open(kill_file, "w") as f:
                f.write("1")
        else:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.001)
    return len(signalled)


def _remove_tree(path: str, wait_s: float = RMDIR_WAIT_S) -> int:
    """Kill everything in the cgroup ``path`` and below (a target may have made cgroups in its probe), then
    remove it, children first; return how many processes were signalled."""
    killed = kill_cgroup(path)
    with contextlib.suppress(OSError):
        for entry in os.scandir(path):
            if entry.is_dir(follow_symlinks=False):
                killed += _remove_tree(entry.path, wait_s)
    _rmdir(path, wait_s)
    return killed


def _rmdir(path: str, wait_s: float = RMDIR_WAIT_S) -> None:
    # A killed process leaves its cgroup a moment after the signal: longer on a loaded machine, or for a
    # process with much memory to free.
    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.005)
    if wait_s:
        log(logging.WARNING, "could not remove a probe cgroup", path=path)


def _is_mounted(mount_point: str) -> bool:
    return any(m.mount_point == mount_point and HIERARCHY in m.controllers for m in procfs.cgroup_mounts())
