"""Per-target latency of a HelloWorldChaos experiment on the cluster, against the local backend.

One run, interleaved round by round: the same busybox image running
``sleep 3600``, as a local containerd container (local backend: private unix
socket, no TLS) and as the tutorial's StatefulSet pods (kubernetes backend:
pod selection through the API server, the node's daemon found by label, gRPC
with mutual TLS at the pod IP). Each experiment is the whole path a marker
takes: select, pick, inject, recover.

Run as root with the cluster up and the daemon deployed (scripts/setup.sh):

    python3 -m benchmarks.backend_latency [--rounds 30] [--kubeconfig PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from benchmarks.timing import interleaved_medians
from pytest_chaos.backends.kubernetes import KubernetesBackend
from pytest_chaos.backends.local import LocalBackend
from pytest_chaos.embedded import EmbeddedDaemon
from pytest_chaos.session import ChaosSession
from pytest_chaos_cluster.settings import Layout
from tests.support.targets import Targets, make_busybox_rootfs

DEFAULT_KUBECONFIG = str(Layout().admin_kubeconfig)


def experiment(session: ChaosSession, selector: dict, expect_targets: int):
    spec = session.spec(("helloworld",), {"selector": selector, "mode": "all"})

    def run() -> None:
        applied = session.apply(spec)
        assert len(applied.targets) == expect_targets
        assert all(t.processes[0].command == "sleep 3600" for t in applied.targets)
        session.recover(applied)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--kubeconfig", default=os.environ.get("PYTEST_CHAOS_KUBECONFIG", DEFAULT_KUBECONFIG))
    args = parser.parse_args()

    daemon = EmbeddedDaemon(["--containerd-namespace", "*"])
    local = ChaosSession(
        LocalBackend(daemon.ensure_started, "/run/containerd/containerd.sock", ["*"], "/var/run/docker.sock"), seed=0
    )
    cluster = ChaosSession(KubernetesBackend(kubeconfig=args.kubeconfig), seed=0)
    rootfs = tempfile.mkdtemp(prefix="bench-rootfs-")
    targets = Targets(make_busybox_rootfs(rootfs))
    try:
        container_id = targets.containerd("sleep", "3600")
        medians = interleaved_medians(
            {
                "local, 1 container": experiment(local, {"containers": [container_id]}, 1),
                "cluster, 1 pod": experiment(cluster, {"pods": {"busybox": ["busybox-0"]}}, 1),
                "cluster, 2 pods": experiment(cluster, {"namespaces": ["busybox"]}, 2),
            },
            args.rounds,
        )
    finally:
        local.close()
        cluster.close()
        daemon.stop()
        targets.close()
        shutil.rmtree(rootfs, ignore_errors=True)

    baseline = medians["local, 1 container"]
    per_target = {"local, 1 container": baseline, "cluster, 1 pod": medians["cluster, 1 pod"],
                  "cluster, 2 pods": medians["cluster, 2 pods"] / 2}
    print(f"HelloWorldChaos experiment latency, medians of {args.rounds} interleaved rounds")
    print(f"{'path':<22}{'experiment (ms)':>17}{'per target (ms)':>17}{'per target / local':>20}")
    for name, total in medians.items():
        print(f"{name:<22}{total * 1000:>17.2f}{per_target[name] * 1000:>17.2f}{per_target[name] / baseline:>20.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
