"""container-pause on real targets, seen from outside the daemon.

Each target counts (``pausing.py``): a paused one stops counting, a recovered
one counts again, and the kernel's view (freezer cgroup state, process state
``T``) says the same. The daemon is driven over gRPC and through the marker.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb
from pytest_chaos_daemon.faults.container_pause import FREEZER_V1, FREEZER_V2, SIGSTOP

from tests.support.pausing import (
    RUNTIMES,
    Counting,
    Freezer,
    apply_pause,
    listing,
    log_entries,
    process_state,
    recover,
    seconds,
    start_counting,
)
from tests.support.targets import run, wait_for

ACTIVE, RECOVERED = pb.InjectionStatus.ACTIVE, pb.InjectionStatus.RECOVERED


@pytest.fixture(params=RUNTIMES)
def counting(request, targets, tmp_path) -> Counting:
    """A counting target of each runtime: containerd, Docker, pid://."""
    return start_counting(targets, request.param, tmp_path / "target")


def test_a_paused_target_stops_counting_until_it_is_recovered(daemon, counting):
    reply = apply_pause(daemon.stub, counting.container_id, "pause-1")

    assert reply.status.state == ACTIVE
    assert reply.status.pid == counting.host_pid
    assert reply.status.mechanism in ((SIGSTOP,) if counting.runtime == "pid" else (FREEZER_V1, FREEZER_V2))
    wait_for(counting.frozen, "the kernel to report the target paused")
    assert counting.still(), "a paused target kept counting"

    [status] = recover(daemon.stub, "pause-1")

    assert status.state == RECOVERED
    assert status.detail.startswith("SIGCONT to" if counting.runtime == "pid" else "thawed"), status.detail
    assert counting.thawed()
    counting.wait_advancing()


def test_a_pid_target_whose_children_come_and_go_is_paused_every_time(daemon, targets):
    # Its children end between the daemon listing the process tree and reading each one's start time.
    pid = targets.process("sh", "-c", "while :; do /bin/true; done")
    for attempt in range(40):
        reply = apply_pause(daemon.stub, f"pid://{pid}", f"churn-{attempt}")
        assert reply.status.state == ACTIVE, reply.status.detail
        [status] = recover(daemon.stub, f"churn-{attempt}")
        assert status.state == RECOVERED, status.detail


def test_the_marker_pauses_the_target_during_the_test_and_recovers_it_after(pytester, counting):
    # What the kernel says of the target: its process state, or its freezer cgroup's.
    if counting.runtime == "pid":
        kernel_view, paused = f"/proc/{counting.host_pid}/stat", "T"
    else:
        freezer = Freezer.of(counting.host_pid)
        kernel_view, paused = freezer.state_file, freezer.frozen_text
    is_process = counting.runtime == "pid"
    pytester.makepyfile(test_user=f"""
        import os
        import time
        import pytest

        def count():
            return os.path.getsize({counting.counter!r})

        def kernel_state():
            text = open({kernel_view!r}).read()
            return text.rsplit(")", 1)[1].split()[0] if {is_process} else {paused!r} if {paused!r} in text else text

        @pytest.mark.chaos("container-pause", selector={counting.selector!r}, mode="all")
        def test_app(chaos):
            [experiment] = chaos.experiments
            [target] = experiment.targets
            assert experiment.outcome == "applied"
            assert (target.container_id, target.pid) == ({counting.container_id!r}, {counting.host_pid})
            assert kernel_state() == {paused!r}
            before = count()
            time.sleep(0.5)
            assert count() == before, "the paused target kept counting"
    """)

    result = pytester.runpytest_subprocess("-p", "chaos", "-rA")

    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        f"chaos container-pause mode=all: 1 target [[]{counting.container_id}[]] applied*",
        f"*test_app: chaos container-pause mode=all: 1 target [[]{counting.container_id}[]] recovered*",
    ])
    assert counting.thawed()
    counting.wait_advancing()


