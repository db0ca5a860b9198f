"""Network faults: apply and recover latency of each kind, and what a delay does to a bulk TCP transfer.

Targets are processes on the tests' network bed (tests/support/network_bed.py); the
faults go through the plugin's session to an embedded daemon, as in a test
run. Latencies are medians of interleaved rounds, reported against HelloWorld
(source "proc") on the same target in the same run. Throughputs are one TCP
stream from the target to its peer, measured at the receiver, without a
fault and under a 20 ms delay on the target's egress (``to``) and on its
ingress (``from``), which add the same round trip. Precision: how much a 50 ms
delay adds to UDP round trips (each against the median of round trips without
the fault, in the same run): median, 90th percentile and worst. (The tests only
check that no packet comes back sooner and the median is the delay.)

    python3 -m benchmarks.network_latency --rounds 10
"""

from __future__ import annotations

import argparse
import statistics
import sys

from benchmarks.timing import apply_and_recover
from pytest_chaos.backends.local import LocalBackend
from pytest_chaos.embedded import EmbeddedDaemon
from pytest_chaos.session import ChaosSession
from tests.support.network_bed import NetworkBed, tcp_throughput, udp_echo_server, udp_probe

THROUGHPUT_PORT = 7300
ECHO_PORT = 7301
PRECISION_DELAY_MS = 50


def kinds(peer: dict) -> dict[str, dict]:
    return {
        "helloworld": {"source": "proc"},
        "network-partition": {"target": peer},
        "network-loss": {"loss": "10", "target": peer},
        "network-delay": {"latency": "10ms", "target": peer},
        "network-duplicate": {"duplicate": "10", "target": peer},
        "network-corrupt": {"corrupt": "10", "target": peer},
        "network-bandwidth": {"rate": "10mbps", "target": peer},
        "dns": {"action": "error", "patterns": ["example.*"]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each TCP transfer")
    args = parser.parse_args()
    daemon = EmbeddedDaemon(["--containerd-namespace", "*", "--recover-on-exit", "--allow-pid-targets"])
    session = ChaosSession(LocalBackend(daemon.ensure_started), seed=0)
    with NetworkBed() as bed:
        peer = bed.process()
        target = bed.process(resolv_conf=f"nameserver {peer.ip}\n")
        peer_selection = {"selector": peer.selector, "mode": "all"}
        table = kinds(peer_selection)
        samples: dict[str, list[tuple[float, float]]] = {kind: [] for kind in table}
        try:
            for kind, params in table.items():  # warm-up
                apply_and_recover(session, kind, target.selector, params)
            for round_number in range(args.rounds):
                print(f"round {round_number + 1}/{args.rounds}", file=sys.stderr)
                for kind, params in table.items():
                    samples[kind].append(apply_and_recover(session, kind, target.selector, params))
            throughput = {"none": tcp_throughput(target, peer.ip, THROUGHPUT_PORT, seconds=args.seconds)}
            for direction in ("to", "from"):
                spec = session.spec(("network-delay",), {"selector": target.selector, "mode": "all",
                                                         "latency": "20ms", "target": peer_selection,
                                                         "direction": direction})
                experiment = session.apply(spec)
                try:
                    throughput[f"delay 20ms {direction}"] = tcp_throughput(target, peer.ip, THROUGHPUT_PORT,
                                                                           seconds=args.seconds)
                finally:
                    session.recover(experiment)
            udp_echo_server(peer, ECHO_PORT)
            baseline_rtt = statistics.median(udp_probe(target, peer.ip, ECHO_PORT, count=200, interval_s=0.005).rtts_ms)
            spec = session.spec(("network-delay",), {"selector": target.selector, "mode": "all",
                                                     "latency": f"{PRECISION_DELAY_MS}ms", "target": peer_selection})
            experiment = session.apply(spec)
            try:
                rises = sorted(rtt - baseline_rtt for rtt in udp_probe(target, peer.ip, ECHO_PORT, count=200,
                                                                         interval_s=0.005).rtts_ms)
            finally:
                session.recover(experiment)
        finally:
            session.close()
            daemon.stop()

    medians = {kind: (statistics.median(a for a, _ in s), statistics.median(r for _, r in s))
               for kind, s in samples.items()}
    baseline = medians["helloworld"][0]
    print(f"Network fault latency through the plugin's session, local backend, medians of {args.rounds} "
          f"interleaved rounds")
    print(f"{'kind':<19}{'apply (ms)':>12}{'recover (ms)':>14}{'apply / helloworld':>20}")
    for kind, (applied, recovered) in medians.items():
        print(f"{kind:<19}{applied * 1000:>12.1f}{recovered * 1000:>14.1f}{applied / baseline:>20.2f}")
    print(f"\nOne TCP stream target -> peer, {args.seconds:g} s each")
    for label, bits in throughput.items():
        print(f"{label:<19}{bits / 1e6:>12.1f} Mbit/s{bits / throughput['none']:>10.4f} of no fault")
    mechanism = experiment.targets[0].mechanism
    print(f"\nA {PRECISION_DELAY_MS} ms delay ({mechanism}): what it adds to 200 UDP round trips, against "
          f"{baseline_rtt:.3f} ms without it")
    print(f"median {statistics.median(rises):.2f} ms, 90th percentile {rises[int(len(rises) * 0.9)]:.2f} ms, "
          f"worst {rises[-1]:.2f} ms, least {rises[0]:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
