"""The tcp-* kinds' proxy with no toxic against a direct connection: one TCP stream's throughput.

Targets are processes on the tests' network bed (tests/support/network_bed.py):
a client streams to a sink in the server target for a few seconds, measured at
the sink. The baseline is the same stream straight to the server, in the same
run; then through the proxy the daemon puts in the server's network namespace
(through the plugin's session to an embedded daemon, as a test run would),
once with ``toxicity`` 0 (every connection spared: a plain copy) and once
with a zero-latency ``tcp-latency`` toxic on the stream (the toxic's path:
chunks queued, timed and written).

    python3 benchmarks/tcp_proxy_throughput.py [--quick]
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
from tests.support.network_bed import NetTarget, NetworkBed, tcp_throughput  # noqa: E402

PORT = 7500
CASES = {"toxicity 0 (a plain copy)": {"toxicity": 0}, "a 0 ms latency toxic": {"toxicity": 1, "stream": "upstream"}}


def rows(quick: bool, seconds: float | None = None) -> list[Row]:
    seconds = seconds or (1.0 if quick else 4.0)
    result: list[Row] = []
    with NetworkBed() as bed:
        server, client = bed.process(name="server"), bed.process(name="client")
        baseline = tcp_throughput(client, server.ip, PORT, seconds=seconds)
        for name, params in CASES.items():
            bits = _through_proxy(server, client, params, seconds)
            result.append(Row(f"TCP through the tcp-* proxy, {name}", _mbit(bits), f"direct {_mbit(baseline)}",
                              bits / baseline))
    return result


def _through_proxy(server: NetTarget, client: NetTarget, params: dict, seconds: float) -> float:
    daemon = EmbeddedDaemon(["--allow-pid-targets", "--recover-on-exit"])
    session = ChaosSession(LocalBackend(daemon.ensure_started), seed=0)
    try:
        spec = session.spec(("tcp-latency",), {"selector": server.selector, "mode": "all", "port": PORT,
                                               "latency": 0, **params})
        experiment = session.apply(spec)
        try:
            assert experiment.targets[0].mechanism.startswith("a proxy"), experiment.targets[0].mechanism
            return tcp_throughput(client, server.ip, PORT, seconds=seconds, proxied=True)
        finally:
            session.recover(experiment)
    finally:
        session.close()
        daemon.stop()


def _mbit(bits: float) -> str:
    return f"{bits / 1e6:.0f} Mbit/s"


if __name__ == "__main__":
    sys.exit(run_main(__doc__, "TCP throughput through the tcp-* proxy with no toxic, against a direct connection",
                      rows, "1 s transfers instead of 4 s"))
