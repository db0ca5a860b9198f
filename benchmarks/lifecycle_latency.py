"""container-pause latency through the plugin against HelloWorldChaos, and how fast a dead runner's pause ends.

Part one: on each target, interleaved round by round so machine noise hits
them alike, the plugin's session (selection by the local backend, the mode's
pick, gRPC to the daemon on its unix socket, PID resolution) runs
HelloWorldChaos (``source="ps"``: ``sh -c "ps aux"`` inside the target), then
container-pause's apply (journaled, then the freezer cgroup or SIGSTOP) and its
recover (thawed, journaled), each timed on its own. The ratio compares one
pause applied and recovered with one HelloWorld.

Part two: a pytest run whose test pauses a counting container is SIGKILLed
mid-test; the time from the SIGKILL until the container counts again (read
from its rootfs) is taken with the plugin's own daemon (it sees its parent
die and recovers on exit) and with an external daemon and a short
``--chaos-lease`` (the lease runs out).

Run as root:  python3 -m benchmarks.lifecycle_latency [--rounds 20] [--kill-rounds 5] [--quick]
containerd and Docker must be running (scripts/setup.sh starts them).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.report import Row, ms, run_main
from pytest_chaos.backends.local import LocalBackend
from pytest_chaos.embedded import EmbeddedDaemon
from pytest_chaos.session import ChaosSession
from pytest_chaos.transport import DaemonClient

# The repository's test fixtures start the same real targets the tests use.
from tests.support.pausing import Counting, pytest_argv, start_counting
from tests.support.targets import Targets, make_busybox_rootfs

SHORT_LEASE_S = 3


def measure(session: ChaosSession, selector: dict, rounds: int) -> dict[str, float]:
    """Median seconds of HelloWorld (apply and recover), pause apply, pause recover and pause apply+recover."""
    hello = session.spec(("helloworld",), {"selector": selector, "mode": "all"})
    pause = session.spec(("container-pause",), {"selector": selector, "mode": "all"})
    samples: dict[str, list[float]] = {"hello": [], "apply": [], "recover": [], "pause": []}
    for round_number in range(rounds + 1):  # the first round warms up
        start = time.perf_counter()
        session.recover(session.apply(hello))
        hello_s = time.perf_counter() - start
        start = time.perf_counter()
        experiment = session.apply(pause)
        apply_s = time.perf_counter() - start
        assert experiment.outcome == "applied"
        start = time.perf_counter()
        session.recover(experiment)
        recover_s = time.perf_counter() - start
        assert experiment.outcome == "recovered", experiment.detail
        if round_number:
            for name, value in (("hello", hello_s), ("apply", apply_s), ("recover", recover_s),
                                ("pause", apply_s + recover_s)):
                samples[name].append(value)
    return {name: statistics.median(values) for name, values in samples.items()}


RUNNER_TEST = """
import time
import pytest

@pytest.mark.chaos("container-pause", selector={selector!r}, mode="all")
def test_app(chaos):
    print("PAUSED", flush=True)
    time.sleep(600)
"""


def kill_runner(directory: pathlib.Path, target: Counting, *args: str) -> float:
    """Seconds from SIGKILLing a pytest run mid-test to ``target`` counting again."""
    output = directory / "pytest.out"
    with open(output, "wb") as out:
        runner = subprocess.Popen(pytest_argv("-s", "test_user.py", *args), cwd=directory,
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "PAUSED" not in output.read_text(errors="replace"):
            if runner.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the test did not pause its target:\n{output.read_text(errors='replace')}")
            time.sleep(0.02)
        before = target.count()
        runner.kill()
        killed = time.monotonic()
        runner.wait()
        while target.count() <= before:
            if time.monotonic() - killed > SHORT_LEASE_S + 30:
                raise RuntimeError("the target was not recovered")
            time.sleep(0.002)
        return time.monotonic() - killed
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()


def external_daemon(directory: pathlib.Path) -> tuple[subprocess.Popen, str]:
    address = f"unix://{directory}/daemon.sock"
    with open(directory / "daemon.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "pytest_chaos_daemon", "--listen", address,
                                    "--containerd-namespace", "*", "--state-dir", str(directory / "state")],
                                   stdout=log, stderr=log)
    client = DaemonClient(address)
    try:
        deadline = time.monotonic() + 30
        while not (os.path.exists(directory / "daemon.sock") and client.is_serving(timeout_s=1.0)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not start: {(directory / 'daemon.log').read_text()}")
            time.sleep(0.05)
    finally:
        client.close()
    return process, address


def rows(quick: bool, rounds: int | None = None, kill_rounds: int | None = None) -> list[Row]:
    """The pause/HelloWorld ratio on each runtime; with ``quick``, on containerd only and no dead runners."""
    if os.geteuid() != 0:
        raise SystemExit("run as root: the daemon needs it")
    rounds = rounds or (5 if quick else 20)
    kill_rounds = 0 if quick else (kill_rounds or 5)
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-lifecycle-"))
    targets = Targets(make_busybox_rootfs(work / "rootfs"))
    daemon = EmbeddedDaemon(["--containerd-namespace", "*", "--allow-pid-targets", "--recover-on-exit"])
    backend = LocalBackend(daemon.ensure_started)
    session = ChaosSession(backend, seed=0)
    measured, kills = {}, {}
    external = None
    try:
        for runtime in ("containerd",) if quick else ("containerd", "docker", "pid"):
            target = start_counting(targets, runtime, work / runtime)
            measured[target.container_id.split("://")[0] + "://"] = measure(session, target.selector, rounds)
        if kill_rounds:
            target = start_counting(targets, "containerd", work / "killed")
            (work / "runner").mkdir()
            (work / "runner" / "test_user.py").write_text(RUNNER_TEST.format(selector=target.selector))
            kills["the plugin's own daemon"] = [kill_runner(work / "runner", target) for _ in range(kill_rounds)]
            external, address = external_daemon(work)
            kills[f"an external daemon, --chaos-lease={SHORT_LEASE_S}"] = [
                kill_runner(work / "runner", target, f"--chaos-daemon={address}", f"--chaos-lease={SHORT_LEASE_S}")
                for _ in range(kill_rounds)
            ]
    finally:
        session.close()
        daemon.stop()
        if external is not None:
            external.terminate()
            external.wait()
        targets.close()
        shutil.rmtree(work, ignore_errors=True)

    result = [
        Row(f"container-pause apply + recover, one {name} target", ms(m["pause"]),
            f"helloworld source=ps {ms(m['hello'])}", m["pause"] / m["hello"], "report the ratio")
        for name, m in measured.items()
    ]
    result += [
        Row(f"runner SIGKILLed mid-test, {name}: until the target runs again", f"{statistics.median(samples):.3f} s",
            f"min {min(samples):.3f} s, max {max(samples):.3f} s")
        for name, samples in kills.items()
    ]
    return result


def main() -> int:
    return run_main(__doc__, "container-pause through the plugin's session against HelloWorldChaos (medians)", rows,
                    "containerd only, no SIGKILLed runners",
                    ("--rounds", {"type": int, "help": "interleaved rounds (default 20; 5 with --quick)"}),
                    ("--kill-rounds", {"type": int, "help": "SIGKILLed runners per daemon setup (default 5)"}))


if __name__ == "__main__":
    sys.exit(main())
