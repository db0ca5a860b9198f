"""Per-target latency of a HelloWorldChaos experiment on the cluster's nodes, against this machine.

One run, interleaved round by round: the same busybox image running
``sleep 3600``, as a local containerd container (local backend, the daemon on
this machine: private unix socket, no TLS) and as the tutorial's StatefulSet
pods on the kind bed's two workers (kubernetes backend: pod selection through
the API server, the node's daemon found by label, gRPC with mutual TLS at the
pod IP, routed over Docker's network into the node; or through the API
server's port-forward). Each experiment is the whole path a marker takes:
select, pick, inject, recover.

Run as root with the cluster up and the daemon deployed (scripts/setup.sh):

    python3 -m benchmarks.backend_latency [--rounds 30] [--kubeconfig PATH] [--quick]
"""

from __future__ import annotations

import shutil
import sys
import tempfile

from benchmarks.cluster import kubeconfig as find_kubeconfig
from benchmarks.report import Row, ms, run_main
from benchmarks.timing import interleaved_medians
from pytest_chaos.backends.kubernetes import KubernetesBackend
from pytest_chaos.backends.local import LocalBackend
from pytest_chaos.embedded import EmbeddedDaemon
from pytest_chaos.session import ChaosSession
from tests.support.targets import Targets, make_busybox_rootfs

NEEDS_CLUSTER = True  # benchmarks/run.py passes it the cluster's kubeconfig, or reports the row skipped
GOAL = 1.2  # the cluster's whole experiment, at most this many times the local backend's


def experiment(session: ChaosSession, selector: dict, expect_targets: int, nodes: dict[str, str] | None = None):
    spec = session.spec(("helloworld",), {"selector": selector, "mode": "all"})

    def run() -> None:
        applied = session.apply(spec)
        assert len(applied.targets) == expect_targets
        assert all(t.processes[0].command == "sleep 3600" for t in applied.targets)
        if nodes is not None:
            nodes.update({t.pod: t.node for t in applied.targets})
        session.recover(applied)

    return run


def rows(quick: bool, rounds: int | None = None, kubeconfig: str | None = None) -> list[Row]:
    kubeconfig = find_kubeconfig(kubeconfig)
    rounds = rounds or (10 if quick else 30)
    daemon = EmbeddedDaemon(["--containerd-namespace", "*"])
    local = ChaosSession(
        LocalBackend(daemon.ensure_started), seed=0
    )
    cluster = ChaosSession(KubernetesBackend(kubeconfig=kubeconfig), seed=0)
    forwarded = ChaosSession(KubernetesBackend(kubeconfig=kubeconfig, access="port-forward"), seed=0)
    nodes: dict[str, str] = {}
    rootfs = tempfile.mkdtemp(prefix="bench-rootfs-")
    targets = Targets(make_busybox_rootfs(rootfs))
    try:
        container_id = targets.containerd("sleep", "3600")
        medians = interleaved_medians(
            {
                "local": experiment(local, {"containers": [container_id]}, 1),
                "one pod": experiment(cluster, {"pods": {"busybox": ["busybox-0"]}}, 1, nodes),
                "the other pod": experiment(cluster, {"pods": {"busybox": ["busybox-1"]}}, 1, nodes),
                "one pod, port-forward": experiment(forwarded, {"pods": {"busybox": ["busybox-0"]}}, 1),
                "two pods": experiment(cluster, {"namespaces": ["busybox"]}, 2),
            },
            rounds,
        )
    finally:
        local.close()
        cluster.close()
        forwarded.close()
        daemon.stop()
        targets.close()
        shutil.rmtree(rootfs, ignore_errors=True)

    local_s = medians["local"]
    ratio = medians["one pod"] / local_s
    baseline = f"local backend, one container {ms(local_s)}"
    return [
        Row(f"cluster, one pod (busybox-0, on {nodes.get('busybox-0', '?')}), whole helloworld experiment",
            ms(medians["one pod"]), baseline, ratio, f"<= {GOAL}x", ratio <= GOAL),
        Row(f"cluster, the other pod (busybox-1, on {nodes.get('busybox-1', '?')})", ms(medians["the other pod"]),
            baseline, medians["the other pod"] / local_s),
        Row("cluster, one pod, through the API server's port-forward", ms(medians["one pod, port-forward"]),
            baseline, medians["one pod, port-forward"] / local_s),
        Row("cluster, two pods by namespace, per pod", ms(medians["two pods"] / 2),
            f"local backend, one container {ms(local_s)}", medians["two pods"] / 2 / local_s),
    ]


def main() -> int:
    return run_main(__doc__, "HelloWorldChaos experiment latency on the cluster against the local backend (medians)",
                    rows, "fewer rounds",
                    ("--rounds", {"type": int, "help": "interleaved rounds (default 30; 10 with --quick)"}),
                    ("--kubeconfig", {"help": "default: $PYTEST_CHAOS_KUBECONFIG, $KUBECONFIG, the test bed's"}))


if __name__ == "__main__":
    sys.exit(main())
