"""200 concurrent HelloWorld requests over 20 targets: all served, the concurrency bound held.

Requests queue in the daemon (one probe at a time per target, at most
--max-concurrent at once); none is refused while the daemon is healthy.
Latencies (p50, p99) and the most fault commands seen running at once are
reported, not asserted: these machines are shared.
"""

from __future__ import annotations

import statistics
import threading
import time

from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb

REQUESTS = 200
TARGETS = 20
MAX_CONCURRENT = 8


def confine_helpers(daemon_pid: int) -> int:
    """The daemon's running fault commands: its children."""
    try:
        return len(open(f"/proc/{daemon_pid}/task/{daemon_pid}/children").read().split())
    except OSError:
        return 0


def test_two_hundred_concurrent_requests_over_twenty_targets(start_daemon, targets, capsys):
    daemon = start_daemon("--allow-pid-targets", "--max-concurrent", str(MAX_CONCURRENT))
    pids = [targets.process("sleep", str(4500 + i)) for i in range(TARGETS)]
    most = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, confine_helpers(daemon.process.pid))
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    latencies: list[float] = []
    start = time.monotonic()
    calls = []
    for i in range(REQUESTS):
        request = pb.ExecHelloWorldRequest(container_id=f"pid://{pids[i % TARGETS]}")
        sent = time.monotonic()
        future = daemon.stub.ExecHelloWorldChaos.future(request, timeout=120)
        future.add_done_callback(lambda f, sent=sent: latencies.append(time.monotonic() - sent))
        calls.append((i, future))
    replies = [(i, future.result()) for i, future in calls]
    wall = time.monotonic() - start
    done.set()
    sampler.join()
    for i, reply in replies:
        assert [p.command for p in reply.processes] == [f"sleep {4500 + i % TARGETS}"]
    assert 1 < most <= MAX_CONCURRENT
    ordered = sorted(latencies)
    with capsys.disabled():
        print(f"\nload: {REQUESTS} requests over {TARGETS} targets in {wall:.2f}s; latency p50 "
              f"{statistics.median(ordered) * 1000:.1f} ms, p99 {ordered[int(len(ordered) * 0.99) - 1] * 1000:.1f} ms; "
              f"most fault commands at once {most} (bound {MAX_CONCURRENT})")
