"""Tracking what the daemon starts, so nothing outlives it.

Every program the daemon runs starts in a cgroup of its own in a named cgroup
v1 hierarchy (no controllers, so it does not compete with the target's own
cgroups, which the program joins too). A program inside a target cannot see
the hierarchy, so a double fork or a ``setsid`` does not get it out. Killing a
probe kills every process of its cgroup.

The daemon mounts the hierarchy, keeps a directory fd and detaches the mount
at once, so it is in no mount table: runc, mounting a ``--cgroupns=private``
container's cgroups (a kind node's), would otherwise try to mount it too and
fail (only ``name=systemd`` is known to it). Probes are named, in the journal
and in logs, by paths under ``DEFAULT_MOUNT_POINT``, which the daemon maps to
the detached hierarchy (``ProbeTracker.real``).

Each daemon keeps its probes under ``d-<pid namespace>-<pid>-<start time>``
(``procfs.instance_key``).
At start a daemon removes the directories of daemons that are gone (killed,
say, with SIGKILL), killing whatever is left in them.
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

from . import procfs
from .logs import log

HIERARCHY = "name=pytest-chaos-probes"
DEFAULT_MOUNT_POINT = "/run/pytest-chaos/probes"
KILL_ROUNDS = 200
MNT_DETACH = 2
# A probe cgroup, relative to the mount point: d-<instance key>/p-<n>.
_PROBE_PATH = re.compile(r"d-[0-9]+-[0-9]+-[0-9]+/p-[0-9]+")
_libc = ctypes.CDLL(None, use_errno=True)


@dataclasses.dataclass
class Probe:
    """One program's cgroup: ``path``, its name (under ``DEFAULT_MOUNT_POINT``), ``real``, where the
    daemon reaches it, and a directory fd the confine helper joins through."""

    path: str
    real: str
    dir_fd: int


class ProbeTracker:
    """The daemon's probe cgroups. Without cgroup v1 named hierarchies it is unavailable,
    and callers fall back to process groups."""

    def __init__(self, mount_point: str = DEFAULT_MOUNT_POINT) -> None:
        self.mount_point = mount_point
        self.available = False
        self.daemon_dir = ""
        self._root = mount_point  # where the hierarchy's root is reached: /proc/self/fd/N once detached
        self._root_fd: int | None = None
        self._names = itertools.count()
        self._probes: dict[str, Probe] = {}

    def start(self) -> None:
        try:
            self._mount()
        except OSError as err:
            log(logging.WARNING, "cannot mount a named cgroup hierarchy to track fault commands; "
                "a command that leaves its process group may outlive a timeout", error=str(err))
            return
        self.available = True
        self.daemon_dir = os.path.join(self.mount_point, f"d-{procfs.instance_key(os.getpid())}")
        self.sweep_dead_daemons()
        os.makedirs(os.path.join(self._root, os.path.basename(self.daemon_dir)), exist_ok=True)

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
        if killed:
            log(logging.WARNING, "killed processes left by a daemon that is gone", count=killed)
        return killed

    def new_probe(self) -> Probe | None:
        if not self.available:
            return None
        path = os.path.join(self.daemon_dir, f"p-{next(self._names)}")
        real = self.real(path)
        os.mkdir(real)
        probe = Probe(path, real, os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        self._probes[path] = probe
        return probe

    def real(self, path: str) -> str:
        """Where the daemon reaches the probe cgroup named ``path``; ValueError unless it names one."""
        relative = os.path.relpath(os.path.normpath(path), self.mount_point)
        if not _PROBE_PATH.fullmatch(relative):
            raise ValueError(f"{path!r} is not a probe cgroup under {self.mount_point}")
        return os.path.join(self._root, relative)

    def release(self, probe: Probe) -> None:
        """Kill whatever is left of ``probe`` and remove its cgroup."""
        kill_cgroup(probe.real)
        os.close(probe.dir_fd)
        _rmdir(probe.real)
        self._probes.pop(probe.path, None)

    def discard(self, path: str) -> int:
        """Kill what is left in the probe cgroup named ``path`` (this daemon's, or one a daemon that is gone
        journaled) and remove it; return how many processes were signalled."""
        real = self.real(path)
        killed = kill_cgroup(real)
        probe = self._probes.pop(path, None)
        if probe is not None:
            os.close(probe.dir_fd)
        _rmdir(real)
        return killed

    def kill_all(self) -> None:
        for probe in list(self._probes.values()):
            kill_cgroup(probe.real)

    def close(self) -> None:
        for probe in list(self._probes.values()):
            self.release(probe)
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


def _detach(mount_point: str) -> None:
    if _libc.umount2(mount_point.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount -l {mount_point}: {os.strerror(err)}")


def kill_cgroup(path: str) -> int:
    """SIGKILL every process in the cgroup at ``path`` until none is left; return how many were signalled."""
    signalled: set[int] = set()
    for _ in range(KILL_ROUNDS):
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids = [int(line) for line in f if line.strip()]
        except OSError as err:  # ENODEV: removed while read, by another daemon sweeping it too
            if err.errno in (errno.ENOENT, errno.ENODEV):
                break
            raise
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            signalled.add(pid)
        time.sleep(0.001)
    return len(signalled)


def _rmdir(path: str) -> None:
    # A killed process leaves its cgroup a moment after the signal.
    for _ in range(100):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.005)
    log(logging.WARNING, "could not remove a probe cgroup", path=path)


def _is_mounted(mount_point: str) -> bool:
    return any(m.mount_point == mount_point and HIERARCHY in m.controllers for m in procfs.cgroup_mounts())
