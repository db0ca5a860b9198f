"""What a test run may not leave behind, checked when the session ends.

Everything the suite starts is its own to remove: target processes,
containers, the network bed's links and namespaces, probe cgroups. A run that
leaves any of it fails, and what was left is listed (and removed, so the next
run starts clean). Processes are told apart by time and parentage: started
during the session and orphaned to init, as a killed ``unshare`` leaves the
process it forked, in the pid namespace it made; container shims, which init
adopts by design, and anything in this run's own pid namespace are not
counted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

from pytest_chaos_daemon.confinement import procfs
from pytest_chaos_daemon.confinement.tracking import V2_PROBE

CONTAINERD_NAMESPACE = "pytest-chaos-test"
DOCKER_NAME_PREFIX = "/chaos-test-"
NETNS_DIRS = ("/run/pytest-chaos-netns",)
LINK_PREFIXES = ("pcb-",)
RUNTIME_PROCESSES = ("containerd-shim", "conmon", "docker-proxy")
POD_PLACEMENT_PREFIX = "pytest-chaos-pod-"


def boot_ticks_now() -> float:
    """Clock ticks since boot, as /proc/PID/stat's start times count them."""
    with open("/proc/uptime") as f:
        return float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK")


def orphans_since(ticks: float) -> list[tuple[int, str]]:
    """Processes started after ``ticks`` in a pid namespace of their own (not this one) whose parent is init:
    a target whose ``unshare`` or runtime was killed under it. Processes of this pid namespace are never
    counted: whatever else runs on the machine meanwhile is not the suite's."""
    own_namespace = os.readlink("/proc/self/ns/pid")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        state, parent, started = fields[0], int(fields[1]), int(fields[19])
        if parent != 1 or started < ticks or state == "Z" or not command:
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") == own_namespace:
                continue
        except OSError:
            continue
        if any(name in command.split(" ", 1)[0] for name in RUNTIME_PROCESSES):
            continue
        found.append((int(entry), command[:120]))
    return found


def _run(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def leftovers(session_start_ticks: float) -> list[str]:
    """What the run left, removed as it is found."""
    left: list[str] = []
    for pid, command in orphans_since(session_start_ticks):
        left.append(f"process {pid}: {command}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for container in _run("ctr", "-n", CONTAINERD_NAMESPACE, "containers", "ls", "-q").split():
        left.append(f"containerd container {CONTAINERD_NAMESPACE}/{container}")
        _run("ctr", "-n", CONTAINERD_NAMESPACE, "tasks", "kill", "-s", "SIGKILL", container)
        _run("ctr", "-n", CONTAINERD_NAMESPACE, "tasks", "delete", "-f", container)
        _run("ctr", "-n", CONTAINERD_NAMESPACE, "containers", "delete", container)
    for line in _run("docker", "ps", "-a", "--format", "{{.ID}} {{.Names}}").splitlines():
        identifier, _, name = line.partition(" ")
        if ("/" + name).startswith(DOCKER_NAME_PREFIX):
            left.append(f"docker container {name}")
            _run("docker", "rm", "-f", identifier)
    for directory in NETNS_DIRS:
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(directory):
                left.append(f"network namespace {directory}/{name}")
                _run("umount", os.path.join(directory, name))
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))
    for cgroup in cgroups_left():
        left.append(f"cgroup {cgroup}")
        _remove_cgroup(cgroup)
    for line in _run("ip", "-o", "link", "show").splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0] if line.count(":") >= 2 else ""
        if name.startswith(LINK_PREFIXES):
            left.append(f"link {name}")
            _run("ip", "link", "delete", name)
    return left


def cgroups_left() -> list[str]:
    """Probe cgroups in the unified hierarchy of daemons that are gone, and the pod placements of tests
    (tests/support/pod_placement.py): directories of the cgroup v2 tree, deepest first."""
    found = []
    mounts = [m for m in procfs.cgroup_mounts() if not m.controllers]
    top = min(mounts, key=lambda m: len(m.root)).mount_point if mounts else None
    for directory, names, _ in os.walk(top) if top else ():
        for name in names:
            probe = V2_PROBE.fullmatch(name)
            if (probe and not procfs.instance_alive(probe.group(1))) or name.startswith(POD_PLACEMENT_PREFIX):
                found.append(os.path.join(directory, name))
    return sorted(found, key=len, reverse=True)


def _remove_cgroup(path: str) -> None:
    with contextlib.suppress(OSError):
        with open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
    for directory, _, _ in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):
            os.rmdir(directory)
