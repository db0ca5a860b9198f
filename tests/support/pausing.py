"""Targets that count, watched from outside the daemon, for the container-pause tests.

A counting target appends a byte to a file every 20 ms: a containerd
container to a file in its own rootfs directory, a Docker container to one in
its rootfs as the host mounts it (overlay2's merged directory), a ``pid://``
process to a file of the test's. The test reads the file's size; a paused
target stops growing it. Whether the target is frozen is read from the
kernel too: the freezer cgroup's state for a container, the process state
(``T``) of the process and its descendants for ``pid://``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb
from pytest_chaos_daemon.confinement import procfs

from tests.support.targets import Targets, run, wait_for

PERIOD_S = 0.02  # how often a counting target writes
STILL_S = 0.5  # a paused target writes nothing over this long (25 periods)
RUNTIMES = ("containerd", "docker", "pid")


@dataclasses.dataclass
class Counting:
    """One counting target: how the daemon and the plugin name it, and what the test sees of it."""

    runtime: str
    container_id: str  # with its prefix, as the daemon takes it
    selector: dict
    counter: str  # the file it appends to, as the host sees it
    host_pid: int

    def count(self) -> int:
        try:
            return os.path.getsize(self.counter)
        except FileNotFoundError:
            return 0

    def still(self, interval: float = STILL_S) -> bool:
        """Whether the counter stays put over ``interval`` (sampled at both ends)."""
        before = self.count()
        time.sleep(interval)
        return self.count() == before

    def wait_advancing(self, timeout: float = 10.0) -> float:
        """Wait until the target writes twice more; return how long that took."""
        start, before = time.monotonic(), self.count()
        wait_for(lambda: self.count() >= before + 2, f"{self.container_id} to count again", timeout)
        return time.monotonic() - start

    def frozen(self) -> bool:
        """Paused as the kernel reports it: the freezer cgroup frozen, or every process stopped."""
        if self.runtime == "pid":
            states = [process_state(pid) for pid in process_tree(self.host_pid)]
            return states[0] == "T" and all(state in ("T", "Z", None) for state in states)
        return freezer_state(self.host_pid) == "FROZEN"

    def thawed(self) -> bool:
        if self.runtime == "pid":
            return process_state(self.host_pid) not in ("T", None)
        return freezer_state(self.host_pid) == "THAWED"


def start_counting(targets: Targets, runtime: str, directory: Path) -> Counting:
    """Start a counting target of ``runtime`` (containerd, docker, pid) and wait until it counts."""
    directory.mkdir(parents=True, exist_ok=True)
    loop = f"while :; do echo -n . >> /tmp/count; usleep {int(PERIOD_S * 1e6)}; done"
    if runtime == "containerd":
        rootfs = directory / "rootfs"
        shutil.copytree(targets.rootfs, rootfs, symlinks=True)
        name = targets.containerd("sh", "-c", loop, rootfs=str(rootfs))
        tasks = run("ctr", "-n", targets.containerd_namespace, "tasks", "ls").stdout.splitlines()
        host_pid = int(next(line.split()[1] for line in tasks if line.split()[0] == name))
        counting = Counting(runtime, f"containerd://{name}", {"containers": [name]}, str(rootfs / "tmp/count"),
                            host_pid)
    elif runtime == "docker":
        full_id = targets.docker("sh", "-c", loop)
        inspected = json.loads(run("docker", "inspect", full_id).stdout)[0]
        merged = inspected["GraphDriver"]["Data"]["MergedDir"]
        counting = Counting(runtime, f"docker://{full_id}", {"containers": [full_id]}, f"{merged}/tmp/count",
                            inspected["State"]["Pid"])
    else:
        counter = directory / "count"
        host_pid = targets.process("sh", "-c", f"while :; do printf . >> {counter}; sleep {PERIOD_S}; done")
        counting = Counting(runtime, f"pid://{host_pid}", {"pids": [host_pid]}, str(counter), host_pid)
    counting.wait_advancing(timeout=20)
    return counting


def process_state(pid: int) -> str | None:
    """The state letter in /proc/PID/stat (``T`` stopped, ``Z`` zombie...); None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def process_tree(root: int) -> list[int]:
    """``root`` and its live descendants."""
    order, queue = [], [root]
    while queue:
        pid = queue.pop(0)
        order.append(pid)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    queue.extend(int(child) for child in f.read().split())
    return order


