"""Every request is bounded: output, waiting, runtime lookups; every failure is a proper status."""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import threading

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb
from pytest_chaos_daemon.confinement.nsexec import OUTPUT_LIMIT

from tests.support.targets import gone, running, wait_for


def hello(daemon, container_id: str, timeout: float = 60, **fields) -> pb.ExecHelloWorldResponse:
    return daemon.stub.ExecHelloWorldChaos(pb.ExecHelloWorldRequest(container_id=container_id, **fields),
                                           timeout=timeout)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_huge_output_is_cut_marked_and_does_not_grow_the_daemon(daemon, targets, tmp_path):
    # A target whose "ps" prints without end (100 MB and more).
    noisy = targets.containerd_with_sh(tmp_path, "echo 'PID USER TIME COMMAND'\n"
                              "exec /bin/busybox yes '1 root 0:00 chatter chatter chatter chatter chatter'\n")
    quiet = f"pid://{targets.process('sleep', '4301')}"
    before = rss_kb(daemon.process.pid)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        loud_call = pool.submit(hello, daemon, noisy)
        # Another target is served while the noisy one streams.
        assert [p.command for p in hello(daemon, quiet).processes] == ["sleep 4301"]
        reply = loud_call.result()
    assert reply.truncated
    assert OUTPUT_LIMIT - 100 <= len(reply.output.encode()) <= OUTPUT_LIMIT
    grown_mb = (rss_kb(daemon.process.pid) - before) / 1024
    assert grown_mb < 48, f"daemon RSS grew {grown_mb:.1f} MB"
    assert not running("chatter chatter")


def test_health_and_reflection_answer_while_every_slot_is_busy(start_daemon, targets, tmp_path):
    daemon = start_daemon("--containerd-namespace", "*", "--max-concurrent", "1")
    slow = targets.containerd_with_sh(tmp_path, "exec /bin/busybox sleep 4302\n")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(hello, daemon, slow, 8) for _ in range(3)]
        wait_for(lambda: running("sleep 4302"), "the slow probe to start")
        health = health_pb2_grpc.HealthStub(daemon.channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        replies = reflection_pb2_grpc.ServerReflectionStub(daemon.channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=2)
        assert any(reply.list_services_response.service for reply in replies)
        for call in calls:
            with pytest.raises(grpc.RpcError):
                call.result(timeout=30)


def test_waiting_for_a_busy_target_gives_up_at_the_deadline(daemon, targets, tmp_path):
    slow = targets.containerd_with_sh(tmp_path, "exec /bin/busybox sleep 4303\n")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(hello, daemon, slow, 10)
        wait_for(lambda: running("sleep 4303"), "the first probe to start")
        with pytest.raises(grpc.RpcError) as info:
            hello(daemon, slow, timeout=1)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(grpc.RpcError):
            first.result(timeout=30)

    def gave_up() -> bool:
        entries = [json.loads(line) for line in daemon.log().splitlines()]
        return any("waiting for another fault" in e.get("error", "") for e in entries)

    wait_for(gave_up, "the daemon to log that the second request gave up")
    # Had it waited on past its deadline, its probe would be running now.
    assert gone("sleep 4303", timeout=5)


@pytest.fixture
def stalled_socket(tmp_path):
    """A unix socket that accepts connections and never answers, as a hung Docker Engine."""
    path = str(tmp_path / "stalled.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield path
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


def test_a_stalled_docker_socket_does_not_hold_up_other_runtimes(start_daemon, targets, stalled_socket):
    daemon = start_daemon("--containerd-namespace", "*", "--allow-pid-targets", "--docker-socket", stalled_socket)
    in_containerd = f"containerd://{targets.containerd('sleep', '4304')}"
    process = f"pid://{targets.process('sleep', '4305')}"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        stuck = [pool.submit(hello, daemon, f"docker://hung{i}", 30) for i in range(6)]
        for _ in range(3):
            assert [p.command for p in hello(daemon, in_containerd, 10).processes] == ["sleep 4304"]
            assert [p.command for p in hello(daemon, process, 10).processes] == ["sleep 4305"]
        assert not any(call.done() for call in stuck)
        for call in stuck:
            with pytest.raises(grpc.RpcError) as info:
                call.result(timeout=60)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
            assert stalled_socket in info.value.details()


@pytest.mark.parametrize("lease", [duration_pb2.Duration(seconds=-1), duration_pb2.Duration(seconds=10**9),
                                   duration_pb2.Duration(seconds=1, nanos=-5)])
def test_an_out_of_range_lease_is_invalid(daemon, lease):
    with pytest.raises(grpc.RpcError) as info:
        hello(daemon, "pid://4194303", injection=pb.Injection(id="a", lease=lease))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "injection.lease" in info.value.details()


def test_an_unknown_source_is_invalid(daemon):
    with pytest.raises(grpc.RpcError) as info:
        hello(daemon, "pid://4194303", source=99)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "PROCESS_LIST_SOURCE_PROC" in info.value.details()


@pytest.mark.parametrize("flag, value, says", [
    ("--exec-timeout", "nan", "--exec-timeout"),
    ("--exec-timeout", "inf", "--exec-timeout"),
    ("--exec-timeout", "0", "--exec-timeout"),
    ("--exec-timeout", "-1", "--exec-timeout"),
    ("--max-concurrent", "0", "--max-concurrent"),
    ("--max-concurrent", "1000000", "--max-concurrent"),
    ("--max-concurrent", "many", "--max-concurrent"),
])
def test_bad_cli_values_are_refused(tmp_path, flag, value, says):
    result = subprocess.run([sys.executable, "-m", "pytest_chaos_daemon", "--listen", f"unix://{tmp_path}/d.sock",
                             flag, value], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert says in result.stderr and value in result.stderr
    assert not os.path.exists(tmp_path / "d.sock")
