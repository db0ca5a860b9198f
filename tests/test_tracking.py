"""Nothing a fault command starts outlives it, its timeout or the daemon.

The probes here are containers whose ``sh`` is a script of the test's: it
starts a child that leaves its process group (``setsid``) or sleeps, the way
a hostile or broken image would. Processes are found from outside by their
command lines in /proc. Each test runs once per way of tracking this host
offers (``tests/support/cgroups.py``): the named cgroup v1 hierarchy, cgroup
v2 subtrees, or both on a hybrid host.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess

import grpc
import pytest
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb
from pytest_chaos_daemon.confinement.tracking import HIERARCHY, NAMED_V1

from tests.support import cgroups
from tests.support.cgroups import tracking_modes
from tests.support.targets import gone, running, wait_for


def pytest_generate_tests(metafunc):
    if "tracking" in metafunc.fixturenames:
        metafunc.parametrize("tracking", tracking_modes())


@pytest.fixture
def tracked(start_daemon, tracking):
    """Start a daemon that tracks with ``tracking`` (extra arguments as ``start_daemon``'s)."""
    return lambda *args: start_daemon("--containerd-namespace", "*", "--probe-tracking", tracking, *args)


def hello(daemon, container_id: str, timeout: float = 60) -> pb.ExecHelloWorldResponse:
    return daemon.stub.ExecHelloWorldChaos(pb.ExecHelloWorldRequest(container_id=container_id), timeout=timeout)


def test_timeout_kills_a_child_that_left_the_process_group(tracked, targets, tmp_path):
    daemon = tracked("--exec-timeout", "2")
    container_id = targets.containerd_with_sh(tmp_path, "/bin/busybox setsid /bin/busybox sleep 4242 &\n"
                                     "exec /bin/busybox sleep 4243\n")
    with pytest.raises(grpc.RpcError) as info:
        hello(daemon, container_id)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert gone("sleep 4242") and gone("sleep 4243")


def test_what_a_probe_leaves_running_is_killed_when_it_exits(tracked, targets, tmp_path):
    daemon = tracked()
    container_id = targets.containerd_with_sh(tmp_path, "/bin/busybox setsid /bin/busybox sleep 4244 &\n"
                                     "echo 'PID USER TIME COMMAND'\n")
    hello(daemon, container_id)
    assert gone("sleep 4244")


def test_a_sigkilled_daemon_leaves_no_probe_running(tracked, targets, tmp_path):
    daemon = tracked()
    container_id = targets.containerd_with_sh(tmp_path, "exec /bin/busybox sleep 4245\n")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(hello, daemon, container_id)
        wait_for(lambda: running("sleep 4245"), "the probe to start")
        daemon.process.send_signal(signal.SIGKILL)
        with pytest.raises(grpc.RpcError):
            call.result(timeout=30)
    assert gone("sleep 4245")


def test_daemon_shutdown_kills_running_probes(tracked, targets, tmp_path):
    daemon = tracked()
    container_id = targets.containerd_with_sh(tmp_path, "/bin/busybox setsid /bin/busybox sleep 4246 &\n"
                                     "exec /bin/busybox sleep 4247\n")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(hello, daemon, container_id)
        wait_for(lambda: running("sleep 4246") and running("sleep 4247"), "the probe to start")
        daemon.process.terminate()
        with pytest.raises(grpc.RpcError):
            call.result(timeout=30)
    assert gone("sleep 4246") and gone("sleep 4247")


def test_next_start_kills_what_a_dead_daemon_left(tracked, tracking, request):
    # What a daemon killed together with its helpers leaves: a process in its probe cgroup.
    pid_namespace = os.stat("/proc/self/ns/pid").st_ino
    dead = subprocess.Popen(["true"])
    dead.wait()
    key = f"{pid_namespace}-{dead.pid}-1"
    if tracking == NAMED_V1:
        leftover_dir = os.path.join(request.getfixturevalue("mounted_hierarchy"), f"d-{key}", "p-0")
        daemon_dir = os.path.dirname(leftover_dir)
        os.makedirs(leftover_dir)
    else:  # a probe made in a target's cgroup v2: here, this test's own
        leftover_dir = daemon_dir = os.path.join(cgroups.v2_dir(os.getpid()), f"pytest-chaos-probe.d-{key}.p-0")
        os.mkdir(leftover_dir)
    leftover = subprocess.Popen(["sleep", "4248"])
    try:
        with open(os.path.join(leftover_dir, "cgroup.procs"), "w") as f:
            f.write(str(leftover.pid))
        daemon = tracked()
        assert leftover.wait(timeout=10) == -signal.SIGKILL
        assert not os.path.exists(daemon_dir)
        assert '"killed processes left by a daemon that is gone"' in daemon.log()
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


def test_no_hierarchy_of_ours_is_in_any_mount_table(tracked, tracking, targets, tmp_path):
    """runc mounts every v1 hierarchy of the mount table into a --cgroupns=private container (a kind
    node) and knows no named one but systemd: a hierarchy left mounted would stop such containers."""
    daemon = tracked()
    container_id = targets.containerd_with_sh(tmp_path, "exec /bin/busybox sleep 4250\n")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(hello, daemon, container_id, 5)
        wait_for(lambda: running("sleep 4250"), "the probe to start")
        [probe] = running("sleep 4250")
        memberships = open(f"/proc/{probe}/cgroup").read()
        if tracking == NAMED_V1:
            assert HIERARCHY in memberships  # tracked all the same
        else:
            assert "/pytest-chaos-probe.d-" in memberships.splitlines()[-1]  # 0::<target's>/pytest-chaos-probe...
        for table in ("/proc/self/mountinfo", f"/proc/{daemon.process.pid}/mountinfo"):
            assert HIERARCHY not in open(table).read(), table
        if tracking == NAMED_V1:
            started = subprocess.run(["docker", "run", "--rm", "--privileged", "--cgroupns=private",
                                      "--network=none", targets.docker_image(), "true"],
                                     capture_output=True, text=True, timeout=60)
            assert started.returncode == 0, started.stderr
        with pytest.raises(grpc.RpcError):
            call.result(timeout=30)
    assert gone("sleep 4250")


def test_a_live_daemons_probes_are_left_alone(tracked, targets, tmp_path):
    first = tracked()
    container_id = targets.containerd_with_sh(tmp_path, "exec /bin/busybox sleep 4249\n")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(hello, first, container_id, 5)
        wait_for(lambda: running("sleep 4249"), "the probe to start")
        tracked()  # its sweep, done before it serves, spares live daemons
        assert running("sleep 4249")
        with pytest.raises(grpc.RpcError):
            call.result(timeout=30)
    assert gone("sleep 4249")



@pytest.fixture
def mounted_hierarchy(tmp_path):
    """The daemons' tracking hierarchy, mounted for this test at a directory of its own."""
    mount_point = tmp_path / "probes"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "cgroup", "-o", f"none,{HIERARCHY}", "pytest-chaos-probes", str(mount_point)],
                   check=True)
    yield str(mount_point)
    subprocess.run(["umount", str(mount_point)], check=True)
