"""A fault in force ends, whatever happens to the test, the runner or the daemon.

container-pause on counting targets (``pausing.py``), watched from outside:
a duration that passes mid-test; a runner SIGKILLed mid-test (embedded
daemon: it recovers on its parent's death; external daemon: the lease runs
out), with a stress beside the pause that must leave no stress-ng behind; a
daemon SIGKILLed and started again on its journal; daemons sharing a journal;
pytest-xdist workers; pytest-timeout's two methods.
Times from the runner's death to the target running again are printed
(``-s``) as they are measured.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2_grpc as pb_grpc
from pytest_chaos_daemon.lifecycle import journal as journal_states
from pytest_chaos_daemon.lifecycle.injections import ADOPT_EVERY_S
from pytest_chaos_daemon.lifecycle.journal import Journal

from tests.conftest import RunningDaemon
from tests.support.journals import orphaned_pauses
from tests.support.pausing import (
    Counting,
    apply_pause,
    kill_subprocess,
    listing,
    log_entries,
    pytest_argv,
    recover,
    seconds,
    start_counting,
    until,
)
from tests.support.targets import gone

ACTIVE, RECOVERED, EXPIRED = pb.InjectionStatus.ACTIVE, pb.InjectionStatus.RECOVERED, pb.InjectionStatus.EXPIRED
SHORT_LEASE_S = 3.0  # the runner's --chaos-lease where the lease is what recovers
KILL_RUNS = 3  # runner SIGKILLs per daemon kind, for a median
START_TIMEOUT_S = 60.0


@pytest.fixture
def container(targets, tmp_path) -> Counting:
    return start_counting(targets, "containerd", tmp_path / "target")


def journal_daemon(start_daemon, state_dir: Path):
    return start_daemon("--containerd-namespace", "*", "--allow-pid-targets", "--state-dir", str(state_dir))


def sigkill(daemon) -> None:
    daemon.process.kill()
    daemon.process.wait()  # reaped: until then its journal records still name a live process


def report(what: str, samples: list[float]) -> None:
    print(f"\n{what}: median {statistics.median(samples):.3f}s over {len(samples)} run(s): "
          + ", ".join(f"{s:.3f}" for s in samples))


# A duration that passes while the test runs.

def test_a_duration_shorter_than_the_test_recovers_the_fault_mid_test_and_the_test_sees_it_expired(
        pytester, container):
    pytester.makepyfile(test_user=f"""
        import os
        import time
        import pytest

        def count():
            return os.path.getsize({container.counter!r})

        def within(seconds, condition, what):
            deadline = time.monotonic() + seconds
            while not condition():
                assert time.monotonic() < deadline, what
                time.sleep(0.02)

        @pytest.mark.chaos("container-pause", selector={container.selector!r}, mode="all", duration="1s")
        def test_app(chaos):
            [experiment] = chaos.experiments
            assert experiment.outcome == "applied"
            before = count()
            time.sleep(0.3)
            assert count() == before, "the target counted while paused"

            within(10, lambda: experiment.outcome != "applied", "the experiment still says applied")

            assert experiment.outcome == "expired", experiment.detail
            assert "its duration passed" in experiment.detail
            print("SEEN EXPIRED AFTER", time.time() - experiment.applied_at)
            before = count()
            within(5, lambda: count() >= before + 2, "the target does not count again")
    """)

    result = pytester.runpytest_subprocess("-p", "chaos", "-s")

    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_app: chaos container-pause mode=all: 1 target * expired (its duration passed*"])
    seen = float(next(line.split()[-1] for line in result.outlines if "SEEN EXPIRED AFTER" in line))
    report("duration 1s: the test saw 'expired' after", [seen])
    assert container.thawed()


# The runner SIGKILLed mid-test.

RUNNER_KILLED_TEST = """
import time
import pytest

@pytest.mark.chaos("container-pause", selector={paused!r}, mode="all")
@pytest.mark.chaos("stress", selector={stressed!r}, mode="all", stressors={{"cpu": {{"workers": 1, "load": 10}}}})
def test_app(chaos):
    [target] = chaos.experiments[0].targets
    print("PAUSED", target.daemon, target.injection_id, flush=True)
    time.sleep(600)
