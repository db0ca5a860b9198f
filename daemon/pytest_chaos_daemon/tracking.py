"""Tracking what the daemon starts, so nothing outlives it.

Every program the daemon runs starts in a cgroup of its own in a named cgroup
v1 hierarchy (no controllers, so it does not compete with the target's own
cgroups, which the program joins too). The hierarchy is mounted only in the
daemon's mount namespace: a program inside a target cannot see it, so a
double fork or a ``setsid`` does not get it out. Killing a probe kills every
process of its cgroup.

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
import time

from . import procfs
from .logs import log

HIERARCHY = "name=pytest-chaos-probes"
DEFAULT_MOUNT_POINT = "/run/pytest-chaos/probes"
KILL_ROUNDS = 200
# A probe cgroup, relative to the mount point: d-<instance key>/p-<n>.
_PROBE_PATH = re.compile(r"d-[0-9]+-[0-9]+-[0-9]+/p-[0-9]+")
_libc = ctypes.CDLL(None, use_errno=True)


@dataclasses.dataclass
class Probe:
    """One program's cgroup: ``path`` and a directory fd the confine helper joins through."""

    path: str
    dir_fd: int


class ProbeTracker:
    """The daemon's probe cgroups. Without cgroup v1 named hierarchies it is unavailable,
    and callers fall back to process groups."""

    def __init__(self, mount_point: str = DEFAULT_MOUNT_POINT) -> None:
        self.mount_point = mount_point
        self.available = False
        self.daemon_dir = ""
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
        os.makedirs(self.daemon_dir, exist_ok=True)

    def sweep_dead_daemons(self) -> int:
        """Kill and remove what daemons that are gone left behind; return how many processes were killed."""
        killed = 0
        for name in sorted(os.listdir(self.mount_point)):
            if not name.startswith("d-") or procfs.instance_alive(name.removeprefix("d-")):
                continue
            directory = os.path.join(self.mount_point, name)
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
        os.mkdir(path)
        probe = Probe(path, os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        self._probes[path] = probe
        return probe

    def release(self, probe: Probe) -> None:
        """Kill whatever is left of ``probe`` and remove its cgroup."""
        kill_cgroup(probe.path)
        os.close(probe.dir_fd)
        _rmdir(probe.path)
        self._probes.pop(probe.path, None)

    def discard(self, path: str) -> int:
        """Kill what is left in the probe cgroup at ``path`` (this daemon's, or one a daemon that is gone
        journaled) and remove it; return how many processes were signalled."""
        if not _PROBE_PATH.fullmatch(os.path.relpath(os.path.normpath(path), self.mount_point)):
            raise ValueError(f"{path!r} is not a probe cgroup under {self.mount_point}")
        killed = kill_cgroup(path)
        probe = self._probes.pop(path, None)
        if probe is not None:
            os.close(probe.dir_fd)
        _rmdir(path)
        return killed

    def kill_all(self) -> None:
        for probe in list(self._probes.values()):
            kill_cgroup(probe.path)

    def close(self) -> None:
        for probe in list(self._probes.values()):
            self.release(probe)
        if self.daemon_dir:
            _rmdir(self.daemon_dir)

    def _mount(self) -> None:
        if _is_mounted(self.mount_point):
            return
        os.makedirs(self.mount_point, mode=0o700, exist_ok=True)
        options = f"none,{HIERARCHY}".encode()
        if _libc.mount(b"pytest-chaos-probes", self.mount_point.encode(), b"cgroup", 0, options) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount -t cgroup -o {options.decode()} {self.mount_point}: {os.strerror(err)}")


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
