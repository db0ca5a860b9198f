"""The http-* kinds between real pods, through the DaemonSet's daemon, checked from outside it.

An HTTP server pod and a client pod (busybox, sleeping): the server and the
client are host Python entered into the pods' network namespaces only
(tests/support/http_traffic.py), so what is measured depends neither on the
daemon's word nor on the image. The fault is applied to the server pod.
"""

from __future__ import annotations

import json
import time

import pytest

from pytest_chaos.session import ChaosSession
from tests.support.http_traffic import PORT, Server, echoed, proxies_in, requests
from tests.support.network_bed import NetTarget, measured, snapshot
from tests.support.targets import container_init_pid

NAMESPACE = "chaos-e2e-http"
MANIFEST = """
apiVersion: v1
kind: Namespace
metadata:
  name: chaos-e2e-http
---
""" + "---\n".join(f"""
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: chaos-e2e-http
  labels: {{app: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - {{name: main, image: localhost/pytest-chaos/busybox:1, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}}
""" for name in ("http-server", "http-client"))


def selector(name: str) -> dict:
    return {"namespaces": [NAMESPACE], "labelSelectors": {"app": name}}


def pod_target(kube, name: str) -> NetTarget:
    pod = json.loads(kube.kubectl("-n", NAMESPACE, "get", "pod", name, "-o", "json"))
    container_id = pod["status"]["containerStatuses"][0]["containerID"]
    pid = container_init_pid(container_id)
    return NetTarget(container_id, pid, pod["status"]["podIP"], f"/proc/{pid}/ns/net", selector(name), name=name)


@pytest.fixture(scope="module")
def pods(kube, tmp_path_factory):
    manifest = tmp_path_factory.mktemp("http") / "pods.yaml"
    manifest.write_text(MANIFEST)
    kube.kubectl("apply", "-f", str(manifest))
    kube.kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=120s")
    kube.kubectl("-n", "chaos-testing", "rollout", "status", "daemonset/chaos-daemon", "--timeout=180s")
    server, client = pod_target(kube, "http-server"), pod_target(kube, "http-client")
    serving = Server(server)
    yield server, client
    serving.stop()
    kube.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=120s")


@pytest.fixture
def session(kube):
    chaos = ChaosSession(kube.backend(), seed=1)
    yield chaos
    for _, experiment in chaos.experiments:  # what a failed test left: now, not at its lease's end
        chaos.recover(experiment)
    chaos.close()


def apply(session: ChaosSession, kind: str, on: NetTarget, **params):
    spec = session.spec((kind,), {"selector": on.selector, "mode": "all", "port": PORT, **params})
    start = time.monotonic()
    experiment = session.apply(spec)
    measured(f"cluster {kind} apply latency (s)", time.monotonic() - start, "-")
    return experiment


def recover(session: ChaosSession, experiment, kind: str) -> None:
    start = time.monotonic()
    session.recover(experiment)
    measured(f"cluster {kind} recover latency (s)", time.monotonic() - start, "-")
    assert experiment.outcome == "recovered", experiment.summary()


def test_http_replace_and_abort_between_pods_affect_matching_requests_only(session, pods):
    server, client = pods
    before = snapshot(server)
    replacing = apply(session, "http-replace", server, target="Response", path="/api/*", method="GET",
                      replace={"code": 503, "body": "unavailable"})
    replaced, other_path, other_method = requests(client, server, ("GET", "/api/a"), ("GET", "/health"),
                                                  ("POST", "/api/a", "{}"))
    assert (replaced["status"], replaced["body"]) == (503, "unavailable")
    assert echoed(other_path)["target"] == "/health" and echoed(other_method)["method"] == "POST"
    recover(session, replacing, "http-replace")
    aborting = apply(session, "http-abort", server, target="Request", method="DELETE")
    aborted, kept = requests(client, server, ("DELETE", "/x"), ("GET", "/x"))
    assert aborted["error"] == "RemoteDisconnected" and echoed(kept)["method"] == "GET"
    recover(session, aborting, "http-abort")
    assert echoed(requests(client, server, ("DELETE", "/x"))[0])["method"] == "DELETE"
    assert snapshot(server) == before and proxies_in(server) == []


def test_http_delay_and_patch_between_pods(session, pods):
    server, client = pods
    before = snapshot(server)
    experiment = apply(session, "http-delay", server, target="Request", path="/slow", delay="1s",
                       patch={"headers": [["X-Chaos", "e2e"]], "queries": [["from", "chaos"]]})
    fast, slow = requests(client, server, ("GET", "/fast"), ("GET", "/slow?a=1"))
    measured("cluster http-delay 1s: exchange (s)", slow["seconds"], "1s")
    assert 0.8 <= slow["seconds"] - fast["seconds"] <= 1.2
    seen = echoed(slow)
    assert seen["target"] == "/slow?a=1&from=chaos" and ["X-Chaos", "e2e"] in seen["headers"]
    assert ["X-Chaos", "e2e"] not in echoed(fast)["headers"]
    recover(session, experiment, "http-delay")
    assert snapshot(server) == before and proxies_in(server) == []
