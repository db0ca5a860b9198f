"""The http-* kinds between real pods, through the DaemonSet's daemon, checked from outside it.

An HTTP server pod and a client pod (busybox, sleeping): the server and the
client are host Python entered into the pods' network namespaces only
(tests/support/http_traffic.py), so what is measured depends neither on the
daemon's word nor on the image. The fault is applied to the server pod.
"""

from __future__ import annotations

import time

import pytest

from pytest_chaos.session import ChaosSession
from tests.support.http_traffic import PORT, Server, echoed, proxies_in, requests
from tests.support.network_bed import NetTarget, measured, snapshot
from tests.support.pods import busybox_pods

NAMESPACE = "chaos-e2e-http"




@pytest.fixture(scope="module")
def pods(kube, tmp_path_factory):
    with busybox_pods(kube, NAMESPACE, ("http-server", "http-client"), tmp_path_factory.mktemp("http")) as pods:
        serving = Server(pods["http-server"])
        yield pods["http-server"], pods["http-client"]
        serving.stop()



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
