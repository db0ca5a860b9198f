"""The tcp-* kinds between real pods, through the kubernetes backend and the DaemonSet's daemon.

A TCP server runs in one pod's network namespace, a client in another's (host
Python entered into the namespaces only, as tests/test_tcp_toxics.py does on
the local bed); the fault is applied to the server pod by its labels and
measured by the client, from outside the daemon.
"""

from __future__ import annotations

import json
import statistics

import pytest

from pytest_chaos.session import ChaosSession
from tests.support.network_bed import NetTarget, measured, snapshot
from tests.support.targets import container_init_pid
from tests.test_tcp_toxics import Server, client

NAMESPACE = "chaos-e2e-tcp"
PORT = 7310
MANIFEST = """
apiVersion: v1
kind: Namespace
metadata:
  name: chaos-e2e-tcp
---
""" + "---\n".join(f"""
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: chaos-e2e-tcp
  labels: {{app: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - {{name: main, image: localhost/pytest-chaos/busybox:1, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}}
""" for name in ("tcp-server", "tcp-client"))


def selector(name: str) -> dict:
    return {"namespaces": [NAMESPACE], "labelSelectors": {"app": name}}


def pod_target(kube, name: str) -> NetTarget:
    pod = json.loads(kube.kubectl("-n", NAMESPACE, "get", "pod", name, "-o", "json"))
    container_id = pod["status"]["containerStatuses"][0]["containerID"]
    pid = container_init_pid(container_id)
    return NetTarget(container_id, pid, pod["status"]["podIP"], f"/proc/{pid}/ns/net", selector(name), name=name)


@pytest.fixture(scope="module")
def pods(kube, tmp_path_factory):
    manifest = tmp_path_factory.mktemp("tcp") / "pods.yaml"
    manifest.write_text(MANIFEST)
    kube.kubectl("apply", "-f", str(manifest))
    kube.kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=120s")
    kube.kubectl("-n", "chaos-testing", "rollout", "status", "daemonset/chaos-daemon", "--timeout=180s")
    yield pod_target(kube, "tcp-server"), pod_target(kube, "tcp-client")
    kube.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=120s")


@pytest.fixture
def session(kube):
    chaos = ChaosSession(kube.backend(), seed=1)
    yield chaos
    for _, experiment in chaos.experiments:
        chaos.recover(experiment)
    chaos.close()


@pytest.fixture
def serving(pods):
    target, source = pods
    server = Server(target, PORT)
    yield server, source
    server.stop()


def apply(session: ChaosSession, kind: str, server: Server, **params):
    spec = session.spec((kind,), {"selector": server.target.selector, "mode": "all", "port": server.port, **params})
    return session.apply(spec)


def median_rtt(source: NetTarget, server: Server) -> float:
    result = client(source, "rtt", server, connections=5, more=9)
    assert not result["errors"], result
    return statistics.median(result["rtts_ms"])


def test_latency_between_pods_within_20_percent(session, serving):
    server, source = serving
    base = median_rtt(source, server)
    before = snapshot(server.target)
    experiment = apply(session, "tcp-latency", server, latency=150)
    assert experiment.targets[0].mechanism.startswith("a proxy"), experiment.targets[0].mechanism
    added = median_rtt(source, server) - base
    measured(f"cluster tcp-latency 150 ms pod to pod: added round trip (baseline {base:.2f} ms)", added, "150 ms")
    assert 120 <= added <= 180
    session.recover(experiment)
    assert experiment.outcome == "recovered", experiment.summary()
    assert snapshot(server.target) == before
    assert median_rtt(source, server) < base + 50


def test_reset_peer_and_down_between_pods(session, serving):
    server, source = serving
    before = snapshot(server.target)
    experiment = apply(session, "tcp-reset-peer", server, timeout=200)
    result = client(source, "idle", server, read_timeout=10)
    assert result["error"] == "ECONNRESET", result
    session.recover(experiment)
    experiment = apply(session, "tcp-down", server)
    assert client(source, "connect", server)["error"] == "ECONNREFUSED"
    session.recover(experiment)
    assert experiment.outcome == "recovered", experiment.summary()
    assert client(source, "connect", server)["error"] is None
    assert snapshot(server.target) == before
