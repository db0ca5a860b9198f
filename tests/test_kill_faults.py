"""container-kill and process-kill against real targets, each effect checked from outside the daemon:
containerd's task list, ``docker inspect`` and ``docker logs``, the host's /proc."""

from __future__ import annotations

import json
import re
import subprocess
import uuid

import grpc
import pytest
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb
from pytest_chaos_daemon.confinement import procfs

from tests.support.suites import collect_suite, run_suite
from tests.support.targets import CONTAINERD_NAMESPACE, run, running, wait_for
from tests.test_cri import cri, cri_container, cri_daemon  # noqa: F401, F811 (fixtures: a CRI endpoint of the test's own)

pytestmark = pytest.mark.usefixtures("_root_only")
KILL = pb.ContainerKill()
# The shell's own command line spells the sleeps' arguments differently, so a
# pattern naming one sleep matches that sleep alone.
TWO_SLEEPS = "n=46; sleep ${{n}}{0} & sleep ${{n}}{1} & wait"


def apply(daemon, container_id: str, **fault) -> pb.ApplyResponse:
    request = pb.ApplyRequest(container_id=container_id, injection=pb.Injection(id=uuid.uuid4().hex), **fault)
    return daemon.stub.Apply(request, timeout=30)


def apply_fails(daemon, container_id: str, **fault) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        apply(daemon, container_id, **fault)
    return info.value.code(), info.value.details()