def test_recovering_an_already_recovered_injection_says_recovered_again_and_touches_nothing(daemon, targets, tmp_path):
    counting = start_counting(targets, "containerd", tmp_path)
    apply_pause(daemon.stub, counting.container_id, "once")
    [first] = recover(daemon.stub, "once")
    assert first.state == RECOVERED
    counting.wait_advancing()
    # Frozen again by hand: a second recovery that thawed anything would show.
    freezer = Freezer.of(counting.host_pid)
    freezer.set(frozen=True)
    try:
        wait_for(counting.frozen, "the hand-made freeze")

        [second] = recover(daemon.stub, "once")

        assert second == first  # same state, detail and ended_at: the one recovery
        assert counting.frozen() and counting.still()
    finally:
        freezer.set(frozen=False)
    counting.wait_advancing()
    assert [e["injection_id"] for e in log_entries(daemon.log(), "recovered")] == ["once"]


def test_recovering_an_unknown_injection_id_says_unknown_injection(daemon):
    [status] = recover(daemon.stub, "never-applied")

    assert status.injection_id == "never-applied"
    assert status.state == pb.InjectionStatus.UNKNOWN_INJECTION
    assert "knows no injection" in status.detail
    assert not log_entries(daemon.log(), "recovered")


def remove(targets, counting: Counting) -> None:
    """Make the target disappear, its cgroup or process included, while it is paused."""
    if counting.runtime == "containerd":
        name = counting.container_id.removeprefix("containerd://")
        ctr = ("ctr", "-n", targets.containerd_namespace)
        run(*ctr, "tasks", "kill", "-s", "SIGKILL", name)  # runc thaws a paused container it kills
        wait_for(lambda: run(*ctr, "tasks", "delete", name, check=False).returncode == 0, "the task to be deleted")
    elif counting.runtime == "docker":
        run("docker", "rm", "-f", counting.container_id.removeprefix("docker://"))
    else:
        os.kill(counting.host_pid, signal.SIGKILL)
    wait_for(lambda: process_state(counting.host_pid) is None, "the target's process to be gone")


def test_a_target_gone_before_recovery_counts_as_recovered_and_the_detail_says_so(daemon, targets, counting):
    apply_pause(daemon.stub, counting.container_id, "orphaned")
    wait_for(counting.frozen, "the target to be paused")
    remove(targets, counting)

    [status] = recover(daemon.stub, "orphaned")

    assert status.state == RECOVERED
    assert "target gone" in status.detail and "counted as recovered" in status.detail, status.detail
    assert listing(daemon.stub) == {}


def test_list_injections_shows_each_live_injection_with_kind_target_times_and_owner(daemon, targets, tmp_path):
    container = start_counting(targets, "containerd", tmp_path / "container")
    process = start_counting(targets, "pid", tmp_path / "process")
    before = time.time()
    apply_pause(daemon.stub, container.container_id, "in-container", lease_s=30, owner="pytest 1@host t.py::a")
    apply_pause(daemon.stub, process.container_id, "in-process", lease_s=45, duration_s=20, owner="pytest 1@host t.py::b")
    after = time.time()
    try:
        live = listing(daemon.stub)

        assert set(live) == {"in-container", "in-process"}
        for injection_id, target, owner, lasts in (("in-container", container, "pytest 1@host t.py::a", 30),
                                                   ("in-process", process, "pytest 1@host t.py::b", 20)):
            status = live[injection_id]
            assert (status.kind, status.container_id, status.pid, status.owner, status.state) == (
                "container-pause", target.container_id, target.host_pid, owner, ACTIVE)
            assert before <= seconds(status.applied_at) <= after
            # The lease or the duration, whichever ends first.
            assert seconds(status.expires_at) == pytest.approx(seconds(status.applied_at) + lasts, abs=0.01)
            assert not status.HasField("ended_at")

        recover(daemon.stub, "in-container")

        assert set(listing(daemon.stub)) == {"in-process"}
        ended = listing(daemon.stub, include_ended=True)["in-container"]
        assert ended.state == RECOVERED and ended.HasField("ended_at") and not ended.HasField("expires_at")
    finally:
        recover(daemon.stub, "in-container", "in-process")
    assert listing(daemon.stub) == {}