"""


def stressors_beside(host_pid: int) -> list[int]:
    """stress-ng processes in the pid namespace of ``host_pid`` (where the daemon runs them)."""
    namespace = os.readlink(f"/proc/{host_pid}/ns/pid")
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if entry.isdigit() and os.readlink(f"/proc/{entry}/ns/pid") == namespace:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().startswith("stress-ng"):
                        found.append(int(entry))
    return found


@pytest.fixture
def stressed(targets, tmp_path) -> Counting:
    """The target of the stress applied beside the pause (a frozen cgroup would freeze stress-ng too)."""
    return start_counting(targets, "containerd", tmp_path / "stressed")


def printed_line(output: Path, process: subprocess.Popen, key: str) -> list[str] | None:
    """The words after ``key`` on the line the user test printed; fails if pytest ended first."""
    text = output.read_text(errors="replace")
    for line in text.splitlines():
        if f"{key} " in line:
            return line.split(f"{key} ", 1)[1].split()
    if process.poll() is not None:
        raise AssertionError(f"pytest exited ({process.returncode}) before printing {key}:\n{text}")
    return None


def kill_runner_mid_test(pytester, container: Counting, stressed: Counting, run: int,
                         *args: str) -> tuple[float, str, str]:
    """Start pytest on a test that pauses ``container`` and stresses ``stressed``, SIGKILL it mid-test,
    and return the seconds from the SIGKILL until the paused target counts again, the daemon's address
    and the pause's injection id. No stressor is left afterwards."""
    output = pytester.path / f"pytest-{run}.out"
    with open(output, "wb") as out:
        runner = subprocess.Popen(pytest_argv("-s", "test_user.py", *args), cwd=pytester.path,
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        until(lambda: printed_line(output, runner, "PAUSED"), "the test to pause its target", START_TIMEOUT_S, every=0.05)
        address, injection_id = printed_line(output, runner, "PAUSED")
        assert container.frozen()
        assert stressors_beside(stressed.host_pid), "the stress is not in force"
        before = container.count()
        runner.kill()
        killed = time.monotonic()
        runner.wait()
        until(lambda: container.count() > before, "the target to count again", SHORT_LEASE_S + 5)
        elapsed = time.monotonic() - killed
        until(lambda: not stressors_beside(stressed.host_pid), "every stressor to end", SHORT_LEASE_S + 5)
        return elapsed, address, injection_id
    finally:
        kill_subprocess(runner)


def test_runner_sigkilled_mid_test_with_the_embedded_daemon_puts_the_target_back_at_once(
        pytester, container, stressed):
    pytester.makepyfile(test_user=RUNNER_KILLED_TEST.format(paused=container.selector, stressed=stressed.selector))
    samples = []
    for run in range(KILL_RUNS):
        elapsed, address, _ = kill_runner_mid_test(pytester, container, stressed, run)
        samples.append(elapsed)
        # The daemon saw its parent die, recovered on its way out, and is gone with its socket.
        gone(address.removeprefix("unix://"))
    report("runner SIGKILL -> target counting, embedded daemon", samples)
    assert max(samples) < 5.0  # not the lease (30 s by default): the daemon's exit
    assert container.thawed()


def test_runner_sigkilled_mid_test_with_an_external_daemon_is_recovered_when_its_lease_runs_out(
        pytester, container, stressed, start_daemon):
    daemon = start_daemon("--containerd-namespace", "*")
    pytester.makepyfile(test_user=RUNNER_KILLED_TEST.format(paused=container.selector, stressed=stressed.selector))
    samples, ids = [], []
    for run in range(KILL_RUNS):
        elapsed, address, injection_id = kill_runner_mid_test(
            pytester, container, stressed, run, f"--chaos-daemon={daemon.address}", f"--chaos-lease={SHORT_LEASE_S:g}")
        assert address == daemon.address
        samples.append(elapsed)
        ids.append(injection_id)
    report(f"runner SIGKILL -> target counting, external daemon, --chaos-lease={SHORT_LEASE_S:g}", samples)
    assert max(samples) <= SHORT_LEASE_S + 5
    # The stressors' expiry comes right after the pause's, in the same round of the daemon's.
    until(lambda: not listing(daemon.stub), "every injection to end", timeout=15, every=0.1)
    ended = listing(daemon.stub, include_ended=True)
    for injection_id in ids:
        assert ended[injection_id].state == EXPIRED
        assert ended[injection_id].detail.startswith("its lease ran out"), ended[injection_id].detail
    assert sorted(s.kind for s in ended.values()) == sorted(["container-pause", "stress"] * KILL_RUNS)
    assert {s.state for s in ended.values()} == {EXPIRED}
    assert listing(daemon.stub) == {}


# The daemon SIGKILLed with a fault in force, and a daemon started again on its journal.

def test_a_fault_whose_lease_ran_out_while_no_daemon_ran_is_recovered_by_the_next_daemon_at_start(
        start_daemon, container, tmp_path):
    first = journal_daemon(start_daemon, tmp_path / "state")
    reply = apply_pause(first.stub, container.container_id, "outlived", lease_s=1)
    sigkill(first)
    expires_at = seconds(reply.status.expires_at)
    until(lambda: time.time() > expires_at + 0.3, "the lease to run out", timeout=5, every=0.05)
    assert container.frozen() and container.still(), "no daemon runs: nothing should have recovered it"

    second = journal_daemon(start_daemon, tmp_path / "state")

    assert container.thawed()  # before the second daemon served
    container.wait_advancing()
    status = listing(second.stub, include_ended=True)["outlived"]
    assert status.state == EXPIRED
    assert status.detail.startswith("its time ran out while no daemon watched it: thawed"), status.detail
    assert [e["injection_id"] for e in log_entries(second.log(), "adopted from the journal")] == ["outlived"]


def test_a_fault_whose_lease_still_runs_is_kept_by_the_next_daemon_until_the_lease_ends(
        start_daemon, container, tmp_path):
    lease_s = 6.0
    first = journal_daemon(start_daemon, tmp_path / "state")
    reply = apply_pause(first.stub, container.container_id, "kept", lease_s=lease_s)
    expires_at = seconds(reply.status.expires_at)
    sigkill(first)

    second = journal_daemon(start_daemon, tmp_path / "state")

    assert time.time() < expires_at - 1, "the second daemon took too long to start for this test"
    status = listing(second.stub)["kept"]
    assert status.state == ACTIVE
    assert seconds(status.expires_at) == pytest.approx(expires_at, abs=0.001)
    assert container.frozen() and container.still()
    until(container.thawed, "the lease to end and the target to be thawed", lease_s + 5, every=0.01)
    thawed_at = time.time()
    assert expires_at - 0.05 <= thawed_at <= expires_at + 2, (thawed_at, expires_at)
    container.wait_advancing()
    status = listing(second.stub, include_ended=True)["kept"]
    assert status.state == EXPIRED and status.detail.startswith("its lease ran out"), status.detail
    assert [e["injection_id"] for e in log_entries(second.log(), "kept from the journal")] == ["kept"]


def test_a_second_live_daemon_on_the_same_journal_leaves_the_firsts_faults_alone_until_the_first_dies(
        start_daemon, container, tmp_path):
    first = journal_daemon(start_daemon, tmp_path / "state")
    apply_pause(first.stub, container.container_id, "firsts", lease_s=120)

    second = journal_daemon(start_daemon, tmp_path / "state")

    # Its adoption at start, then a whole periodic round, while the first lives: nothing taken.
    assert container.frozen() and container.still(ADOPT_EVERY_S + 0.5)
    assert listing(second.stub, include_ended=True) == {}
    assert listing(first.stub)["firsts"].state == ACTIVE

    sigkill(first)

    until(lambda: "firsts" in listing(second.stub), "the second daemon to adopt the injection",
          ADOPT_EVERY_S + 5, every=0.1)
    assert listing(second.stub)["firsts"].state == ACTIVE  # kept: its lease runs on
    assert container.frozen() and container.still()
    [adopted] = log_entries(second.log(), "adopted from the journal")
    assert adopted["injection_id"] == "firsts"
    [status] = recover(second.stub, "firsts")
    assert status.state == RECOVERED
    container.wait_advancing()


ENDED_RECORDS = 300  # what earlier runs leave in a shared journal: ended injections are kept an hour


def test_daemons_started_together_on_one_journal_both_serve_and_one_takes_over_the_dead_daemons_fault(
        start_daemon, container, tmp_path):
    """As pytest-xdist workers' own daemons do on the default state directory."""
    state = tmp_path / "state"
    first = journal_daemon(start_daemon, state)
    reply = apply_pause(first.stub, container.container_id, "orphan", lease_s=1)
    sigkill(first)
    journal = Journal(str(state))
    [orphan] = journal.load()
    for i in range(ENDED_RECORDS):
        journal.write(dataclasses.replace(orphan, id=f"ended-{i:04d}", state=journal_states.RECOVERED,
                                          ended_at=time.time(), detail="thawed"))
    until(lambda: time.time() > seconds(reply.status.expires_at) + 0.3, "the lease to run out", 5, every=0.05)
    daemons = []
    for name in ("a", "b"):
        directory = tmp_path / name
        directory.mkdir()
        address, log_path = f"unix://{directory}/daemon.sock", directory / "daemon.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "pytest_chaos_daemon", "--listen", address, "--log-level", "debug",
                 "--containerd-namespace", "*", "--state-dir", str(state)], stdout=log, stderr=log)
        daemons.append(RunningDaemon(address, str(log_path), process))
    try:
        until(lambda: all('"serving"' in d.log() or d.process.poll() is not None for d in daemons),
              "both daemons to serve or exit", START_TIMEOUT_S, every=0.05)
        for daemon in daemons:
            assert daemon.process.poll() is None, f"a daemon exited at start:\n{daemon.log()[-3000:]}"

        container.wait_advancing()
        recovered = [e for d in daemons for e in log_entries(d.log(), "recovered") if e["injection_id"] == "orphan"]
        assert len(recovered) == 1, recovered
        # Only what was live is taken over, by one of them; ended records stay as they are, for pruning.
        taken = collections.Counter(i for d in daemons for i in listing(d.stub, include_ended=True))
        assert taken == {"orphan": 1}
        assert len(Journal(str(state)).load()) == ENDED_RECORDS + 1
    finally:
        for daemon in daemons:
            daemon.stop()