def task_status(container_id: str) -> str:
    """The task's status as containerd's own client lists it ("RUNNING", "STOPPED", ...)."""
    for line in run("ctr", "-n", CONTAINERD_NAMESPACE, "tasks", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == container_id:
            return fields[-1]
    return "none"


def docker_state(container_id: str) -> dict:
    return json.loads(run("docker", "inspect", "--format", "{{json .State}}", container_id).stdout)


def inner_pid(host_pid: int) -> int:
    """The PID a host process has inside its own pid namespace."""
    return procfs.read_status(host_pid).nspid[-1]



# container-kill


def test_container_kill_stops_every_process_of_a_containerd_task(daemon, targets):
    container = targets.containerd("sh", "-c", "sleep 4611 & sleep 4612 & wait")
    assert task_status(container) == "RUNNING"
    reply = apply(daemon, f"containerd://{container}", container_kill=KILL)
    assert reply.status.state == pb.InjectionStatus.ONE_SHOT
    assert reply.status.kind == "container-kill"
    assert reply.status.mechanism == "containerd task kill (SIGKILL)"
    wait_for(lambda: task_status(container) == "STOPPED", "containerd to report the task stopped")
    assert running("sleep 4611") == running("sleep 4612") == []


def test_container_kill_kills_a_docker_container(daemon, targets):
    container = targets.docker("sleep", "4613")
    reply = apply(daemon, f"docker://{container}", container_kill=KILL)
    assert reply.status.mechanism == "Docker Engine kill (SIGKILL)"
    state = wait_for(lambda: (s := docker_state(container)) and not s["Running"] and s, "Docker to see it stop")
    assert state["ExitCode"] == 128 + 9  # killed by SIGKILL
    assert running("sleep 4613") == []


def test_container_kill_of_a_pid_target_has_killed_it_when_apply_returns(daemon, targets):
    pid = targets.process("sleep", "4614")
    reply = apply(daemon, f"pid://{pid}", container_kill=KILL)
    assert reply.status.pid == pid
    assert reply.status.mechanism == "SIGKILL to the process (pidfd)"
    assert running("sleep 4614") == []


def test_container_kill_of_a_cri_container_kills_its_init_with_sigkill(cri, cri_daemon, cri_container):
    reply = apply(cri_daemon, f"cri-o://{cri_container}", container_kill=KILL)
    assert reply.status.mechanism == "SIGKILL to the container's init process (pidfd)"

    def exited() -> dict | None:
        status = json.loads(cri.crictl("inspect", cri_container))["status"]
        return status if status["state"] == "CONTAINER_EXITED" else None

    assert wait_for(exited, "the CRI to report the container exited")["exitCode"] == 128 + 9


def test_container_kill_of_a_stopped_container_fails_as_not_running(daemon, targets):
    container = targets.containerd("sleep", "4615")
    apply(daemon, f"containerd://{container}", container_kill=KILL)
    wait_for(lambda: task_status(container) == "STOPPED", "the task to stop")
    code, details = apply_fails(daemon, f"containerd://{container}", container_kill=KILL)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"containerd://{container}" in details and "not running" in details


@pytest.mark.docker
def test_container_kill_through_the_marker_kills_every_target(pytester, targets):
    container = targets.containerd("sleep", "4616")
    docker = targets.docker("sleep", "4617")
    pid = targets.process("sleep", "4618")
    result = run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("container-kill", selector={{"containers": ["{container}", "{docker}"]}}, mode="all")
        @pytest.mark.chaos("container-kill", selector={{"pids": [{pid}]}})
        def test_app(chaos):
            containers, process = chaos.experiments
            assert sorted(t.container_id for t in containers.targets) == \\
                sorted(["containerd://{container}", "docker://{docker}"])
            assert {{t.mechanism for t in containers.targets}} == \\
                {{"containerd task kill (SIGKILL)", "Docker Engine kill (SIGKILL)"}}
            assert [t.container_id for t in process.targets] == ["pid://{pid}"]
            assert all(e.outcome == "applied" for e in chaos.experiments)
    """, "-rA")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*recovered (one-shot, nothing to recover)*"])
    wait_for(lambda: task_status(container) == "STOPPED", "containerd to report the task stopped")
    wait_for(lambda: not docker_state(docker)["Running"], "Docker to see the container stop")
    assert running("sleep 4616") == running("sleep 4617") == running("sleep 4618") == []


# process-kill


def test_process_kill_by_pattern_kills_only_the_matching_process(daemon, targets):
    container = targets.containerd("sh", "-c", TWO_SLEEPS.format("01", "02"))
    [victim] = wait_for(lambda: running("sleep 4601"), "the first sleep to start")
    wait_for(lambda: running("sleep 4602"), "the second sleep to start")
    victim_inside = inner_pid(victim)
    reply = apply(daemon, f"containerd://{container}", process_kill=pb.ProcessKill(process="sleep 4601"))
    assert [(p.pid, p.user, p.command) for p in reply.processes] == [(victim_inside, "root", "sleep 4601")]
    assert reply.status.mechanism == "SIGKILL to the matching processes (pidfd)"
    wait_for(lambda: not running("sleep 4601"), "the matching sleep to end")
    assert running("sleep 4602"), "its sibling was killed too"
    assert running("sleep ${n}01"), "the shell was killed too"
    assert task_status(container) == "RUNNING"


def test_process_kill_by_command_name_kills_every_process_of_that_name(daemon, targets):
    # The pattern is also searched in command lines, so the shell's must not spell "sleep".
    container = targets.containerd("sh", "-c", "s=sl; ${s}eep 4603 & ${s}eep 4604 & wait; ${s}eep 4621")
    wait_for(lambda: running("sleep 4603") and running("sleep 4604"), "both sleeps to start")
    reply = apply(daemon, f"containerd://{container}", process_kill=pb.ProcessKill(process="sleep"))
    assert sorted(p.command for p in reply.processes) == ["sleep 4603", "sleep 4604"]
    wait_for(lambda: not running("sleep 4603") and not running("sleep 4604"), "both sleeps to end")
    # The shell survived: it went on past its wait (and exec'd its last command).
    wait_for(lambda: running("sleep 4621"), "the shell to go on past its wait")


@pytest.mark.docker
def test_process_kill_pattern_found_in_a_shells_command_line_matches_the_shell_too(daemon, targets):
    container = targets.docker("sh", "-c", "trap 'echo got TERM' TERM; sleep 4620 & wait; sleep 4620")
    wait_for(lambda: running("sleep 4620 & wait"), "the shell to start")
    reply = apply(daemon, f"docker://{container}", process_kill=pb.ProcessKill(process="sleep 4620", signal=15))
    assert sorted(p.command for p in reply.processes) == sorted(
        ["sh -c trap 'echo got TERM' TERM; sleep 4620 & wait; sleep 4620", "sleep 4620"])
    wait_for(lambda: "got TERM" in run("docker", "logs", container).stdout, "the shell to report SIGTERM")


@pytest.mark.docker
def test_process_kill_sends_the_requested_signal(daemon, targets):
    # The shell reports how its child ended: 128 + the signal's number.
    container = targets.docker("sh", "-c", "sleep 4605 & wait $!; echo status $?; exec sleep 4606")
    wait_for(lambda: running("sleep 4605"), "the sleep to start")
    reply = apply(daemon, f"docker://{container}", process_kill=pb.ProcessKill(process="^sleep 4605$", signal=15))
    assert [p.command for p in reply.processes] == ["sleep 4605"]
    assert reply.status.mechanism == "SIGTERM to the matching processes (pidfd)"
    wait_for(lambda: "status 143" in run("docker", "logs", container).stdout, "the shell to report SIGTERM")
    assert running("sleep 4606")


def test_process_kill_without_a_match_fails_naming_the_target_the_pattern_and_its_processes(daemon, targets):
    pid = targets.process("sh", "-c", "sleep 4607 & wait")
    wait_for(lambda: running("sleep 4607"), "the sleep to start")
    code, details = apply_fails(daemon, f"pid://{pid}", process_kill=pb.ProcessKill(process="no-such-process"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"pid://{pid}" in details and "'no-such-process'" in details
    assert "1 sh -c sleep 4607 & wait" in details and "sleep 4607" in details
    assert running("sleep 4607")


def test_process_kill_waits_briefly_for_a_match_that_is_about_to_run(daemon, targets):
    # A loop's short-lived child can be between runs when the request comes: it is matched when it starts.
    pid = targets.process("sh", "-c", "s=sl; sleep 0.5; ${s}eep 4622")  # its own command line spells no "sleep 4622"
    assert not running("sleep 4622")
    reply = apply(daemon, f"pid://{pid}", process_kill=pb.ProcessKill(process="^sleep 4622$"))
    assert [p.command for p in reply.processes] == ["sleep 4622"]
    wait_for(lambda: not running("sleep 4622"), "the sleep to end")


def test_process_kill_in_the_daemons_own_pid_namespace_spares_the_daemon_and_kernel_threads(daemon):
    # A pid:// process without a pid namespace of its own sees every process of the node.
    # Each alternative names exactly one process (the daemon by its socket, unique to this test), so
    # nothing else on the machine can match.
    host_process = subprocess.Popen(["sleep", "4622"])
    try:
        pattern = rf"^sleep 4622$|--listen {re.escape(daemon.address)} |^\[kthreadd\]$"
        reply = apply(daemon, f"pid://{host_process.pid}", process_kill=pb.ProcessKill(process=pattern))
        assert [(p.pid, p.command) for p in reply.processes] == [(host_process.pid, "sleep 4622")]
        assert host_process.wait(timeout=10) == -9
        assert daemon.process.poll() is None
    finally:
        host_process.kill()
        host_process.wait()


@pytest.mark.parametrize("fault, field, accepted", [
    (pb.ProcessKill(process=""), "process_kill.process", "1 to 256 characters"),
    (pb.ProcessKill(process="x" * 257), "process_kill.process", "1 to 256 characters"),
    (pb.ProcessKill(process="sleep ("), "process_kill.process", "not a regular expression RE2 accepts"),
    (pb.ProcessKill(process="sleep", signal=65), "process_kill.signal", "1 to 64 (0 means SIGKILL)"),
    (pb.ProcessKill(process="sleep", signal=-1), "process_kill.signal", "1 to 64 (0 means SIGKILL)"),
])
def test_process_kill_rejects_bad_parameters_naming_the_field(daemon, targets, fault, field, accepted):
    pid = targets.process("sleep", "4610")
    code, details = apply_fails(daemon, f"pid://{pid}", process_kill=fault)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(field) and accepted in details
    assert running("sleep 4610")


def test_process_kill_through_the_marker_lists_the_signalled_processes(pytester, targets):
    pid = targets.process("sh", "-c", TWO_SLEEPS.format("08", "09"))
    wait_for(lambda: running("sleep 4608") and running("sleep 4609"), "both sleeps to start")
    result = run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("process-kill", selector={{"pids": [{pid}]}}, process="sleep 46.8", signal="term")
        def test_app(chaos):
            [target] = chaos.experiments[0].targets
            assert [p.command for p in target.processes] == ["sleep 4608"]
            assert target.mechanism == "SIGTERM to the matching processes (pidfd)"
    """, "-rA")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*chaos process-kill mode=one: 1 target*applied*",
                                 "SIGTERM sent to:", "*root*sleep 4608"])
    wait_for(lambda: not running("sleep 4608"), "the matching sleep to end")
    assert running("sleep 4609") and running("sleep ${n}09")


