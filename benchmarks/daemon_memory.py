"""The daemon's memory: resident set idle, and at its peak under 200 concurrent HelloWorld requests.

The daemon is started as the plugin starts its own (``EmbeddedDaemon``, the
plugin's flags, ``--allow-pid-targets`` among them) on a private state
directory. After one warm-up request of each source its VmRSS is read from
/proc idle; then bursts of 200 ExecHelloWorldChaos requests, all in flight at
once on one channel, half ``source="proc"`` (the daemon reads the target's
/proc in a worker thread) and half ``source="ps"`` (a confine helper runs
``sh -c "ps aux"`` inside the target), go to 20 ``pid://`` targets (``sleep``
as PID 1 of their own pid namespaces) while a thread samples the daemon's
VmRSS every 10 ms. Spreading the requests over targets exercises every path a
request can take at once: running (up to ``--max-concurrent`` fault commands),
queued for a slot, and queued behind another probe of its target.

Processes the daemon starts are counted apart from it (their VmRSS summed,
sampled alike): the helpers live only while a ``ps`` probe runs, and idle
there are none unless the daemon keeps some. VmHWM, the kernel's own peak,
covers the daemon's whole life, start-up included, and catches a peak between
two samples.

A request the daemon refuses with RESOURCE_EXHAUSTED (it bounds the requests
it holds) is counted, not a failure; any other error is. Each reply must list
its target's command.

Run as root:  python3 -m benchmarks.daemon_memory [--quick]
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import grpc

from benchmarks.plugin_overhead import PidTarget, started_daemon
from benchmarks.report import Row, run_main
from pytest_chaos.api.v1 import chaos_daemon_pb2 as pb
from pytest_chaos.api.v1 import chaos_daemon_pb2_grpc as pb_grpc

REQUESTS = 200
TARGETS = 20
BURSTS, QUICK_BURSTS = 3, 1
SAMPLE_INTERVAL_S = 0.01
SETTLE_S = 1.0  # idle readings wait this long after the last request
REQUEST_TIMEOUT_S = 120
IDLE_GOAL_MB, LOAD_GOAL_MB = 60, 150
SOURCES = (pb.PROCESS_LIST_SOURCE_PROC, pb.PROCESS_LIST_SOURCE_PS)


def status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM); 0 once the process is gone."""
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(child) for child in f.read().split()]
    return found


def descendants(pid: int) -> list[int]:
    found, pending = [], children(pid)
    while pending:
        child = pending.pop()
        found.append(child)
        pending += children(child)
    return found


def daemon_pid(address: str) -> int:
    """The PID of this process's child serving ``address`` (EmbeddedDaemon keeps its process to itself)."""
    for child in children(os.getpid()):
        with contextlib.suppress(OSError), open(f"/proc/{child}/cmdline", "rb") as f:
            if address.encode() in f.read().split(b"\0"):
                return child
    raise RuntimeError(f"no child process of this one serves {address}")


