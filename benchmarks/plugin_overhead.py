"""What the plugin costs a test run: chaos markers against the same tests calling the daemon's RPC themselves.

Two generated test directories, run as pytest subprocesses and timed wall
clock, alternated round by round (the order flipping each round) so machine
noise hits them alike:

* marked: every test carries
  ``@pytest.mark.chaos("helloworld", selector={"pids": [PID]}, mode="all", source="proc")``
  on one long-lived target (``sleep 3600`` as PID 1 of its own pid namespace)
  and checks the listing through the ``chaos`` fixture. Run as a user would,
  ``pytest -p chaos``: the plugin starts its own daemon, so the figure includes
  that start.
* direct: the same tests, each calling ExecHelloWorldChaos with the request
  the plugin would send (container id, a fresh injection id, the source) over
  one channel to a daemon this benchmark started with the embedded daemon's
  flags, checking the same listing; run with ``-p no:chaos``.

A third run, the marked tests with ``--chaos-daemon`` pointed at the
benchmark's daemon, separates the plugin's per-test cost from its daemon's
start. The benchmark's daemon gets a private ``--state-dir``: the shared
default holds other runs' journals, which it is not this figure's business to
adopt. Every pytest (and the daemon it starts) reads bytecode from a cache of
the benchmark's own, written by a one-test run of each directory before
timing, as a user's second run would (see ``collection_cost.child_env``).

Run as root:  python3 -m benchmarks.plugin_overhead [--quick]
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence

from pytest_chaos_daemon.runtimes import containerd, docker

from benchmarks.collection_cost import child_env
from benchmarks.report import Row, run_main
from pytest_chaos.embedded import EmbeddedDaemon

TESTS, QUICK_TESTS = 1000, 200
ROUNDS, QUICK_ROUNDS = 3, 1
FILES = 10  # tests spread over this many modules, as a real suite would be
GOAL_RATIO = 1.25
PYTEST_TIMEOUT_S = 600
ADDRESS_ENV = "PYTEST_CHAOS_BENCH_DAEMON"
# What backends.config.from_config hands the embedded daemon with every option at its default.
DAEMON_ARGS = ["--allow-pid-targets", "--recover-on-exit", "--containerd-socket", containerd.DEFAULT_SOCKET,
               "--docker-socket", docker.DEFAULT_SOCKET, "--containerd-namespace", "*"]
PR_SET_PDEATHSIG = 1
TARGET_COMMAND = ("sleep", "3600")

MARKED_TEST = '''
@pytest.mark.chaos("helloworld", selector={{"pids": [{pid}]}}, mode="all", source="proc")
def test_{n:04d}(chaos):
    assert "{command}" in [p.command for p in chaos.experiments[0].targets[0].processes]
'''
DIRECT_TEST = '''
def test_{n:04d}(stub):
    request = pb.ExecHelloWorldRequest(container_id="pid://{pid}", injection=pb.Injection(id=uuid.uuid4().hex),
                                       source=pb.PROCESS_LIST_SOURCE_PROC)
    reply = stub.ExecHelloWorldChaos(request, timeout=60)
    assert "{command}" in [p.command for p in reply.processes]
'''
DIRECT_HEADER = "import uuid\n\nfrom pytest_chaos.api.v1 import chaos_daemon_pb2 as pb\n"
# One channel for the run, as the plugin keeps one client per daemon.
DIRECT_CONFTEST = f'''import os

import grpc
import pytest
from pytest_chaos.api.v1 import chaos_daemon_pb2_grpc as pb_grpc


@pytest.fixture(scope="session")
def stub():
    channel = grpc.insecure_channel(os.environ["{ADDRESS_ENV}"])
    yield pb_grpc.ChaosDaemonStub(channel)
    channel.close()
'''


class PidTarget:
    """``argv`` as PID 1 of new pid and mount namespaces, gone on ``close`` or when this process dies."""

    def __init__(self, *argv: str) -> None:
        self.command = " ".join(argv)
        # --kill-child: the inner process dies with unshare; the parent-death signal kills unshare
        # should this process die without closing it. Its own session keeps Ctrl-C for us to handle.
        self._outer = subprocess.Popen(
            ["unshare", "--fork", "--pid", "--mount-proc", "--kill-child", *argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent,
        )
        try:
            self.pid = self._wait_inner(argv[0])
        except BaseException:
            self.close()
            raise

    def _wait_inner(self, program: str) -> int:
        children = f"/proc/{self._outer.pid}/task/{self._outer.pid}/children"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._outer.poll() is not None:
                raise RuntimeError(f"unshare exited with {self._outer.returncode} before starting {self.command}")
            with contextlib.suppress(OSError, IndexError, ValueError):
                pid = int(open(children).read().split()[0])
                # unshare forks, then the child execs: wait until it has.
                if open(f"/proc/{pid}/cmdline").read().split("\0")[0] == program:
                    return pid
            time.sleep(0.01)
        raise RuntimeError(f"{self.command} did not start in its namespaces within 10s")

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._outer.pid, signal.SIGKILL)
        self._outer.wait()

    def __enter__(self) -> PidTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@contextlib.contextmanager
def started_daemon(state_dir: str, *extra: str) -> Iterator[EmbeddedDaemon]:
    """The daemon the plugin would start (same class, same flags), on a private state directory."""
    daemon = EmbeddedDaemon([*DAEMON_ARGS, "--state-dir", state_dir, *extra])
    try:
        daemon.ensure_started()
        yield daemon
    finally:
        daemon.stop()


def write_tests(directory: str, count: int, marked: bool, pid: int, command: str) -> None:
    os.makedirs(directory)
    with open(os.path.join(directory, "pytest.ini"), "w") as ini:  # the run's rootdir, whatever is above it
        ini.write("[pytest]\n")
    if not marked:
        with open(os.path.join(directory, "conftest.py"), "w") as conftest:
            conftest.write(DIRECT_CONFTEST)
    per_file = -(-count // FILES)
    for first in range(0, count, per_file):
        template, header = (MARKED_TEST, "import pytest\n") if marked else (DIRECT_TEST, DIRECT_HEADER)
        body = "".join(template.format(n=n, pid=pid, command=command) for n in range(first, min(first + per_file, count)))
        with open(os.path.join(directory, f"test_bench_{first // per_file:02d}.py"), "w") as f:
            f.write(header + "\n" + body)


def run_pytest(args: Sequence[str], cwd: str, expected: int, env: dict[str, str]) -> float:
    """Wall-clock seconds of one pytest subprocess; raises unless exactly ``expected`` tests passed."""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=PYTEST_TIMEOUT_S,
                            stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    passed = re.search(r"(\d+) passed", summary)
    if result.returncode != 0 or not passed or int(passed.group(1)) != expected or re.search(r"failed|error", summary):
        raise AssertionError(f"{' '.join(argv)} in {cwd}: expected {expected} passed, got exit {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-2000:]}")
    return elapsed


def rows(quick: bool) -> list[Row]:
    if os.geteuid() != 0:
        raise SystemExit("run as root: the daemon enters other processes' namespaces")
    count, rounds = (QUICK_TESTS, QUICK_ROUNDS) if quick else (TESTS, ROUNDS)
    work = tempfile.mkdtemp(prefix="bench-plugin-overhead-")
    try:
        with PidTarget(*TARGET_COMMAND) as target, started_daemon(os.path.join(work, "state")) as daemon:
            marked, direct = os.path.join(work, "marked"), os.path.join(work, "direct")
            write_tests(marked, count, True, target.pid, target.command)
            write_tests(direct, count, False, target.pid, target.command)
            env = {**child_env(os.path.join(work, "pycache")), ADDRESS_ENV: daemon.address}
            runs = {
                "embedded": lambda: run_pytest(["-p", "chaos", "."], marked, count, env),
                "external": lambda: run_pytest(["-p", "chaos", f"--chaos-daemon={daemon.address}", "."], marked, count,
                                               env),
                "direct": lambda: run_pytest(["-p", "no:chaos", "."], direct, count, env),
            }
            # One test of each run first: writes the bytecode caches (test modules, plugin, daemon) for every round alike.
            for args, directory in ((["-p", "chaos"], marked), (["-p", "no:chaos"], direct)):
                run_pytest([*args, "-k", "test_0000", "."], directory, 1, env)
            samples: dict[str, list[float]] = {name: [] for name in runs}
            for round_number in range(rounds):
                # The order flips every round, so a drift in the machine's load favours none of them.
                for name in list(runs) if round_number % 2 == 0 else reversed(list(runs)):
                    samples[name].append(runs[name]())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {name: statistics.median(values) for name, values in samples.items()}

    def figure(seconds: float) -> str:
        return f"{seconds:.2f} s ({seconds / count * 1000:.2f} ms/test)"

    base = f"direct RPC {figure(median['direct'])}"
    embedded_ratio = median["embedded"] / median["direct"]
    per_test = (median["external"] - median["direct"]) / count
    return [
        Row(f"plugin overhead: {count:,} marked tests (pid://, source=proc), plugin's own daemon, median of {rounds}",
            figure(median["embedded"]), base, embedded_ratio, f"<= {GOAL_RATIO}x", embedded_ratio <= GOAL_RATIO),
        Row("  the same with --chaos-daemon (the benchmark's daemon: no start in the run)",
            figure(median["external"]), base, median["external"] / median["direct"]),
        Row("  plugin's cost per marked test, its import included ((--chaos-daemon run - direct) / tests)",
            f"{per_test * 1000:.2f} ms"),
        Row("  plugin's own daemon start and stop (own-daemon run - --chaos-daemon run)",
            f"{(median['embedded'] - median['external']) * 1000:.0f} ms"),
    ]


def main() -> int:
    return run_main(__doc__, "Plugin overhead: chaos markers against direct daemon RPCs, pytest wall clock, medians",
                    rows, f"{QUICK_TESTS} tests, {QUICK_ROUNDS} round")


if __name__ == "__main__":
    sys.exit(main())
