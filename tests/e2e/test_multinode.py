"""Across nodes: one daemon per node, found per target, on the kind bed (`pytest-chaos-cluster up`).

A Deployment whose pods must not share a node puts one pod on each worker.
Each experiment's targets name their node and the daemon that served them;
each daemon's own log (read through the API, from outside the plugin) shows it
handled exactly its node's containers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pytest_chaos.errors import ChaosError
from pytest_chaos.session import ChaosSession

NAMESPACE = "chaos-multinode"
NO_DAEMON_TAINT = "pytest-chaos.test/no-daemon"

SPREAD = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: spread, namespace: {NAMESPACE}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: spread}}}}
  template:
    metadata: {{labels: {{app: spread}}}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - labelSelector: {{matchLabels: {{app: spread}}}}
              topologyKey: kubernetes.io/hostname
      containers:
        - name: main
          image: localhost/pytest-chaos/busybox:1
          imagePullPolicy: IfNotPresent
          command: [sleep, "3600"]
"""


def workers(kube) -> list[str]:
    listed = json.loads(kube.kubectl("get", "nodes", "-o", "json"))["items"]
    return sorted(n["metadata"]["name"] for n in listed
                  if "node-role.kubernetes.io/control-plane" not in n["metadata"].get("labels", {}))


@pytest.fixture(scope="module")
def spread(kube) -> Iterator[dict[str, str]]:
    """pod name -> node, one pod on each of two workers."""
    names = workers(kube)
    assert len(names) >= 2, f"these tests need a cluster with two workers (pytest-chaos-cluster up); found {names}"
    kube.kubectl("apply", "-f", "-", input_text=SPREAD)
    kube.kubectl("-n", NAMESPACE, "rollout", "status", "deployment/spread", "--timeout=180s")
    kube.kubectl("-n", "chaos-testing", "rollout", "status", "daemonset/chaos-daemon", "--timeout=180s")
    pods = json.loads(kube.kubectl("-n", NAMESPACE, "get", "pods", "-l", "app=spread", "-o", "json"))["items"]
    placement = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in pods if not p["metadata"].get("deletionTimestamp")}
    assert len(set(placement.values())) == 2, placement
    yield placement
    kube.kubectl("delete", "namespace", NAMESPACE, "--wait=false", "--ignore-not-found")


def daemon_pods(kube) -> dict[str, dict]:
    """node -> the chaos daemon pod running there."""
    pods = json.loads(kube.kubectl("-n", "chaos-testing", "get", "pods", "-l", "app.kubernetes.io/name=chaos-daemon",
                                   "-o", "json"))["items"]
    return {p["spec"]["nodeName"]: p for p in pods if p["status"].get("phase") == "Running"}


def served(kube, node: str) -> set[str]:
    """Container ids the daemon on ``node`` logged a HelloWorld request for."""
    logs = kube.kubectl("-n", "chaos-testing", "logs", kube.daemon_pod_on(node), "--tail=5000")
    entries = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    return {e["request"]["container_id"] for e in entries
            if e.get("msg") == "Apply" and e.get("kind") == "helloworld" and "container_id" in e.get("request", {})}



@pytest.mark.parametrize("access", ["direct", "port-forward"])
def test_mode_all_fans_out_to_each_nodes_daemon(pytester, kube, spread, access):
    result = kube.run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("helloworld", selector={{"namespaces": ["{NAMESPACE}"]}}, mode="all", source="proc")
        def test_spread(chaos):
            [experiment] = chaos.experiments
            for t in experiment.targets:
                assert [p.command for p in t.processes] == ["sleep 3600"]
                print("TARGET", t.pod, t.node, t.daemon, t.container_id)
    """, "-s", f"--chaos-daemon-access={access}")
    result.assert_outcomes(passed=1)
    targets = [line.split("TARGET ")[1].split() for line in result.outlines if "TARGET " in line]
    assert {(pod, node) for pod, node, _, _ in targets} == set(spread.items())
    daemons = daemon_pods(kube)
    for pod, node, address, container_id in targets:
        if access == "direct":
            assert address.rsplit(":", 1)[0] == daemons[node]["status"]["podIP"], (pod, node, address)
        else:
            assert address.startswith("127.0.0.1:"), address
        # Served by its own node's daemon, and by no other.
        assert container_id in served(kube, node)
        assert all(container_id not in served(kube, other) for other in daemons if other != node)
    assert len({address for _, _, address, _ in targets}) == 2


@pytest.mark.parametrize("key", ["nodes", "nodeSelectors"])
def test_a_node_selector_picks_one_workers_pods(pytester, kube, spread, key):
    pod, node = sorted(spread.items())[0]
    constraint = [node] if key == "nodes" else {"kubernetes.io/hostname": node}
    result = kube.run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("helloworld", selector={{"namespaces": ["{NAMESPACE}"], "{key}": {constraint!r}}},
                           mode="all", source="proc")
        def test_one_node(chaos):
            [experiment] = chaos.experiments
            assert [(t.pod, t.node) for t in experiment.targets] == [("{pod}", "{node}")]
    """)
    result.assert_outcomes(passed=1)


@pytest.fixture
def worker_without_daemon(kube, spread) -> Iterator[str]:
    """A worker with a taint the DaemonSet is patched not to tolerate, and so no daemon pod."""
    _, node = sorted(spread.items())[-1]
    tolerations = json.loads(kube.kubectl("-n", "chaos-testing", "get", "daemonset/chaos-daemon", "-o",
                                          "jsonpath={.spec.template.spec.tolerations}"))
    kube.kubectl("taint", "node", node, f"{NO_DAEMON_TAINT}=true:NoSchedule", "--overwrite")
    patch = [{"op": "replace", "path": "/spec/template/spec/tolerations",
              "value": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}]
    try:
        kube.kubectl("-n", "chaos-testing", "patch", "daemonset/chaos-daemon", "--type=json", f"-p={json.dumps(patch)}")
        kube.kubectl("-n", "chaos-testing", "rollout", "status", "daemonset/chaos-daemon", "--timeout=180s")
        kube.kubectl("-n", "chaos-testing", "wait", "--for=delete", "pod", "-l", "app.kubernetes.io/name=chaos-daemon",
                     f"--field-selector=spec.nodeName={node}", "--timeout=60s")
        assert node not in daemon_pods(kube)
        yield node
    finally:
        restore = [{"op": "replace", "path": "/spec/template/spec/tolerations", "value": tolerations}]
        kube.kubectl("-n", "chaos-testing", "patch", "daemonset/chaos-daemon", "--type=json",
                     f"-p={json.dumps(restore)}")
        kube.kubectl("taint", "node", node, f"{NO_DAEMON_TAINT}-")
        kube.kubectl("-n", "chaos-testing", "rollout", "status", "daemonset/chaos-daemon", "--timeout=180s")


def test_a_node_without_a_daemon_is_a_clear_error_and_nothing_is_injected(kube, spread, worker_without_daemon):
    node = worker_without_daemon
    [(pod, _)] = [(p, n) for p, n in spread.items() if n == node]
    session = ChaosSession(kube.backend(), seed=1)
    spec = session.spec(("container-pause",), {"selector": {"namespaces": [NAMESPACE]}, "mode": "all"})
    try:
        with pytest.raises(ChaosError, match=f"no chaos daemon is running on node '{node}'"):
            session.apply(spec)
    finally:
        session.close()
    # The other worker's pod was not left paused: every daemon there is holds no injection.
    status = subprocess.run([sys.executable, "-m", "pytest_chaos.cli", "status", "--expect-none", "--backend",
                             "kubernetes", "--kubeconfig", kube.kubeconfig], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