class Sampler:
    """Samples the daemon's VmRSS, and its descendants' summed, every SAMPLE_INTERVAL_S in a thread."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.daemon_kb = 0
        self.children_kb = 0
        self.total_kb = 0
        self.most_children = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            own = status_kb(self._pid, "VmRSS")
            helpers = descendants(self._pid)
            theirs = sum(status_kb(pid, "VmRSS") for pid in helpers)
            self.daemon_kb = max(self.daemon_kb, own)
            self.children_kb = max(self.children_kb, theirs)
            self.total_kb = max(self.total_kb, own + theirs)
            self.most_children = max(self.most_children, len(helpers))
            self.samples += 1
            self._stop.wait(SAMPLE_INTERVAL_S)

    @contextlib.contextmanager
    def running(self) -> Iterator[Sampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


def burst(stub: pb_grpc.ChaosDaemonStub, targets: list[PidTarget]) -> tuple[int, int, list[str]]:
    """REQUESTS requests in flight at once; (served, refused with RESOURCE_EXHAUSTED, other failures)."""
    calls = []
    for i in range(REQUESTS):
        target = targets[i % len(targets)]
        request = pb.ExecHelloWorldRequest(container_id=f"pid://{target.pid}", injection=pb.Injection(id=f"mem-{i}"),
                                           source=SOURCES[i % len(SOURCES)])
        calls.append((target, stub.ExecHelloWorldChaos.future(request, timeout=REQUEST_TIMEOUT_S)))
    served, refused, failures = 0, 0, []
    for target, future in calls:
        try:
            reply = future.result()
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                refused += 1
            else:
                failures.append(f"pid://{target.pid}: {err.code()}: {err.details()}")
            continue
        commands = [p.command for p in reply.processes]
        if target.command not in commands:
            failures.append(f"pid://{target.pid}: {target.command!r} not listed in {commands}")
        else:
            served += 1
    return served, refused, failures


def mb(kb: int) -> str:
    return f"{kb / 1024:.1f} MB"


def rows(quick: bool) -> list[Row]:
    if os.geteuid() != 0:
        raise SystemExit("run as root: the daemon enters other processes' namespaces")
    bursts = QUICK_BURSTS if quick else BURSTS
    work = tempfile.mkdtemp(prefix="bench-daemon-memory-")
    try:
        with contextlib.ExitStack() as stack:
            targets = [stack.enter_context(PidTarget("sleep", str(3600 + i))) for i in range(TARGETS)]
            daemon = stack.enter_context(started_daemon(os.path.join(work, "state")))
            pid = daemon_pid(daemon.address)
            channel = stack.enter_context(grpc.insecure_channel(daemon.address))
            stub = pb_grpc.ChaosDaemonStub(channel)
            for source in SOURCES:  # warm-up: each source's code paths loaded, as after a test run's first test
                reply = stub.ExecHelloWorldChaos(pb.ExecHelloWorldRequest(
                    container_id=f"pid://{targets[0].pid}", source=source), timeout=REQUEST_TIMEOUT_S)
                assert targets[0].command in [p.command for p in reply.processes], reply
            time.sleep(SETTLE_S)
            idle_kb = status_kb(pid, "VmRSS")
            idle_helpers = descendants(pid)
            idle_helpers_kb = sum(status_kb(p, "VmRSS") for p in idle_helpers)
            served = refused = 0
            failures: list[str] = []
            started = time.perf_counter()
            with Sampler(pid).running() as sampler:
                for _ in range(bursts):
                    ok, busy, failed = burst(stub, targets)
                    served, refused, failures = served + ok, refused + busy, failures + failed
            load_s = (time.perf_counter() - started) / bursts
            time.sleep(SETTLE_S)
            after_kb = status_kb(pid, "VmRSS")
            hwm_kb = status_kb(pid, "VmHWM")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if failures:
        raise AssertionError(f"{len(failures)} of {REQUESTS * bursts} requests failed:\n  " + "\n  ".join(failures[:20]))
    if served + refused != REQUESTS * bursts:
        raise AssertionError(f"{served} served and {refused} refused of {REQUESTS * bursts} requests")
    return [
        Row("daemon RSS idle (after a warm-up request of each source)", mb(idle_kb), goal=f"<= {IDLE_GOAL_MB} MB",
            met=idle_kb <= IDLE_GOAL_MB * 1024),
        Row("  helper processes the daemon keeps while idle", f"{len(idle_helpers)} ({mb(idle_helpers_kb)})"),
        Row(f"daemon RSS peak during {REQUESTS} concurrent requests (proc+ps, {TARGETS} pid:// targets, "
            f"{bursts} burst(s), sampled every {SAMPLE_INTERVAL_S * 1000:.0f} ms)", mb(sampler.daemon_kb),
            f"idle {mb(idle_kb)}", sampler.daemon_kb / idle_kb if idle_kb else None, f"<= {LOAD_GOAL_MB} MB",
            sampler.daemon_kb <= LOAD_GOAL_MB * 1024),
        Row("  VmHWM at the end (whole life, start-up included)", mb(hwm_kb)),
        Row(f"  its helper processes at peak (summed; at most {sampler.most_children} at once)", mb(sampler.children_kb)),
        Row("  daemon and helpers together at peak", mb(sampler.total_kb)),
        Row("  daemon RSS idle again after the load", mb(after_kb), f"idle before {mb(idle_kb)}",
            after_kb / idle_kb if idle_kb else None),
        Row("  requests served / refused RESOURCE_EXHAUSTED",
            f"{served} / {refused} of {REQUESTS * bursts} ({load_s:.2f} s per burst, {sampler.samples} samples)"),
    ]


def main() -> int:
    return run_main(__doc__, "Daemon memory: VmRSS from /proc, idle and under concurrent HelloWorld requests", rows,
                    f"{QUICK_BURSTS} burst instead of {BURSTS}")


if __name__ == "__main__":
    sys.exit(main())