ORPHANS = 1000  # live records a restarted daemon finds: with a runner's leases run out at once, or many runners'


@pytest.mark.needs_root  # the daemon it starts
def test_a_restarted_daemon_answers_calls_while_it_takes_over_a_thousand_faults(tmp_path):
    """Found by benchmarks/restart_to_serving.py: recovering a journal's expired faults one after another never
    let a call in (a target that is gone: no recovery ever waits), so the daemon answered nothing, its first
    connection included, for ten seconds, until the last of 1000 was ended."""
    state = tmp_path / "state"
    orphans = orphaned_pauses(str(state), ORPHANS)
    address, log_path = f"unix://{tmp_path}/daemon.sock", tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "pytest_chaos_daemon", "--listen", address,
                                    "--allow-pid-targets", "--state-dir", str(state)], stdout=log, stderr=log)
    daemon = RunningDaemon(address, str(log_path), process)
    try:
        first = None
        deadline = time.monotonic() + START_TIMEOUT_S
        while first is None:  # a channel per attempt: one that failed to connect would wait out its backoff
            assert process.poll() is None and time.monotonic() < deadline, f"the daemon did not serve:\n{daemon.log()}"
            with contextlib.suppress(grpc.RpcError), grpc.insecure_channel(address) as channel:
                first = pb_grpc.ChaosDaemonStub(channel).ListInjections(
                    pb.ListInjectionsRequest(include_ended=True), timeout=30).injections
            time.sleep(0.02)

        states = collections.Counter(status.state for status in first)
        assert sum(states.values()) == ORPHANS, "every record was claimed before the daemon served"
        assert states[ACTIVE] > 0, f"the first call was answered only once the take-over had ended: {states}"
        until(lambda: all(s.state == EXPIRED for s in listing(daemon.stub, include_ended=True).values()),
              "every orphan to be recovered", 120, every=0.5)
        ended = listing(daemon.stub, include_ended=True)
        assert sorted(ended) == sorted(orphans)
        assert {s.detail.split(":")[0] for s in ended.values()} == {"its time ran out while no daemon watched it"}
    finally:
        daemon.stop()


