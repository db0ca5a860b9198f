"""Apply and recover latency of every fault kind, on the local backend and on the cluster.

Through the plugin's session, the whole path a marker takes (select, pick,
inject; then recover), against HelloWorld on the same target in the same run
as the baseline. Targets run the same loop, ``sh -c 'while true; do sleep
1000 & wait; done'``, so process-kill (``^sleep 1000$``) has a process to kill
each round and the loop starts another. container-kill and pod-kill end
their target, so they run once per target, on targets of their own. The
local targets are containerd containers (on the tests' network bed, in a
network namespace of their own); the cluster's are pods in a namespace the
benchmark creates and deletes. The proxy kinds (tcp-*, http-*) redirect a
port nothing serves: what they cost is the redirect and the proxy's start.
pod-failure, of the kubernetes backend alone, is measured on the cluster.

Run as root with the cluster up and the daemon deployed (scripts/setup.sh):
    python3 -m benchmarks.kinds_latency [--rounds 10] [--kill-targets 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from benchmarks.timing import apply_and_recover
from pytest_chaos.backends.kubernetes import KubernetesBackend
from pytest_chaos.backends.local import LocalBackend
from pytest_chaos.embedded import EmbeddedDaemon
from pytest_chaos.session import ChaosSession
from pytest_chaos_cluster.settings import Layout
from tests.support.network_bed import NetworkBed
from tests.support.targets import Targets, make_busybox_rootfs

LOOP = "while true; do sleep 1000 & wait; done"
NAMESPACE = "chaos-bench-kinds"
KINDS = {
    "helloworld": {},
    "container-pause": {},
    "stress": {"stressors": {"cpu": {"workers": 1, "load": 10}}},
    "process-kill": {"process": "^sleep 1000$"},
    "time": {"time_offset": "-2h"},
    # The proxy kinds on a port nothing serves: what is measured is setting the redirect and the proxy up.
    "tcp-latency": {"port": 8080, "latency": 10},
    "tcp-down": {"port": 8080},
    "http-delay": {"target": "Request", "port": 8080, "delay": "100ms"},
}
# Kinds of the kubernetes backend alone, measured on the cluster only.
CLUSTER_ONLY = {"pod-failure": {"duration": "60s"}}


def measure(session: ChaosSession, selector: dict, rounds: int, settle: Callable[[], None],
            kinds: dict[str, dict] = KINDS) -> dict[str, tuple[float, float]]:
    samples: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    for kind, params in kinds.items():  # warm-up
        apply_and_recover(session, kind, selector, params)
        settle()
    for _ in range(rounds):
        for kind, params in kinds.items():
            samples[kind].append(apply_and_recover(session, kind, selector, params))
            settle()
    return {kind: (statistics.median(a for a, _ in s), statistics.median(r for _, r in s)) for kind, s in samples.items()}


def kube(kubectl: list[str], *args: str) -> str:
    return subprocess.run([*kubectl, *args], capture_output=True, text=True, check=True, timeout=300).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--kill-targets", type=int, default=3)
    parser.add_argument("--kubeconfig", default=os.environ.get("PYTEST_CHAOS_KUBECONFIG", str(Layout().kubeconfig)))
    args = parser.parse_args()
    kubectl = [str(Layout().binary("kubectl")), f"--kubeconfig={args.kubeconfig}"]
    daemon = EmbeddedDaemon(["--containerd-namespace", "*", "--recover-on-exit"])
    local = ChaosSession(LocalBackend(daemon.ensure_started), seed=0)
    cluster = ChaosSession(KubernetesBackend(kubeconfig=args.kubeconfig), seed=0)
    rootfs = tempfile.mkdtemp(prefix="bench-rootfs-")
    targets = Targets(make_busybox_rootfs(rootfs))
    bed = NetworkBed()
    pods = ["loop", "failing"] + [f"kill-{i}" for i in range(args.kill_targets)] + [
        f"gone-{i}" for i in range(args.kill_targets)]
    # pod-failure's pod restarts its containers (to the pause image and back); the others must not restart.
    manifest = "\n---\n".join(
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec:\n"
        f"  terminationGracePeriodSeconds: 1\n  restartPolicy: {'Always' if name == 'failing' else 'Never'}\n"
        f"  containers:\n"
        f"    - {{name: main, image: localhost/pytest-chaos/busybox:1, imagePullPolicy: IfNotPresent, "
        f"command: [sh, -c, '{LOOP}']}}" for name in pods)
    rows: dict[str, dict[str, tuple[float, float] | float]] = {}
    try:
        kube(kubectl, "create", "namespace", NAMESPACE)
        subprocess.run([*kubectl, "apply", "-f", "-"], input=manifest, text=True, check=True, capture_output=True)
        kube(kubectl, "-n", NAMESPACE, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=120s")
        # On the tests' network bed: the network kinds act only in a network namespace of the target's own.
        loop_container = bed.containerd("sh", "-c", LOOP).selector
        rows["local"] = measure(local, loop_container, args.rounds, lambda: time.sleep(0.05))
        rows["cluster"] = measure(cluster, {"pods": {NAMESPACE: ["loop"]}}, args.rounds, lambda: time.sleep(0.05))
        # pod-failure restarts the pod's containers twice (to the pause image and back): each round waits for
        # the pod to be ready again, so it runs after the others.
        rows["cluster"].update(measure(
            cluster, {"pods": {NAMESPACE: ["failing"]}}, args.rounds, lambda: kube(
                kubectl, "-n", NAMESPACE, "wait", "--for=condition=Ready", "pod/failing", "--timeout=120s"),
            CLUSTER_ONLY))
        kill_local = [targets.containerd("sh", "-c", LOOP) for _ in range(args.kill_targets)]
        rows["local"]["container-kill"] = statistics.median(
            apply_and_recover(local, "container-kill", {"containers": [c]}, {})[0] for c in kill_local)
        rows["cluster"]["container-kill"] = statistics.median(
            apply_and_recover(cluster, "container-kill", {"pods": {NAMESPACE: [f"kill-{i}"]}}, {})[0]
            for i in range(args.kill_targets))
        rows["cluster"]["pod-kill"] = statistics.median(
            apply_and_recover(cluster, "pod-kill", {"pods": {NAMESPACE: [f"gone-{i}"]}}, {})[0] for i in range(args.kill_targets))
    finally:
        local.close()
        cluster.close()
        daemon.stop()
        targets.close()
        bed.close()
        shutil.rmtree(rootfs, ignore_errors=True)
        subprocess.run([*kubectl, "delete", "namespace", NAMESPACE, "--wait=false", "--ignore-not-found"],
                       capture_output=True)

    print(f"Fault kind latency through the plugin's session, medians ({args.rounds} interleaved rounds; "
          f"kills: {args.kill_targets} targets each)")
    print(f"{'kind':<17}{'backend':<9}{'apply (ms)':>12}{'recover (ms)':>14}{'apply / helloworld':>20}")
    for backend, kinds in rows.items():
        baseline = kinds["helloworld"][0]  # type: ignore[index]
        for kind, figures in kinds.items():
            apply_s, recover_s = figures if isinstance(figures, tuple) else (figures, None)
            one_shot = recover_s is None or kind in ("helloworld", "process-kill")
            recover = f"{'one-shot':>14}" if one_shot else f"{recover_s * 1000:>14.2f}"
            print(f"{kind:<17}{backend:<9}{apply_s * 1000:>12.2f}{recover}{apply_s / baseline:>20.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
