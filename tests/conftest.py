"""Fixtures for the project's own tests: a real daemon on a real socket."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import grpc
import pytest
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2_grpc as pb_grpc

from tests.support import pod_placement
from tests.support.network_bed import NetworkBed
from tests.support.targets import require

pytest_plugins = ["pytester"]
# "pod": every daemon a test starts runs as a DaemonSet pod does on a cgroup v2 node (tests/support/pod_placement.py).
PLACEMENT_VARIABLE = "PYTEST_CHAOS_TEST_DAEMON_PLACEMENT"


class RunningDaemon:
    def __init__(self, address: str, log_path: str, process: subprocess.Popen[bytes]) -> None:
        self.address = address
        self.log_path = log_path
        self.process = process
        self.channel = grpc.insecure_channel(address.removeprefix("tcp://"))
        self.stub = pb_grpc.ChaosDaemonStub(self.channel)

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def stop(self) -> None:
        self.channel.close()
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def start_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RunningDaemon]]:
    """Start ``pytest-chaos-daemon`` on a fresh unix socket with extra ``args`` (run under ``wrapper``,
    e.g. a setpriv command line); stopped after the test."""
    daemons: list[RunningDaemon] = []
    placements: list[str] = []

    def start(*args: str, listen: str | None = None, wrapper: Sequence[str] = ()) -> RunningDaemon:
        directory = tmp_path_factory.mktemp("daemon")
        address = listen or f"unix://{directory}/daemon.sock"
        if "--state-dir" not in args:  # a journal of its own, unless the test shares one on purpose
            args = (*args, "--state-dir", str(directory / "state"))
        if os.environ.get(PLACEMENT_VARIABLE) == "pod":  # as a DaemonSet pod on a cgroup v2 node (the VM lane)
            placement = f"pytest-chaos-pod-{os.getpid()}-{len(daemons)}"
            placements.append(placement)
            wrapper = [sys.executable, pod_placement.__file__, "--cgroup", placement, "--", *wrapper]
        log_path = str(directory / "daemon.log")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [*wrapper, sys.executable, "-m", "pytest_chaos_daemon", "--listen", address, "--log-level", "debug",
                 *args],
                stdout=log, stderr=log,
            )
        daemon = RunningDaemon(address, log_path, process)
        daemons.append(daemon)
        _wait_until_started(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.stop()
    for placement in placements:
        pod_placement.remove(placement)


def _wait_until_started(daemon: RunningDaemon) -> None:
    """Until it serves and, when it claimed a journal's records, has taken them over (that goes on beside its
    calls: tests that look at what a restart resumed look after it)."""
    deadline = time.monotonic() + 30

    def started(log: str) -> bool:
        return '"serving"' in log and ('"adopted from the journal"' not in log or '"adoption done"' in log)

    while not started(daemon.log()):
        if daemon.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"daemon did not start:\n{daemon.log()}")
        time.sleep(0.05)


@pytest.fixture
def daemon(start_daemon: Callable[..., RunningDaemon]) -> RunningDaemon:
    """A daemon that looks containerd ids up in every namespace and accepts pid:// targets."""
    return start_daemon("--containerd-namespace", "*", "--allow-pid-targets")


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytester, whose runs leave Hypothesis's plugin out: it imports all of Hypothesis at each session's end
    (0.8 s a run; in this process again each time, as pytester drops the modules a run imported), and no user
    suite run here uses it."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:hypothesispytest")
    return pytester


# What only root can give: a daemon (it enters namespaces), containers, network namespaces and bridges.
ROOT_FIXTURES = frozenset({"daemon", "start_daemon", "targets", "module_targets", "network_bed",
                           "module_network_bed", "busybox_rootfs", "wheels"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses a root fixture, or lives under tests/e2e (a cluster and its kubeconfig), needs root;
    modules and tests that need it otherwise say so with ``needs_root`` themselves."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & ROOT_FIXTURES or "e2e" in item.path.parts:
            item.add_marker(pytest.mark.needs_root)


@pytest.fixture(autouse=True)
def _root_only(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("needs_root"):
        require(os.geteuid() == 0, "root (entering namespaces needs it)")


@pytest.fixture
def network_bed() -> Iterator[NetworkBed]:
    """A bridge of its own with targets that talk to each other (tests/support/network_bed.py); removed after the test."""
    with NetworkBed() as bed:
        yield bed


@pytest.fixture(scope="module")
def module_network_bed() -> Iterator[NetworkBed]:
    """A network bed for a module: its targets exist before a chaos marker's selector is resolved."""
    with NetworkBed() as bed:
        yield bed
