"""netem against the packet queue: one TCP stream's throughput under a 20 ms delay, each way.

Targets are processes on the tests' network bed (tests/support/network_bed.py);
the delay goes through the plugin's session to an embedded daemon started with
``--network-emulation netem`` or ``queue``, as a test run would. Each figure is
one TCP stream from the target to its peer, measured at the receiver, under a
20 ms delay on the target's egress (``to``) or its ingress (``from``); the
baseline is the same stream without a fault, measured in the same run. On a
kernel without netem only the queue's rows are measured, and a row says so.

    python3 benchmarks/netem_throughput.py [--quick]
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: the repository root is the import root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.report import Row, run_main  # noqa: E402
from pytest_chaos.backends.local import LocalBackend  # noqa: E402
from pytest_chaos.embedded import EmbeddedDaemon  # noqa: E402
from pytest_chaos.session import ChaosSession  # noqa: E402
from tests.support.network_bed import NetTarget, NetworkBed, emulations, tcp_throughput  # noqa: E402

PORT = 7400
DELAY = "20ms"


def rows(quick: bool, seconds: float | None = None) -> list[Row]:
    seconds = seconds or (1.0 if quick else 4.0)
    mechanisms = emulations()
    result: list[Row] = []
    with NetworkBed() as bed:
        target, peer = bed.process(), bed.process()
        baseline = tcp_throughput(target, peer.ip, PORT, seconds=seconds)
        measured: dict[tuple[str, str], float] = {}
        for mechanism in mechanisms:
            for direction in ("to", "from"):
                bits = _under_delay(mechanism, direction, target, peer, seconds)
                measured[mechanism, direction] = bits
                result.append(Row(f"TCP under a {DELAY} delay {direction}, {mechanism}", _mbit(bits),
                                  f"no fault {_mbit(baseline)}", bits / baseline))
    if "netem" in mechanisms:
        for direction in ("to", "from"):
            netem, queue = measured["netem", direction], measured["queue", direction]
            result.append(Row(f"TCP under a {DELAY} delay {direction}: netem against the queue", _mbit(netem),
                              f"queue {_mbit(queue)}", netem / queue))
    else:
        result.append(Row("netem", "not on this kernel (sch_netem): the queue's rows only"))
    return result


def _under_delay(mechanism: str, direction: str, target: NetTarget, peer: NetTarget, seconds: float) -> float:
    daemon = EmbeddedDaemon(["--allow-pid-targets", "--recover-on-exit", "--network-emulation", mechanism])
    session = ChaosSession(LocalBackend(daemon.ensure_started), seed=0)
    try:
        spec = session.spec(("network-delay",), {"selector": target.selector, "mode": "all", "latency": DELAY,
                                                 "target": {"selector": peer.selector, "mode": "all"},
                                                 "direction": direction})
        experiment = session.apply(spec)
        try:
            made = experiment.targets[0].mechanism
            assert (" netem" in made) if mechanism == "netem" else made.startswith("packet queue"), made
            return tcp_throughput(target, peer.ip, PORT, seconds=seconds)
        finally:
            session.recover(experiment)
    finally:
        session.close()
        daemon.stop()


def _mbit(bits: float) -> str:
    return f"{bits / 1e6:.0f} Mbit/s"


if __name__ == "__main__":
    sys.exit(run_main(__doc__, f"TCP throughput under a {DELAY} delay, netem against the packet queue", rows,
                      "1 s transfers instead of 4 s"))