def test_process_kill_with_no_match_errors_the_test_naming_the_target(pytester, targets):
    pid = targets.process("sleep", "4619")
    result = run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("process-kill", selector={{"pids": [{pid}]}}, process="no-such-process")
        def test_app():
            raise AssertionError("must not run")
    """)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*FAILED_PRECONDITION: target pid://{pid} has no process matching 'no-such-process'*"
                                 "its processes: 1 sleep 4619*"])
    assert "must not run" not in result.stdout.str()
    assert running("sleep 4619")


@pytest.mark.parametrize("params, field, accepted", [
    ("", "process", "is required: a command name, or a regular expression"),
    ('process=""', "process", "is required"),
    ("process=3", "process", "is required"),
    ('process="sleep ("', "process", "is not a regular expression RE2 accepts"),
    ('process="sleep", signal="SIGNOPE"', "signal",
     "a signal name such as 'SIGTERM' or 'TERM' (any case) or a number from 1 to 64"),
    ('process="sleep", signal=0', "signal", "a number from 1 to 64"),
    ('process="sleep", signal=65', "signal", "a number from 1 to 64"),
    ('process="sleep", pattern="x"', "pattern", "takes parameters: process, signal"),
])
def test_bad_process_kill_parameters_are_a_usage_error_naming_the_field(pytester, params, field, accepted):
    result = collect_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("process-kill", selector={{"pids": [1]}}, {params})
        def test_bad():
            raise AssertionError("must not run")
    """)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*test_user.py::test_bad: @pytest.mark.chaos {field}: *{accepted}*"])
    assert "must not run" not in result.stdout.str()


def test_container_kill_takes_no_parameters(pytester):
    result = collect_suite(pytester, """
        import pytest

        @pytest.mark.chaos("container-kill", selector={"pids": [1]}, signal="TERM")
        def test_bad():
            pass
    """)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*@pytest.mark.chaos signal: kind 'container-kill' takes parameters: none*"])
