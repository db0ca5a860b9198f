"""Nothing a fault command starts outlives it, its timeout or the daemon.

The probes here are containers whose ``sh`` is a script of the test's: it
starts a child that leaves its process group (``setsid``) or sleeps, the way
a hostile or broken image would. Processes are found from outside by their
command lines in /proc.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess

import grpc
import pytest
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb
from pytest_chaos_daemon.tracking import HIERARCHY

from tests.support.targets import gone, running, wait_for


def hello(daemon, container_id: str, timeout: float = 60) -> pb.ExecHelloWorldResponse:
    return daemon.stub.ExecHelloWorldChaos(pb.ExecHelloWorldRequest(container_id=container_id), timeout=timeout)


def test_timeout_kills_a_child_that_left_the_process_group(start_daemon, targets, tmp_path):
    daemon = start_daemon("--containerd-namespace", "*", "--exec-timeout", "2")
    container_id = targets.containerd_with_sh(tmp_path, "/bin/busybox setsid /bin/busybox sleep 4242 &\n"
                                     "exec /bin/busybox sleep 4243\n")
    with pytest.raises(grpc.RpcError) as info:
        hello(daemon, container_id)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert gone("sleep 4242") and gone("sleep 4243")


def test_what_a_probe_leaves_running_is_killed_when_it_exits(daemon, targets, tmp_path):
    container_id = targets.containerd_with_sh(tmp_path, "/bin/busybox setsid /bin/busybox sleep 4244 &\n"
                                     "echo 'PID USER TIME COMMAND'\n")
    hello(daemon, container_id)
    assert gone("sleep 4244")


def test_a_sigkilled_daemon_leaves_no_probe_running(start_daemon, targets, tmp_path):
    daemon = start_daemon("--containerd-namespace", "*")
    container_id = targets.containerd_with_sh(tmp_path, "exec /bin/busybox sleep 4245\n")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(hello, daemon, container_id)
        wait_for(lambda: running("sleep 4245"), "the probe to start")
        daemon.process.send_signal(signal.SIGKILL)
        with pytest.raises(grpc.RpcError):
            call.result(timeout=30)
    assert gone("sleep 4245")


def test_daemon_shutdown_kills_running_probes(start_daemon, targets, tmp_path):
    daemon = start_daemon("--containerd-namespace", "*")
    container_id = targets.containerd_with_sh(tmp_path, "/bin/busybox setsid /bin/busybox sleep 4246 &\n"
                                     "exec /bin/busybox sleep 4247\n")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(hello, daemon, container_id)
        wait_for(lambda: running("sleep 4246") and running("sleep 4247"), "the probe to start")
        daemon.process.terminate()
        with pytest.raises(grpc.RpcError):
            call.result(timeout=30)
    assert gone("sleep 4246") and gone("sleep 4247")


def test_next_start_kills_what_a_dead_daemon_left(start_daemon, mounted_hierarchy):
    # What a daemon killed together with its helpers leaves: a process in its probe cgroup.
    pid_namespace = os.stat("/proc/self/ns/pid").st_ino
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover_dir = os.path.join(mounted_hierarchy, f"d-{pid_namespace}-{dead.pid}-1", "p-0")
    os.makedirs(leftover_dir)
    leftover = subprocess.Popen(["sleep", "4248"])
    try:
        with open(os.path.join(leftover_dir, "cgroup.procs"), "w") as f:
            f.write(str(leftover.pid))
        daemon = start_daemon()
        assert leftover.wait(timeout=10) == -signal.SIGKILL
        assert not os.path.exists(os.path.dirname(leftover_dir))
        assert '"killed processes left by a daemon that is gone"' in daemon.log()
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


def test_the_hierarchy_is_in_no_mount_table(start_daemon, targets, tmp_path):
    """runc mounts every v1 hierarchy of the mount table into a --cgroupns=private container (a kind
    node) and knows no named one but systemd: a hierarchy left mounted would stop such containers."""
    daemon = start_daemon("--containerd-namespace", "*")
    container_id = targets.containerd_with_sh(tmp_path, "exec /bin/busybox sleep 4250\n")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(hello, daemon, container_id, 5)
        wait_for(lambda: running("sleep 4250"), "the probe to start")
        [probe] = running("sleep 4250")
        assert HIERARCHY in open(f"/proc/{probe}/cgroup").read()  # tracked all the same
        for table in ("/proc/self/mountinfo", f"/proc/{daemon.process.pid}/mountinfo"):
            assert HIERARCHY not in open(table).read(), table
        started = subprocess.run(["docker", "run", "--rm", "--privileged", "--cgroupns=private",
                                  "--network=none", targets.docker_image(), "true"],
                                 capture_output=True, text=True, timeout=60)
        assert started.returncode == 0, started.stderr
        with pytest.raises(grpc.RpcError):
            call.result(timeout=30)
    assert gone("sleep 4250")


def test_a_live_daemons_probes_are_left_alone(start_daemon, targets, tmp_path):
    first = start_daemon("--containerd-namespace", "*")
    container_id = targets.containerd_with_sh(tmp_path, "exec /bin/busybox sleep 4249\n")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(hello, first, container_id, 5)
        wait_for(lambda: running("sleep 4249"), "the probe to start")
        start_daemon()  # its sweep, done before it serves, spares live daemons
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
