"""stress's ``options`` (an allow-list of stress-ng options) and the memory stressor's ``oom_score_adj``, checked
from outside the daemon: each stressor's argv and oom_score_adj in /proc."""

from __future__ import annotations

import grpc
import pytest
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb

from pytest_chaos.api.contract import STRESS_OPTIONS, stress_options
from pytest_chaos.backends.kubernetes import KubernetesBackend
from pytest_chaos.errors import ChaosSpecError
from pytest_chaos.spec import build_spec
from tests.test_stress import apply_stress, recover, stress_ng_in

ACTIVE, RECOVERED = pb.InjectionStatus.ACTIVE, pb.InjectionStatus.RECOVERED


def argv(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def oom_score_adj(pid: int) -> int:
    with open(f"/proc/{pid}/oom_score_adj") as f:
        return int(f.read())


@pytest.fixture
def container(targets) -> str:
    return f"containerd://{targets.containerd()}"


def test_options_reach_stress_ngs_argv_after_the_daemons_own_and_oom_score_adj_every_stressor(daemon, container):
    cpu = pb.Stress.Cpu(workers=1, load=20, options=["--cpu-method sqrt", "--timeout=600"])
    memory = pb.Stress.Memory(workers=1, size="16MB", options=["--vm-method", "flip", "--oomable"], oom_score_adj=500)
    reply = apply_stress(daemon.stub, container, "stress-options", cpu=cpu, memory=memory)
    assert reply.status.state == ACTIVE, reply.status.detail
    try:
        stressors = stress_ng_in(reply.status.pid)
        assert len(stressors) >= 3  # stress-ng, a cpu worker, a vm worker (and stress-ng's vm child)
        [parent] = [pid for pid in stressors if argv(pid)[0].endswith("stress-ng") and "--cpu-method" in argv(pid)][:1]
        words = argv(parent)
        # The daemon's argv, the options after its own (stress-ng's last word wins), each a word of its own.
        assert words[words.index("--cpu-load") + 1] == "20"
        assert words[words.index("--cpu-method"):words.index("--cpu-method") + 4] == ["--cpu-method", "sqrt",
                                                                                        "--timeout", "600"]
        assert words.index("--cpu-method") > words.index("--cpu-load")
        assert words[words.index("--vm-method"):words.index("--vm-method") + 3] == ["--vm-method", "flip", "--oomable"]
        # Every stressor, the vm workers included (stress-ng sets theirs to 1000 as they start).
        assert {pid: oom_score_adj(pid) for pid in stress_ng_in(reply.status.pid)} == \
            {pid: 500 for pid in stress_ng_in(reply.status.pid)}
    finally:
        status = recover(daemon.stub, "stress-options")
    assert status.state == RECOVERED, status.detail
    assert stress_ng_in(reply.status.pid) == []


def test_an_oom_score_adj_below_the_targets_own_is_refused_and_its_own_is_taken(daemon, targets):
    container = f"containerd://{targets.containerd()}"
    reply = apply_stress(daemon.stub, container, "stress-own", memory=pb.Stress.Memory(workers=1, size="8MB"))
    own = oom_score_adj(reply.status.pid)  # the target's (containerd gives its tasks one of their own)
    assert recover(daemon.stub, "stress-own").state == RECOVERED
    with pytest.raises(grpc.RpcError) as raised:
        apply_stress(daemon.stub, container, "stress-shielded",
                     memory=pb.Stress.Memory(workers=1, size="8MB", oom_score_adj=own - 1))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"oom_score_adj {own - 1} is lower than the target's own ({own})" in raised.value.details()
    assert stress_ng_in(reply.status.pid) == []
    reply = apply_stress(daemon.stub, container, "stress-level",
                         memory=pb.Stress.Memory(workers=1, size="8MB", oom_score_adj=own))
    try:
        assert {oom_score_adj(pid) for pid in stress_ng_in(reply.status.pid)} == {own}
    finally:
        assert recover(daemon.stub, "stress-level").state == RECOVERED


@pytest.mark.parametrize("stress, message", [
    (pb.Stress(cpu=pb.Stress.Cpu(workers=1, options=["--cpu 2", "--hdd 1"])),
     "stress.cpu.options[1]: '--hdd' is not an allowed stress-ng option for the cpu stressor; allowed: --cpu,"),
    (pb.Stress(cpu=pb.Stress.Cpu(workers=1, options=["--cpu-method"])), "--cpu-method needs a value"),
    (pb.Stress(cpu=pb.Stress.Cpu(workers=1, options=["--cpu-method $(reboot)"])), "--cpu-method's value must be"),
    (pb.Stress(memory=pb.Stress.Memory(workers=1, size="1MB", options=["--vm-bytes 1G"])),
     "stress.memory.options[0]: '--vm-bytes' is not an allowed"),
    (pb.Stress(memory=pb.Stress.Memory(workers=1, size="1MB", oom_score_adj=1001)),
     "stress.memory.oom_score_adj must be from -1000 to 1000"),
])
def test_options_off_the_allow_list_are_invalid_arguments_naming_them(daemon, container, stress, message):
    with pytest.raises(grpc.RpcError) as raised:
        daemon.stub.Apply(pb.ApplyRequest(container_id=container, injection=pb.Injection(id="bad-options"),
                                          stress=stress), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in raised.value.details()


def test_every_allowed_option_is_one_stress_ng_knows():
    import subprocess

    helped = subprocess.run(["stress-ng", "--help"], capture_output=True, text=True).stdout
    for options in STRESS_OPTIONS.values():
        for option in options:
            assert f"{option} " in helped or f"{option}\n" in helped, option


@pytest.mark.parametrize("stressors, field, accepted", [
    ({"cpu": {"workers": 1, "options": ["--io 4"]}}, "stressors.cpu.options[0]", "allowed: --cpu, --cpu-method"),
    ({"cpu": {"workers": 1, "options": "--cpu 2"}}, "stressors.cpu.options", "must be a list"),
    ({"memory": {"workers": 1, "size": "1MB", "oom_score_adj": "-1000"}}, "stressors.memory.oom_score_adj",
     "an integer from -1000 to 1000"),
    ({"cpu": {"workers": 1, "oom_score_adj": 0}}, "stressors.cpu.oom_score_adj", "accepted: workers, load, options"),
])
def test_the_marker_refuses_what_the_daemon_would_naming_the_field(stressors, field, accepted):
    with pytest.raises(ChaosSpecError) as raised:
        build_spec(KubernetesBackend(kubeconfig="/nonexistent"), ("stress",), {"selector": {"namespaces": ["a"]},
                                                                             "stressors": stressors})
    assert raised.value.field == field and accepted in raised.value.message


def test_options_may_share_a_string_or_split_a_value_as_chaos_mesh_joins_them():
    assert stress_options("cpu", ["--cpu 2 --timeout 600", "--cpu-load-slice", "10"]) == \
        ["--cpu", "2", "--timeout", "600", "--cpu-load-slice", "10"]
