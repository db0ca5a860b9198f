"""Shared fixtures: real targets for chaos experiments, started and removed by the tests.

Targets are real: a process as PID 1 of fresh mount and pid namespaces
(``unshare``), containerd containers (``ctr run`` on a busybox rootfs) and
Docker containers (``docker run`` of an image imported from the same rootfs).

A fixture whose runtime is missing skips its tests, except under CI (``CI``
set), where every runtime is .ci/run's job and a skip would hide a broken
install: there it fails.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

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


def _run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


def _unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_names)}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A root filesystem holding busybox-static and its applets (sh, ps, sleep, ...)."""
    require(os.path.exists(BUSYBOX), f"busybox-static ({BUSYBOX})")
    root = tmp_path_factory.mktemp("busybox-rootfs")
    (root / "bin").mkdir()
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in _run(BUSYBOX, "--list").stdout.split():
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    for directory in ("proc", "dev", "sys", "tmp", "etc"):
        (root / directory).mkdir(exist_ok=True)
    return str(root)


@pytest.fixture
def isolated_process() -> Iterator[Callable[..., int]]:
    """Start ``argv`` as PID 1 of new mount and pid namespaces; return its host PID."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*argv: str) -> int:
        require(shutil.which("unshare") is not None, "unshare (util-linux)")
        outer = subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "--mount-proc", *argv])
        started.append(outer)
        children = f"/proc/{outer.pid}/task/{outer.pid}/children"

        def inner_pid() -> int | None:
            # unshare forks, then the child execs argv: wait until it has.
            with contextlib.suppress(OSError, IndexError):
                pid = int(open(children).read().split()[0])
                if open(f"/proc/{pid}/cmdline").read().split("\0")[0] == argv[0]:
                    return pid
            return None

        return int(wait_for(inner_pid, f"{argv} to start"))

    yield start
    for outer in started:
        outer.kill()
        outer.wait()


@pytest.fixture
def containerd_container(busybox_rootfs: str) -> Iterator[Callable[..., str]]:
    """Run a busybox container in containerd; return its id (without prefix)."""
    started: list[str] = []

    def start(*argv: str, labels: dict[str, str] | None = None, rootfs: str | None = None) -> str:
        require(os.path.exists(CONTAINERD_SOCKET) and shutil.which("ctr") is not None, "containerd")
        container_id = _unique("chaos-test")
        label_args = [arg for k, v in (labels or {}).items() for arg in ("--label", f"{k}={v}")]
        started.append(container_id)  # before running: a failed start still leaves a container
        _run("ctr", "-n", CONTAINERD_NAMESPACE, "run", "-d", "--env", "PATH=/bin", *label_args,
             "--rootfs", rootfs or busybox_rootfs, container_id, *(argv or ("sleep", "3600")))
        return container_id

    start.namespace = CONTAINERD_NAMESPACE  # type: ignore[attr-defined]
    yield start
    for container_id in started:
        remove_containerd_container(container_id)


def remove_containerd_container(container_id: str) -> None:
    ctr = ("ctr", "-n", CONTAINERD_NAMESPACE)
    _run(*ctr, "tasks", "kill", "-s", "SIGKILL", container_id, check=False)

    def task_deleted() -> bool:
        result = _run(*ctr, "tasks", "delete", container_id, check=False)
        return result.returncode == 0 or "not found" in result.stderr

    wait_for(task_deleted, f"task {container_id} to stop")
    _run(*ctr, "containers", "delete", container_id, check=False)


@pytest.fixture(scope="session")
def docker_image(busybox_rootfs: str) -> str:
    """The busybox rootfs imported into Docker as an image (no registry involved)."""
    require(os.path.exists(DOCKER_SOCKET) and shutil.which("docker") is not None, "Docker Engine")
    if _run("docker", "image", "inspect", DOCKER_IMAGE, check=False).returncode != 0:
        tar = subprocess.Popen(["tar", "-C", busybox_rootfs, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", DOCKER_IMAGE], stdin=tar.stdout, check=True, capture_output=True)
        tar.wait()
    return DOCKER_IMAGE


@pytest.fixture
def docker_container(docker_image: str) -> Iterator[Callable[..., str]]:
    """Run a busybox container in Docker (no network); return its full id."""
    started: list[str] = []

    def start(*argv: str, labels: dict[str, str] | None = None, name: str | None = None) -> str:
        label_args = [arg for k, v in (labels or {}).items() for arg in ("--label", f"{k}={v}")]
        name = name or _unique("chaos-test")
        started.append(name)  # before running: a failed start still leaves a container
        result = _run("docker", "run", "-d", "--network", "none", "--name", name, *label_args,
                      docker_image, *(argv or ("sleep", "3600")))
        return result.stdout.strip()

    yield start
    if started:
        _run("docker", "rm", "-f", *started, check=False)
