"""stress on real containers, seen from outside the daemon: the container's own cgroup counters, /proc.

A containerd container has cgroups of its own, so what stress-ng uses shows
in them: v1 ``cpuacct.usage`` and ``memory.usage_in_bytes``, or on a cgroup
v2 host ``cpu.stat`` and ``memory.current`` (``tests/support/cgroups.py``).
Loads stay small (one worker, 64MB, seconds): the machines have two cores.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal

import grpc
import pytest
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb
from pytest_chaos_daemon.confinement import procfs
from pytest_chaos_daemon.confinement.tracking import DEFAULT_MOUNT_POINT, HIERARCHY
from pytest_chaos_daemon.faults.stress import STRESSOR_ID

from pytest_chaos.errors import ChaosSpecError
from pytest_chaos.kinds.pod_kill import PodKill
from tests.support.cgroups import cgroup_dir, cpu_seconds, memory_bytes, tracking_modes, within
from tests.support.load import STRESS_NG_PIDS_SOURCE, stress_ng_pids
from tests.support.pausing import freezer_state
from tests.support.suites import collect_suite, run_suite
from tests.support.targets import wait_for

ACTIVE, RECOVERED = pb.InjectionStatus.ACTIVE, pb.InjectionStatus.RECOVERED
CPU = pb.Stress.Cpu(workers=1, load=100)
MEMORY = pb.Stress.Memory(workers=1, size="64MB")
MEMORY_RISE = 40 << 20  # of the 64MB stress-ng keeps mapped, at least this shows in the container's usage
BUSY_S = 0.1  # CPU seconds per second one worker at full load adds, at least, even on a loaded two-core machine
# (an idle target adds none: the bound fails only when no stressor runs)


def stress_ng_in(pid: int) -> list[int]:
    """The live stress-ng processes in the pid namespace of ``pid`` (a target's)."""
    namespace = procfs.namespace_id(f"/proc/{pid}/ns/pid")
    found = []
    for stressor in stress_ng_pids(zombies=False):
        try:
            if procfs.namespace_id(f"/proc/{stressor}/ns/pid") == namespace:
                found.append(stressor)
        except OSError:
            continue
    return found


def tracking_cgroup(pid: int) -> str:
    """The probe cgroup ``pid`` is tracked in, as the daemon journals it: under the named hierarchy's mount point,
    or its cgroup v2 path (a child of the target's)."""
    memberships = procfs.read_cgroups(pid)
    named = [m.path for m in memberships if HIERARCHY in m.controllers and m.path != "/"]
    return DEFAULT_MOUNT_POINT + named[0] if named else next(m.path for m in memberships if m.v2)


def host_pid(daemon, container_id: str) -> int:
    reply = daemon.stub.ExecHelloWorldChaos(
        pb.ExecHelloWorldRequest(container_id=container_id, source=pb.PROCESS_LIST_SOURCE_PROC), timeout=30)
    return reply.status.pid


def apply_stress(stub, container_id: str, injection_id: str, **stressors) -> pb.ApplyResponse:
    request = pb.ApplyRequest(container_id=container_id, injection=pb.Injection(id=injection_id),
                              stress=pb.Stress(**stressors))
    return stub.Apply(request, timeout=60)


def recover(stub, injection_id: str) -> pb.InjectionStatus:
    [status] = stub.Recover(pb.RecoverRequest(injection_ids=[injection_id]), timeout=60).injections
    return status


def status_field(pid: int, name: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split(":", 1)[1].strip() for line in f if line.startswith(f"{name}:"))


@pytest.fixture
def container(targets) -> str:
    return f"containerd://{targets.containerd()}"


@pytest.mark.parametrize("tracking", tracking_modes())
def test_stress_loads_the_containers_own_cgroups_until_it_is_recovered(start_daemon, container, tracking):
    daemon = start_daemon("--containerd-namespace", "*", "--probe-tracking", tracking)
    pid = host_pid(daemon, container)
    idle_cpu, idle_memory = cpu_seconds(pid), memory_bytes(pid)

    reply = apply_stress(daemon.stub, container, "stress-1", cpu=CPU, memory=MEMORY)

    assert reply.status.state == ACTIVE and reply.status.pid == pid
    assert reply.status.mechanism.startswith("stress-ng")
    busy_cpu = cpu_seconds(pid)
    assert busy_cpu > idle_cpu + BUSY_S, f"the container used {busy_cpu:.2f}s of CPU per second (idle: {idle_cpu:.2f}s)"
    wait_for(lambda: memory_bytes(pid) > idle_memory + MEMORY_RISE, "the container's memory usage to rise by 40MiB")

    stressors = stress_ng_in(pid)
    assert len(stressors) >= 3, "stress-ng with a CPU and a memory worker, in the target's pid namespace"
    daemon_binary = shutil.which("stress-ng")
    for stressor in stressors:
        for resource in ("cpu", "memory", "pids"):
            assert within(stressor, pid, resource), (stressor, resource, cgroup_dir(stressor, resource))
        # The daemon's filesystem (its mount namespace: a pod's own, where the daemon runs as one), not the target's.
        assert procfs.namespace_id(f"/proc/{stressor}/ns/mnt") == procfs.namespace_id(f"/proc/{daemon.process.pid}/ns/mnt")
        assert os.path.samefile(f"/proc/{stressor}/exe", daemon_binary)  # the daemon's, not the target's
        assert status_field(stressor, "Uid").split() == [str(STRESSOR_ID)] * 4  # a uid no target runs as
        assert int(status_field(stressor, "CapEff"), 16) == 0 and int(status_field(stressor, "CapBnd"), 16) == 0
        assert status_field(stressor, "NoNewPrivs") == "1"

    status = recover(daemon.stub, "stress-1")

    assert status.state == RECOVERED, status.detail
    assert status.detail.startswith("stopped stress-ng"), status.detail
    assert stress_ng_pids() == []  # zombies included: stress-ng reaped its workers, the daemon stress-ng
    assert cpu_seconds(pid, 0.5) < BUSY_S / 2


def test_stress_runs_the_daemons_stress_ng_in_a_container_that_has_none(daemon, targets, tmp_path):
    # A busybox rootfs without applet links: no shell, no stress-ng, nothing but /bin/busybox.
    rootfs = targets.distroless_rootfs(tmp_path / "distroless")
    container = f"containerd://{targets.containerd('/bin/busybox', 'sleep', '3600', rootfs=rootfs)}"

    reply = apply_stress(daemon.stub, container, "stress-distroless", cpu=pb.Stress.Cpu(workers=1, load=20))

    assert reply.status.state == ACTIVE
    assert stress_ng_in(reply.status.pid)
    assert recover(daemon.stub, "stress-distroless").state == RECOVERED
    assert stress_ng_pids() == []


def test_without_stress_ng_the_daemon_says_to_install_it(start_daemon, targets):
    daemon = start_daemon("--allow-pid-targets", wrapper=["env", "PATH=/nonexistent"])
    pid = targets.process("sleep", "3600")

    with pytest.raises(grpc.RpcError) as raised:
        apply_stress(daemon.stub, f"pid://{pid}", "stress-missing", cpu=CPU)

    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "install" in raised.value.details() and "stress-ng" in raised.value.details()
    assert stress_ng_in(pid) == []


@pytest.mark.parametrize("stress, field", [
    (pb.Stress(), "at least one stressor"),
    (pb.Stress(cpu=pb.Stress.Cpu(workers=0)), "stress.cpu.workers must be from 1 to 8192"),
    (pb.Stress(cpu=pb.Stress.Cpu(workers=8193)), "stress.cpu.workers must be from 1 to 8192"),
    (pb.Stress(cpu=pb.Stress.Cpu(workers=1, load=101)), "stress.cpu.load must be from 0 to 100"),
    (pb.Stress(memory=pb.Stress.Memory(workers=1, size="256")), "stress.memory.size must be a size like '256MB'"),
    (pb.Stress(memory=pb.Stress.Memory(workers=1, size="2KB")), "from 4KiB to 256TiB"),
    (pb.Stress(memory=pb.Stress.Memory(workers=1, size="257TiB")), "from 4KiB to 256TiB"),
    # More digits than a float holds: an InvalidArgument naming the range, not an INTERNAL OverflowError.
    (pb.Stress(memory=pb.Stress.Memory(workers=1, size="9" * 400 + "MB")), "from 4KiB to 256TiB"),
    (pb.Stress(memory=pb.Stress.Memory(workers=1, size="0%")), "'25%' (1% to 100%)"),
])
def test_bad_stressors_are_invalid_arguments_naming_the_field(daemon, stress, field):
    with pytest.raises(grpc.RpcError) as raised:
        daemon.stub.Apply(pb.ApplyRequest(container_id="pid://1", injection=pb.Injection(id="bad"), stress=stress),
                          timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in raised.value.details()


@pytest.mark.parametrize("tracking", tracking_modes())
def test_stressors_die_with_the_daemon_and_a_restarted_daemon_starts_them_again(start_daemon, targets, tmp_path,
                                                                               tracking):
    state = str(tmp_path / "state")
    container = f"containerd://{targets.containerd()}"
    first = start_daemon("--containerd-namespace", "*", "--state-dir", state, "--probe-tracking", tracking)
    pid = apply_stress(first.stub, container, "stress-restart", cpu=pb.Stress.Cpu(workers=1, load=50)).status.pid
    assert stress_ng_in(pid)

    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    # The helper kills the program when the daemon dies; its workers, left to the container's init (a
    # sleep that reaps nothing), may stay as zombies until the container ends.
    wait_for(lambda: not stress_ng_in(pid), "stress-ng to die with the daemon")

    second = start_daemon("--containerd-namespace", "*", "--state-dir", state, "--probe-tracking", tracking)
    wait_for(lambda: stress_ng_in(pid), "the restarted daemon to start stress-ng again")
    stressors = stress_ng_in(pid)
    [journaled] = [json.load(open(path)) for path in glob.glob(f"{state}/injections/*.json")]
    assert journaled["state"] == "active"
    for stressor in stressors:
        assert within(stressor, pid, "cpu")
        # The journal names the cgroup the new stressors are in: recovery will find them.
        assert tracking_cgroup(stressor) == journaled["plan"]["cgroup"]

    status = recover(second.stub, "stress-restart")

    assert status.state == RECOVERED, status.detail
    assert stress_ng_pids(zombies=False) == []



# Reads a target's CPU time from its cgroup (v1 cpuacct or v2 cpu.stat), in the user's test module.
CPU_SECONDS = """
import os
import time

from pytest_chaos_daemon.confinement import procfs


def cpu_used(pid):
    memberships = procfs.read_cgroups(pid)
    v1 = [m for m in memberships if "cpuacct" in m.controllers]
    directory = procfs.cgroup_dir((v1 or [m for m in memberships if m.v2])[0], procfs.cgroup_mounts())
    if v1:
        return int(open(os.path.join(directory, "cpuacct.usage")).read()) / 1e9
    stat = dict(line.split() for line in open(os.path.join(directory, "cpu.stat")))
    return int(stat["usage_usec"]) / 1e6


def cpu_seconds(pid, interval=1.0):
    before = cpu_used(pid)
    time.sleep(interval)
    return cpu_used(pid) - before


def stress_ng_running():
    return stress_ng_pids(zombies=False)
""" + STRESS_NG_PIDS_SOURCE


def test_the_marker_stresses_the_container_during_the_test_and_recovers_it_after(pytester, targets):
    container = targets.containerd()
    result = run_suite(pytester, CPU_SECONDS + f"""
import pytest


@pytest.mark.chaos("stress", selector={{"containers": ["{container}"]}}, mode="all",
                   stressors={{"cpu": {{"workers": 1}}, "memory": {{"workers": 1, "size": "64MB"}}}})
def test_app(chaos):
    [experiment] = chaos.experiments
    [target] = experiment.targets
    assert experiment.outcome == "applied"
    assert target.mechanism.startswith("stress-ng")
    assert cpu_seconds(target.pid) > {BUSY_S}
    assert stress_ng_running()
""", "-rA")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*Captured chaos teardown*",
                                 f"chaos stress mode=all: 1 target [[]containerd://{container}[]] recovered*"])
    assert stress_ng_pids() == []


