"""Real targets for chaos experiments, and the waiting and process-finding helpers the tests share.

Targets are real: a process as PID 1 of fresh mount and pid namespaces
(``unshare``), containerd containers (``ctr run`` on a busybox rootfs) and
Docker containers (``docker run`` of an image imported from the same rootfs).
The root ``conftest.py`` wraps ``Targets`` in the ``targets`` and
``module_targets`` fixtures.

A target whose runtime is missing skips its test, except under CI (``CI``
set), where every runtime is .ci/run's job and a skip would hide a broken
install: there it fails (``require``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

BUSYBOX = "/bin/busybox"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
DOCKER_SOCKET = "/var/run/docker.sock"
# Test containers live in their own containerd namespace: the local backend
# scans all namespaces, and cleanup can tell ours apart.
CONTAINERD_NAMESPACE = "pytest-chaos-test"
DOCKER_IMAGE = "pytest-chaos/busybox:test"
_names = itertools.count()


def require(condition: bool, what: str) -> None:
    """Skip when ``what`` is missing; fail instead under CI, where .ci/run provides it."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing, and .ci/run is responsible for it")
    pytest.skip(f"{what} is missing")


def run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` every ``interval`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")


def running(argument: str) -> list[int]:
    """PIDs of live processes whose command line holds ``argument`` as whole words: "sleep 4244" matches
    ``sleep 4244`` but not a container id or shim argument that merely contains "4244"."""
    pattern = re.compile(rf"(?<![\w.-]){re.escape(argument)}(?![\w.-])")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if pattern.search(cmdline) and not zombie:
            found.append(int(entry))
    return found


def container_init_pid(container_id: str) -> int:
    """This host's PID of a container's init process: the process in the container's cgroup that is PID 1 of
    its own pid namespace. Read from this host's /proc, so it finds a pod's container on any node that shares
    this kernel (a kind node is a container here), whatever PID the node's runtime reports."""
    bare = container_id.split("://", 1)[-1]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cgroup") as f:
                if bare not in f.read():
                    continue
            with open(f"/proc/{entry}/status") as f:
                nspid = next(line.split()[1:] for line in f if line.startswith("NSpid:"))
        except (OSError, StopIteration):
            continue
        if nspid[-1] == "1":
            return int(entry)
    raise LookupError(f"no init process of container {container_id} on this host")


def pid_on_node(host_pid: int) -> int:
    """The PID a node's daemon reports for this host's process ``host_pid``, a container's init: its PID in the
    pid namespace just above the container's own (a kind node's; this host's when the node is this host)."""
    with open(f"/proc/{host_pid}/status") as f:
        nspid = next(line.split()[1:] for line in f if line.startswith("NSpid:"))
    return int(nspid[-2]) if len(nspid) >= 2 else int(nspid[0])


def gone(argument: str, timeout: float = 10.0) -> bool:
    """Wait until no process's command line holds ``argument``."""
    wait_for(lambda: not running(argument), f"every '{argument}' process to end", timeout)
    return True


def unique_name(prefix: str = "chaos-test") -> str:
    return f"{prefix}-{os.getpid()}-{next(_names)}-{uuid.uuid4().hex[:6]}"


