"""The daemon over real gRPC on a real unix socket, against real processes and runtimes."""

from __future__ import annotations

import concurrent.futures
import json
import os
import stat
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb


def call(daemon, container_id: str) -> pb.ExecHelloWorldResponse:
    return daemon.stub.ExecHelloWorldChaos(pb.ExecHelloWorldRequest(container_id=container_id), timeout=30)


def error_of(daemon, container_id: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(daemon, container_id)
    return info.value


def test_health_check_reports_serving(daemon):
    stub = health_pb2_grpc.HealthStub(daemon.channel)
    for service in ("", "pytest_chaos.daemon.v1.ChaosDaemon"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(daemon):
    stub = reflection_pb2_grpc.ServerReflectionStub(daemon.channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"pytest_chaos.daemon.v1.ChaosDaemon", "grpc.health.v1.Health"} <= names


def test_unix_socket_is_private(daemon):
    mode = os.stat(daemon.address.removeprefix("unix://")).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_process_list_of_an_isolated_process(daemon, targets):
    pid = targets.process("sleep", "1234")
    reply = call(daemon, f"pid://{pid}")
    assert reply.status.pid == pid
    assert reply.status.state == pb.InjectionStatus.ONE_SHOT
    assert [(p.pid, p.command) for p in reply.processes] == [(1, "sleep 1234")]
    assert "sleep 1234" in reply.output and "ps aux" in reply.output  # raw output keeps the probe
    host_pid_1 = open("/proc/1/cmdline").read().split("\0")[0]
    assert host_pid_1 not in {p.command.split()[0] for p in reply.processes}


def test_long_command_lines_are_not_cut(daemon, targets):
    argument = "x" * 300
    pid = targets.process("sh", "-c", f"sleep 3600; : {argument}")
    first = call(daemon, f"pid://{pid}").processes[0]
    assert (first.pid, first.command) == (1, f"sh -c sleep 3600; : {argument}")


def test_containerd_container_resolves_and_lists_its_processes(daemon, targets):
    container_id = targets.containerd("sleep", "2345")
    reply = call(daemon, f"containerd://{container_id}")
    assert [(p.pid, p.command) for p in reply.processes] == [(1, "sleep 2345")]
    # busybox's ps, not the host's procps: its header starts with PID USER
    header = reply.output.splitlines()[0].split()
    assert header[:2] == ["PID", "USER"] and header[-1] == "COMMAND"


def test_docker_container_resolves_by_id_and_by_name(daemon, targets):
    name = f"chaos-by-name-{os.getpid()}"
    container_id = targets.docker("sleep", "3456", name=name)
    for ref in (container_id, name):
        reply = call(daemon, f"docker://{ref}")
        assert [(p.pid, p.command) for p in reply.processes] == [(1, "sleep 3456")]


def test_docker_pid_matches_the_engine(daemon, targets):
    container_id = targets.docker()
    engine_pid = int(subprocess.check_output(["docker", "inspect", "-f", "{{.State.Pid}}", container_id]))
    assert call(daemon, f"docker://{container_id}").status.pid == engine_pid


@pytest.mark.parametrize(
    "container_id, code, words",
    [
        ("podman://abc", grpc.StatusCode.INVALID_ARGUMENT, ["containerd://", "docker://", "cri-o://", "pid://"]),
        ("abc", grpc.StatusCode.INVALID_ARGUMENT, ["accepted prefixes"]),
        ("", grpc.StatusCode.INVALID_ARGUMENT, ["container_id is required"]),
        ("docker://../../etc", grpc.StatusCode.INVALID_ARGUMENT, ["malformed"]),
        ("containerd://a b", grpc.StatusCode.INVALID_ARGUMENT, ["malformed"]),
        ("pid://-3", grpc.StatusCode.INVALID_ARGUMENT, ["malformed"]),
        ("pid://0", grpc.StatusCode.INVALID_ARGUMENT, ["malformed"]),
        ("containerd://no-such-container", grpc.StatusCode.NOT_FOUND, ["containerd://no-such-container"]),
        ("docker://no-such-container", grpc.StatusCode.NOT_FOUND, ["docker://no-such-container"]),
        ("pid://4194303", grpc.StatusCode.NOT_FOUND, ["pid://4194303"]),
    ],
)
def test_bad_ids_get_clear_status_codes(daemon, container_id, code, words):
    err = error_of(daemon, container_id)
    assert err.code() == code, err.details()
    for word in words:
        assert word in err.details()


def test_stopped_containerd_container_is_a_failed_precondition(daemon, targets):
    container_id = targets.containerd("sleep", "3600")
    ctr = ["ctr", "-n", targets.containerd_namespace]
    subprocess.run([*ctr, "tasks", "kill", "-s", "SIGKILL", container_id], check=True)
    subprocess.run([*ctr, "tasks", "delete", container_id], check=False)
    err = error_of(daemon, f"containerd://{container_id}")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    assert container_id in err.details()


def test_created_but_not_started_docker_container_is_a_failed_precondition(daemon, targets):
    container_id = subprocess.check_output(
        ["docker", "create", "--network", "none", targets.docker_image(), "sleep", "1"], text=True).strip()
    try:
        err = error_of(daemon, f"docker://{container_id}")
    finally:
        subprocess.run(["docker", "rm", "-f", container_id], capture_output=True)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    assert container_id in err.details()


def test_container_without_a_shell_is_a_failed_precondition(daemon, targets, tmp_path):
    rootfs = targets.distroless_rootfs(tmp_path)
    container_id = targets.containerd("/bin/busybox", "sleep", "3600", rootfs=rootfs)
    err = error_of(daemon, f"containerd://{container_id}")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    assert "needs `sh` and `ps`" in err.details()


def test_unreachable_runtime_is_unavailable_naming_the_socket(start_daemon, tmp_path):
    missing = str(tmp_path / "nothing.sock")
    daemon = start_daemon("--containerd-socket", missing, "--docker-socket", missing)
    for prefix in ("containerd", "docker"):
        err = error_of(daemon, f"{prefix}://abc")
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
        assert missing in err.details()


def test_lists_the_running_containers_of_both_runtimes_with_names_and_labels(daemon, targets):
    labels = {"app": "listed", "tier": "test"}
    in_containerd = targets.containerd(labels=labels)
    in_docker = targets.docker(labels=labels)
    stopped = targets.containerd("true")  # exits at once: a container without a running task
    reply = daemon.stub.ListContainers(pb.ListContainersRequest(), timeout=30)
    listed = {c.container_id: c for c in reply.containers}
    assert listed[f"containerd://{in_containerd}"].name == in_containerd
    assert dict(listed[f"containerd://{in_containerd}"].labels) == labels
    assert dict(listed[f"docker://{in_docker}"].labels) == labels
    assert listed[f"docker://{in_docker}"].name.startswith("chaos-test-")
    assert f"containerd://{stopped}" not in listed
    assert {(r.runtime, r.reachable) for r in reply.runtimes} == {("containerd", True), ("docker", True)}


def test_a_listing_reports_an_unreachable_runtime_and_lists_the_others(start_daemon, targets, tmp_path):
    missing = str(tmp_path / "nothing.sock")
    in_containerd = targets.containerd()
    daemon = start_daemon("--containerd-namespace", "*", "--docker-socket", missing)
    reply = daemon.stub.ListContainers(pb.ListContainersRequest(), timeout=30)
    assert f"containerd://{in_containerd}" in {c.container_id for c in reply.containers}
    [docker] = [r for r in reply.runtimes if r.runtime == "docker"]
    assert not docker.reachable and docker.endpoint == missing and missing in docker.error


def test_default_namespace_does_not_see_other_namespaces(start_daemon, targets):
    daemon = start_daemon()  # default: k8s.io only
    container_id = targets.containerd()
    err = error_of(daemon, f"containerd://{container_id}")
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "k8s.io" in err.details()


def test_concurrent_requests_all_succeed(daemon, targets):
    pids = [targets.process("sleep", str(4000 + i)) for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: call(daemon, f"pid://{pids[i % 4]}"), range(16)))
    for i, reply in enumerate(replies):
        assert [p.command for p in reply.processes] == [f"sleep {4000 + i % 4}"]


def test_logs_the_request_the_command_and_the_output(daemon, targets):
    pid = targets.process("sleep", "5678")
    call(daemon, f"pid://{pid}")
    entries = [json.loads(line) for line in daemon.log().splitlines()]
    request = next(e for e in entries if e["msg"] == "ExecHelloWorldChaos")
    assert request["request"]["container_id"] == f"pid://{pid}"  # field names as in the .proto
    assert request["peer"].startswith("unix:")
    command = next(e for e in entries if e["msg"] == "command ran")
    assert command["argv"][0].endswith(os.path.basename(command["argv"][0]))
    assert "pytest-chaos-confine" in command["argv"][0]
    assert command["argv"][-4:] == ["--", "sh", "-c", "ps aux"]
    output = next(e for e in entries if e["msg"] == "output")
    assert output["level"] == "debug" and "sleep 5678" in output["output"]


def test_process_list_is_not_logged_at_info_level(start_daemon, targets):
    daemon = start_daemon("--allow-pid-targets", "--log-level", "info")
    pid = targets.process("sleep", "5679")
    call(daemon, f"pid://{pid}")
    log = daemon.log()
    assert '"command ran"' in log
    assert "sleep 5679" not in log


def test_long_request_fields_are_cut_in_the_log(daemon):
    err = error_of(daemon, "containerd://" + "a" * 400)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    entries = [json.loads(line) for line in daemon.log().splitlines()]
    request = next(e for e in entries if e["msg"] == "ExecHelloWorldChaos")
    assert request["request"]["container_id"].endswith("... (413 characters)")
    assert len(request["request"]["container_id"]) < 300


def test_every_log_line_is_json(daemon, targets):
    call(daemon, f"pid://{targets.process('sleep', '5680')}")
    error_of(daemon, "podman://x")
    for line in daemon.log().splitlines():
        json.loads(line)


def test_slow_command_is_killed_at_the_timeout(start_daemon, targets):
    daemon = start_daemon("--allow-pid-targets", "--exec-timeout", "0.001")
    pid = targets.process("sleep", "3600")
    err = error_of(daemon, f"pid://{pid}")
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
    assert "killed" in err.details()