def test_a_duration_shorter_than_the_test_ends_the_stress_mid_test(pytester, targets):
    container = targets.containerd()
    result = run_suite(pytester, CPU_SECONDS + f"""
def test_app(chaos):
    with chaos.apply("stress", selector={{"containers": ["{container}"]}}, mode="all", duration="1s",
                     stressors={{"cpu": {{"workers": 1, "load": 50}}}}) as experiment:
        assert stress_ng_running()
        deadline = time.monotonic() + 15
        while experiment.outcome == "applied" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert experiment.outcome == "expired", experiment.summary()
        assert "its duration passed" in experiment.detail
        assert stress_ng_running() == []
        assert cpu_seconds(experiment.targets[0].pid, 0.5) < {BUSY_S / 2}
""")
    result.assert_outcomes(passed=1)
    assert stress_ng_pids() == []


@pytest.mark.parametrize("stressors, field, accepted", [
    ("None", "stressors", "is required: cpu and/or memory"),
    ("{}", "stressors", "must be a dict with cpu and/or memory"),
    ('{"disk": {"workers": 1}}', "stressors.disk", "accepted: cpu, memory"),
    ('{"cpu": {"workers": 0}}', "stressors.cpu.workers", "an integer from 1 to 8192"),
    ('{"cpu": {"workers": True}}', "stressors.cpu.workers", "an integer from 1 to 8192"),
    ('{"cpu": {"workers": 1, "load": 150}}', "stressors.cpu.load", "from 0 to 100"),
    ('{"cpu": {"workers": 1, "threads": 2}}', "stressors.cpu.threads", "accepted: workers, load"),
    ('{"memory": {"workers": 1}}', "stressors.memory.size", "is required*'256MB'"),
    ('{"memory": {"workers": 1, "size": "lots"}}', "stressors.memory.size", "'256MB', '1GB', '512KB'*'25%'"),
    ('{"memory": {"workers": 1, "size": "150%"}}', "stressors.memory.size", "(1% to 100%)"),
    ('{"memory": {"workers": 1, "size": "257TiB"}}', "stressors.memory.size", "from 4KiB to 256TiB"),
    ('{"memory": {"workers": 1, "size": "9" * 400 + "MB"}}', "stressors.memory.size", "from 4KiB to 256TiB"),
    ('{"memory": {"size": "64MB"}}', "stressors.memory.workers", "an integer from 1 to 8192"),
])
def test_bad_stressors_are_a_usage_error_at_collection(pytester, stressors, field, accepted):
    extra = "" if stressors == "None" else f", stressors={stressors}"
    result = collect_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("stress", selector={{"pids": [1]}}{extra})
        def test_bad():
            raise AssertionError("must not run")
    """)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*test_user.py::test_bad: @pytest.mark.chaos {field}: *{accepted}*"])
    assert "must not run" not in result.stdout.str()


def test_the_local_backend_refuses_pod_kill_at_collection(pytester):
    result = collect_suite(pytester, """
        import pytest

        @pytest.mark.chaos("pod-kill", selector={"pids": [1]})
        def test_bad():
            raise AssertionError("must not run")
    """)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_user.py::test_bad: @pytest.mark.chaos kind: 'pod-kill' works with the "
                                 "kubernetes backend only (--chaos-backend=kubernetes); this run uses local*"])


@pytest.mark.parametrize("params, expected", [({}, 0), ({"grace_period": 30}, 30)])
def test_pod_kill_takes_a_grace_period_in_whole_seconds(params, expected):
    assert PodKill().check_params(params) == {"grace_period": expected}


@pytest.mark.parametrize("params, field", [
    ({"grace_period": -1}, "grace_period"), ({"grace_period": 1.5}, "grace_period"),
    ({"grace_period": True}, "grace_period"), ({"force": True}, "force"),
])
def test_pod_kill_refuses_other_parameters(params, field):
    with pytest.raises(ChaosSpecError) as raised:
        PodKill().check_params(params)
    assert raised.value.field == field


def test_a_cpu_stressor_without_a_load_runs_at_full_load(daemon, container):
    apply_stress(daemon.stub, container, "stress-default-load", cpu=pb.Stress.Cpu(workers=1))
    try:
        pid = host_pid(daemon, container)
        commands = [" ".join(procfs.read_cmdline(p)) for p in stress_ng_in(pid)]
        assert commands and all("--cpu-load 100" in c for c in commands if "--cpu " in c), commands
    finally:
        recover(daemon.stub, "stress-default-load")


# -- stress with container-pause on one target (docs/kinds/stress.md, "With other kinds") --------------------------

def pause(stub, container_id: str, injection_id: str) -> pb.ApplyResponse:
    return stub.Apply(pb.ApplyRequest(container_id=container_id, injection=pb.Injection(id=injection_id),
                                      container_pause=pb.ContainerPause()), timeout=60)


def test_stress_on_a_paused_target_is_refused_at_once_and_leaves_nothing(daemon, container):
    pid = pause(daemon.stub, container, "paused-first").status.pid
    with pytest.raises(grpc.RpcError) as refused:
        apply_stress(daemon.stub, container, "stress-on-paused", cpu=CPU)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is paused (frozen by the cgroup v" in refused.value.details()
    assert "apply stress before pausing it" in refused.value.details()
    assert stress_ng_pids() == []
    assert freezer_state(pid) == "FROZEN"  # the pause is untouched
    assert recover(daemon.stub, "paused-first").state == RECOVERED


def test_stress_recovered_while_its_target_is_paused_leaves_no_stressor_and_the_target_paused(daemon, container):
    pid = apply_stress(daemon.stub, container, "stress-then-pause", cpu=CPU).status.pid
    assert stress_ng_in(pid)
    pause(daemon.stub, container, "pause-over-stress")
    assert freezer_state(pid) == "FROZEN"

    status = recover(daemon.stub, "stress-then-pause")

    # Frozen stressors die only when thawed: recovery takes them out of the freezer first.
    assert status.state == RECOVERED, status.detail
    assert stress_ng_pids(zombies=False) == []
    assert freezer_state(pid) == "FROZEN"
    assert recover(daemon.stub, "pause-over-stress").state == RECOVERED
    assert freezer_state(pid) == "THAWED"


def test_a_restarted_daemon_claims_before_serving_and_ends_a_stress_it_cannot_resume(start_daemon, targets,
                                                                                         tmp_path):
    state = str(tmp_path / "state")
    container = f"containerd://{targets.containerd()}"
    first = start_daemon("--containerd-namespace", "*", "--state-dir", state)
    pid = apply_stress(first.stub, container, "stress-paused-at-restart", cpu=CPU).status.pid
    pause(first.stub, container, "pause-at-restart")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()

    second = start_daemon("--containerd-namespace", "*", "--state-dir", state)
    wait_for(lambda: '"adoption done"' in second.log(), "the second daemon to take the journal over")
    log = second.log()
    # Claimed (known to Renew and Recover) before serving; undone or resumed beside the calls, whose order
    # against "serving" depends on how long that takes.
    assert log.index('"adopted from the journal"') < log.index('"serving"')
    listed = {s.injection_id: s for s in second.stub.ListInjections(
        pb.ListInjectionsRequest(include_ended=True), timeout=30).injections}
    # Stressors restarted in a frozen target would never run: the injection ends, saying so, not "active".
    stress = listed["stress-paused-at-restart"]
    assert stress.state == pb.InjectionStatus.FAILED
    assert "could not be resumed at restart" in stress.detail and "is paused" in stress.detail
    assert stress_ng_pids(zombies=False) == []
    assert listed["pause-at-restart"].state == ACTIVE and freezer_state(pid) == "FROZEN"
    assert recover(second.stub, "pause-at-restart").state == RECOVERED