def freezer_state(pid: int) -> str | None:
    """``FROZEN``, ``FREEZING`` or ``THAWED`` for the freezer cgroup of ``pid``, from the host's
    cgroup mounts (v1 ``freezer.state``, v2 ``cgroup.events``); None when there is none."""
    try:
        freezer = Freezer.of(pid)
        with open(freezer.state_file) as f:
            text = f.read()
    except (OSError, LookupError):
        return None
    if freezer.v1:
        return text.strip()
    return "FROZEN" if "frozen 1" in text.splitlines() else "THAWED"


@dataclasses.dataclass(frozen=True)
class Freezer:
    """The freezer of ``pid``'s cgroup as the host mounts it: v1 ``freezer.state``, or v2 ``cgroup.freeze``
    with the state in ``cgroup.events``. Tests freeze and thaw by hand with ``set``."""

    directory: str
    v1: bool

    @classmethod
    def of(cls, pid: int) -> Freezer:
        memberships = procfs.read_cgroups(pid)
        mounts = procfs.cgroup_mounts()
        for membership in [m for m in memberships if "freezer" in m.controllers] + [m for m in memberships if m.v2]:
            directory = procfs.cgroup_dir(membership, mounts)
            v1 = bool(membership.controllers)
            if directory and os.path.exists(os.path.join(directory, "freezer.state" if v1 else "cgroup.freeze")):
                return cls(directory, v1)
        raise LookupError(f"process {pid} has no freezer cgroup mounted here")

    @property
    def state_file(self) -> str:
        """The file the kernel reports the state in; it reads ``frozen_text`` while frozen."""
        return os.path.join(self.directory, "freezer.state" if self.v1 else "cgroup.events")

    @property
    def frozen_text(self) -> str:
        return "FROZEN" if self.v1 else "frozen 1"

    def set(self, frozen: bool) -> None:
        control = "freezer.state" if self.v1 else "cgroup.freeze"
        value = ("FROZEN" if frozen else "THAWED") if self.v1 else ("1" if frozen else "0")
        with open(os.path.join(self.directory, control), "w") as f:
            f.write(value)


# The daemon's API, called directly.

def apply_pause(stub, container_id: str, injection_id: str, lease_s: float = 30.0, duration_s: float = 0.0,
                owner: str = "tests") -> pb.ApplyResponse:
    request = pb.ApplyRequest(container_id=container_id, container_pause=pb.ContainerPause(),
                              injection=pb.Injection(id=injection_id, owner=owner))
    request.injection.lease.FromNanoseconds(int(lease_s * 1e9))
    if duration_s:
        request.duration.FromNanoseconds(int(duration_s * 1e9))
    return stub.Apply(request, timeout=30)


def recover(stub, *injection_ids: str) -> list[pb.InjectionStatus]:
    return list(stub.Recover(pb.RecoverRequest(injection_ids=injection_ids), timeout=30).injections)


def listing(stub, include_ended: bool = False) -> dict[str, pb.InjectionStatus]:
    reply = stub.ListInjections(pb.ListInjectionsRequest(include_ended=include_ended), timeout=30)
    return {status.injection_id: status for status in reply.injections}


def seconds(timestamp) -> float:
    return timestamp.seconds + timestamp.nanos / 1e9


def log_entries(log_text: str, message: str) -> list[dict]:
    """The JSON log lines of a daemon whose ``msg`` is ``message``."""
    entries = []
    for line in log_text.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("msg") == message:
                entries.append(entry)
    return entries


def until(predicate: Callable[[], object], what: str, timeout: float = 10.0, every: float = 0.005) -> float:
    """Poll ``predicate`` finely until true; return the seconds it took. Raises on ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - start


def pytest_argv(*args: str) -> list[str]:
    """A pytest command line for a user test file, with the chaos plugin and nothing cached."""
    return [sys.executable, "-m", "pytest", "-p", "chaos", "-p", "no:cacheprovider", *args]


def kill_subprocess(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()