# pytest-xdist: several workers, one external daemon.

def test_xdist_workers_pausing_through_one_daemon_recover_each_injection_exactly_once(
        pytester, targets, tmp_path, start_daemon):
    daemon = start_daemon("--containerd-namespace", "*")
    countings = [start_counting(targets, "containerd", tmp_path / f"target-{i}") for i in range(6)]
    pytester.makepyfile(test_user="import os\nimport time\nimport pytest\n" + "".join(f"""

@pytest.mark.chaos("container-pause", selector={c.selector!r}, mode="all")
def test_app_{i}(chaos):
    before = os.path.getsize({c.counter!r})
    time.sleep(0.3)
    assert os.path.getsize({c.counter!r}) == before, "the target counted while paused"
""" for i, c in enumerate(countings)))

    result = pytester.runpytest_subprocess("-p", "chaos", "-n", "2", f"--chaos-daemon={daemon.address}")

    result.assert_outcomes(passed=len(countings))
    assert listing(daemon.stub) == {}
    ended = listing(daemon.stub, include_ended=True)
    assert sorted(s.container_id for s in ended.values()) == sorted(c.container_id for c in countings)
    assert {s.state for s in ended.values()} == {RECOVERED}
    recovered = collections.Counter(e["injection_id"] for e in log_entries(daemon.log(), "recovered"))
    assert recovered == {injection_id: 1 for injection_id in ended}
    runners = {s.owner.split()[1] for s in ended.values()}  # "pytest PID@HOST TEST_ID"
    assert len(runners) == 2, runners
    for counting in countings:
        assert counting.thawed()
        counting.wait_advancing()