def make_busybox_rootfs(root: os.PathLike[str] | str, applets: bool = True) -> str:
    """A root filesystem holding busybox-static and (optionally) links for its applets."""
    require(os.path.exists(BUSYBOX), f"busybox-static ({BUSYBOX})")
    root = os.fspath(root)
    for directory in ("bin", "proc", "dev", "sys", "tmp", "etc"):
        os.makedirs(os.path.join(root, directory), exist_ok=True)
    shutil.copy2(BUSYBOX, os.path.join(root, "bin", "busybox"))
    with open(os.path.join(root, "etc", "passwd"), "w") as passwd:
        passwd.write("root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    if applets:
        for applet in run(BUSYBOX, "--list").stdout.split():
            if applet != "busybox":
                os.symlink("busybox", os.path.join(root, "bin", applet))
    return root


class Targets:
    """Starts targets and removes every one of them on ``close``."""

    containerd_namespace = CONTAINERD_NAMESPACE
    require = staticmethod(require)

    def __init__(self, rootfs: str) -> None:
        self.rootfs = rootfs
        self._processes: list[subprocess.Popen[bytes]] = []
        self._inner: list[int] = []  # what unshare forked: killing unshare leaves it running
        self._containerd: list[str] = []
        self._docker: list[str] = []

    def process(self, *argv: str) -> int:
        """Start ``argv`` as PID 1 of new mount and pid namespaces; return its host PID."""
        require(shutil.which("unshare") is not None, "unshare (util-linux)")
        outer = subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "--mount-proc", *argv])
        self._processes.append(outer)
        children = f"/proc/{outer.pid}/task/{outer.pid}/children"

        def inner_pid() -> int | None:
            # unshare forks, then the child execs argv: wait until it has.
            with contextlib.suppress(OSError, IndexError):
                pid = int(open(children).read().split()[0])
                if open(f"/proc/{pid}/cmdline").read().split("\0")[0] == argv[0]:
                    return pid
            return None

        pid = int(wait_for(inner_pid, f"{argv} to start"))
        self._inner.append(pid)
        return pid

    def containerd(self, *argv: str, labels: dict[str, str] | None = None, rootfs: str | None = None,
                   mounts: tuple[str, ...] = ()) -> str:
        """Run a container in containerd (default command ``sleep 3600``); return its id. ``mounts``: host
        directories bound read-only at the same path (the host's /usr, for a Python inside)."""
        require(os.path.exists(CONTAINERD_SOCKET) and shutil.which("ctr") is not None, "containerd")
        container_id = unique_name()
        self._containerd.append(container_id)  # before running: a failed start still leaves a container
        binds = [arg for path in mounts for arg in ("--mount", f"type=bind,src={path},dst={path},options=rbind:ro")]
        run("ctr", "-n", CONTAINERD_NAMESPACE, "run", "-d", "--env", "PATH=/bin", *binds,
            *label_args(labels), "--rootfs", rootfs or self.rootfs, container_id, *(argv or ("sleep", "3600")))
        return container_id

    def docker(self, *argv: str, labels: dict[str, str] | None = None, name: str | None = None) -> str:
        """Run a container in Docker, without network (default ``sleep 3600``); return its full id."""
        image = self.docker_image()
        name = name or unique_name()
        self._docker.append(name)  # before running: a failed start still leaves a container
        result = run("docker", "run", "-d", "--network", "none", "--name", name, *label_args(labels),
                     image, *(argv or ("sleep", "3600")))
        return result.stdout.strip()

    def containerd_with_sh(self, directory: os.PathLike[str] | str, script: str) -> str:
        """A containerd container (``sleep 3600``) whose /bin/sh runs ``script``, as a hostile or
        broken image's would; busybox applets by full path. Returns its ``containerd://`` id."""
        root = os.path.join(directory, "rootfs-with-sh")
        shutil.copytree(self.rootfs, root, symlinks=True)
        os.unlink(os.path.join(root, "bin", "sh"))
        with open(os.path.join(root, "bin", "sh"), "w") as f:
            f.write("#!/bin/busybox sh\n" + script)
        os.chmod(os.path.join(root, "bin", "sh"), 0o755)
        return f"containerd://{self.containerd('/bin/busybox', 'sleep', '3600', rootfs=root)}"

    def distroless_rootfs(self, path: os.PathLike[str] | str) -> str:
        """A rootfs with one static binary (/bin/busybox) and no shell, as in distroless images."""
        return make_busybox_rootfs(path, applets=False)

    def docker_image(self) -> str:
        """The busybox rootfs imported into Docker as an image (no registry involved)."""
        require(os.path.exists(DOCKER_SOCKET) and shutil.which("docker") is not None, "Docker Engine")
        if run("docker", "image", "inspect", DOCKER_IMAGE, check=False).returncode != 0:
            tar = subprocess.Popen(["tar", "-C", self.rootfs, "-c", "."], stdout=subprocess.PIPE)
            subprocess.run(["docker", "import", "-", DOCKER_IMAGE], stdin=tar.stdout, check=True, capture_output=True)
            tar.wait()
        return DOCKER_IMAGE

    def close(self) -> None:
        for pid in self._inner:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for outer in self._processes:
            outer.kill()
            outer.wait()
        for container_id in self._containerd:
            remove_containerd_container(container_id)
        if self._containerd:
            # containerd refuses while other tests' containers remain; the last one out removes it.
            run("ctr", "namespaces", "remove", CONTAINERD_NAMESPACE, check=False)
        if self._docker:
            run("docker", "rm", "-f", *self._docker, check=False)


def label_args(labels: dict[str, str] | None) -> list[str]:
    return [arg for key, value in (labels or {}).items() for arg in ("--label", f"{key}={value}")]


def remove_containerd_container(container_id: str) -> None:
    ctr = ("ctr", "-n", CONTAINERD_NAMESPACE)
    run(*ctr, "tasks", "kill", "-s", "SIGKILL", container_id, check=False)

    def task_deleted() -> bool:
        result = run(*ctr, "tasks", "delete", container_id, check=False)
        return result.returncode == 0 or "not found" in result.stderr

    wait_for(task_deleted, f"task {container_id} to stop")
    run(*ctr, "containers", "delete", container_id, check=False)
