"""How an experiment's latency grows with its targets: 1, 10, 50 and 100 local containerd containers.

Each size is one HelloWorldChaos experiment (``source="proc"``) with
``mode="all"`` over containers selected by a label, the whole path a marker
takes. The baseline for 100 targets is the same 100 containers applied one
at a time through the plugin (one experiment per container, selected by
id), run in the same process right after.

Run as root with containerd running (scripts/setup.sh starts it):
    python3 -m benchmarks.fan_out [--rounds 5] [--quick]
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time

from benchmarks.report import Row, ms, run_main
from pytest_chaos.backends.local import LocalBackend
from pytest_chaos.embedded import EmbeddedDaemon
from pytest_chaos.session import ChaosSession
from tests.support.targets import Targets, make_busybox_rootfs

SIZES = (1, 10, 50, 100)
QUICK_SIZES = (1, 10)
GOAL = 0.3  # all at once, at most this fraction of one at a time


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def rows(quick: bool, rounds: int | None = None) -> list[Row]:
    sizes = QUICK_SIZES if quick else SIZES
    rounds = rounds or (3 if quick else 5)
    daemon = EmbeddedDaemon(["--containerd-namespace", "*"])
    session = ChaosSession(
        LocalBackend(daemon.ensure_started), seed=0
    )
    rootfs = tempfile.mkdtemp(prefix="bench-rootfs-")
    targets = Targets(make_busybox_rootfs(rootfs))
    together: dict[int, float] = {}
    try:
        started = []
        for size in sizes:
            # Each size's containers carry its label and every smaller size's: selecting size N finds N.
            for _ in range(size - len(started)):
                started.append(targets.containerd("sleep", "3600", labels={f"bench-fan-out-{n}": "1" for n in sizes
                                                                             if n > len(started)}))
                print(f"\r  {len(started)}/{sizes[-1]} containers started", end="", file=sys.stderr, flush=True)
            label = {f"bench-fan-out-{size}": "1"}
            spec = session.spec(("helloworld",), {"selector": {"labels": label}, "mode": "all", "source": "proc"})

            def all_at_once(spec=spec, size=size) -> None:
                experiment = session.apply(spec)
                assert len(experiment.targets) == size, len(experiment.targets)
                assert all(t.processes and t.processes[0].command == "sleep 3600" for t in experiment.targets)
                session.recover(experiment)

            all_at_once()  # warm-up
            together[size] = statistics.median(timed(all_at_once) for _ in range(rounds))
        print(file=sys.stderr)
        largest = sizes[-1]
        singles = [session.spec(("helloworld",), {"selector": {"containers": [c]}, "mode": "all", "source": "proc"})
                   for c in started[:largest]]

        def one_at_a_time() -> None:
            for spec in singles:
                session.recover(session.apply(spec))

        one_by_one = statistics.median(timed(one_at_a_time) for _ in range(max(1, rounds // 2)))
    finally:
        session.close()
        daemon.stop()
        targets.close()
        shutil.rmtree(rootfs, ignore_errors=True)

    result = [
        Row(f"helloworld mode=all over {size} containerd target{'s' if size > 1 else ''}", ms(seconds),
            f"1 target {ms(together[1])}", seconds / together[1])
        for size, seconds in together.items()
    ]
    ratio = together[largest] / one_by_one
    result.append(Row(f"{largest} targets in one experiment", ms(together[largest]),
                      f"{largest} experiments one at a time {ms(one_by_one)}", ratio, f"<= {GOAL}x", ratio <= GOAL))
    return result


def main() -> int:
    return run_main(__doc__, "Experiment latency by number of targets (medians)", rows, "1 and 10 targets only",
                    ("--rounds", {"type": int, "help": "rounds per size (default 5; 3 with --quick)"}))


if __name__ == "__main__":
    sys.exit(main())