# pytest-timeout: the signal method raises in the test (teardown runs); the
# thread method ends the process with os._exit (no teardown).

TIMED_OUT_TEST = """
import time
import pytest

@pytest.mark.chaos("container-pause", selector={selector!r}, mode="all")
def test_app(chaos):
    print("PAUSED", chaos.experiments[0].targets[0].daemon, flush=True)
    time.sleep(30)
"""


def test_a_test_stopped_by_pytest_timeouts_signal_method_is_recovered_in_its_teardown(
        pytester, container, start_daemon):
    daemon = start_daemon("--containerd-namespace", "*")
    pytester.makepyfile(test_user=TIMED_OUT_TEST.format(selector=container.selector))

    result = pytester.runpytest_subprocess("-p", "chaos", f"--chaos-daemon={daemon.address}", "--timeout=2",
                                           "--timeout-method=signal")

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Failed: Timeout*", "*test_app: chaos container-pause mode=all: 1 target * recovered*"])
    [status] = listing(daemon.stub, include_ended=True).values()
    assert status.state == RECOVERED
    assert container.thawed()
    container.wait_advancing()


@pytest.mark.parametrize("daemon_kind", ["embedded", "external"])
def test_a_test_ended_by_pytest_timeouts_thread_method_leaves_nothing_paused(
        pytester, container, start_daemon, daemon_kind):
    args = ["--timeout=2", "--timeout-method=thread"]
    if daemon_kind == "external":
        daemon = start_daemon("--containerd-namespace", "*")
        args += [f"--chaos-daemon={daemon.address}", f"--chaos-lease={SHORT_LEASE_S:g}"]
    pytester.makepyfile(test_user=TIMED_OUT_TEST.format(selector=container.selector))
    output = pytester.path / "pytest.out"
    with open(output, "wb") as out:
        runner = subprocess.Popen(pytest_argv("-s", "test_user.py", *args), cwd=pytester.path,
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        runner.wait(timeout=START_TIMEOUT_S)
        exited, before = time.monotonic(), container.count()
    finally:
        kill_subprocess(runner)
    text = output.read_text(errors="replace")
    assert runner.returncode != 0 and "Timeout" in text, text
    [address] = printed_line(output, runner, "PAUSED")
    if daemon_kind == "external":
        assert container.frozen(), "renewed until the runner died, the lease cannot have run out yet"

    until(lambda: container.count() > before, "the target to count again", SHORT_LEASE_S + 5)

    report(f"pytest-timeout thread method, {daemon_kind} daemon: runner exit -> target counting",
           [time.monotonic() - exited])
    assert container.thawed()
    if daemon_kind == "external":
        [status] = listing(daemon.stub, include_ended=True).values()
        assert status.state == EXPIRED and status.detail.startswith("its lease ran out"), status.detail
    else:
        gone(address.removeprefix("unix://"))
