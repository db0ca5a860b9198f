"""The http-* kinds (Chaos Mesh's HTTPChaos), checked with real HTTP between two targets on a bridge.

A stdlib HTTP server runs in one bed target (``SERVER``: it answers every
request with JSON saying what reached it), a stdlib client (http.client) in
another (``CLIENT``: each request's status, headers, body or error, and time,
printed as JSON). The fault is applied to the server target through the
plugin's session and the daemon; every effect is seen by the client, from
outside the daemon. Recovery must leave the server's namespace as it was
(``snapshot``) and no proxy behind.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import grpc
import pytest
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb

from pytest_chaos.kinds import KINDS
from pytest_chaos.session import ChaosSession
from tests.support.http_traffic import CLIENT, PORT, Server, echoed, proxies_in, requests
from tests.support.network_bed import NetTarget, measured, snapshot
from tests.support.sessions import local_session
from tests.support.targets import wait_for


@pytest.fixture
def daemon(start_daemon):
    return start_daemon("--allow-pid-targets")


@pytest.fixture
def session(daemon):
    yield from local_session(daemon, seed=1)


@pytest.fixture
def pair(network_bed):
    """A server target running the echo server, and a client target."""
    server_target, client = network_bed.process(name="server"), network_bed.process(name="client")
    server = Server(server_target)
    yield server_target, client
    server.stop()


def apply(session: ChaosSession, kind: str, on: NetTarget, **params):
    spec = session.spec((kind,), {"selector": on.selector, "mode": "all", "port": PORT, **params})
    start = time.monotonic()
    experiment = session.apply(spec)
    assert experiment.outcome != "failed", experiment.summary()
    measured(f"{kind} apply latency (s)", time.monotonic() - start, "-")
    return experiment


def recover(session: ChaosSession, experiment, kind: str) -> None:
    start = time.monotonic()
    session.recover(experiment)
    measured(f"{kind} recover latency (s)", time.monotonic() - start, "-")
    assert experiment.outcome == "recovered", experiment.summary()


def test_http_replace_gives_the_replaced_code_and_body_to_matching_paths_and_methods_only(session, pair):
    server, client = pair
    before = snapshot(server)
    experiment = apply(session, "http-replace", server, target="Response", path="/api/*", method="GET",
                       replace={"code": 503, "body": "chaos says no", "headers": {"Retry-After": "7"}})
    assert len(proxies_in(server)) == 1
    replaced, other_path, other_method = requests(
        client, server, ("GET", "/api/orders?id=1"), ("GET", "/health"), ("POST", "/api/orders", "{}"))
    assert (replaced["status"], replaced["body"]) == (503, "chaos says no")
    assert ["Retry-After", "7"] in replaced["headers"]
    assert echoed(other_path)["target"] == "/health"
    assert echoed(other_method)["method"] == "POST"
    recover(session, experiment, "http-replace")
    assert echoed(requests(client, server, ("GET", "/api/orders"))[0])["target"] == "/api/orders"
    assert snapshot(server) == before
    assert proxies_in(server) == []


def test_http_patch_adds_headers_queries_and_merges_the_json_body_the_server_gets(session, pair):
    server, client = pair
    before = snapshot(server)
    experiment = apply(session, "http-patch", server, target="Request", method="POST",
                       patch={"headers": [["X-Chaos", "one"], ["X-Chaos", "two"]], "queries": [["debug", "1"]],
                              "body": {"type": "JSON", "value": '{"remove": null, "added": true}'}})
    patched, untouched = requests(client, server, ("POST", "/orders?page=2", '{"remove": 1, "keep": 2}',
                                                   {"Content-Type": "application/json"}), ("GET", "/orders"))
    seen = echoed(patched)
    assert seen["target"] == "/orders?page=2&debug=1"
    assert json.loads(seen["body"]) == {"keep": 2, "added": True}
    assert [v for k, v in seen["headers"] if k == "X-Chaos"] == ["one", "two"]
    assert echoed(untouched)["target"] == "/orders" and not [k for k, _ in echoed(untouched)["headers"]
                                                             if k == "X-Chaos"]
    recover(session, experiment, "http-patch")
    assert snapshot(server) == before and proxies_in(server) == []


def test_http_abort_closes_matching_requests_without_a_response(session, pair):
    server, client = pair
    before = snapshot(server)
    experiment = apply(session, "http-abort", server, target="Request", method="DELETE", path="/orders/*")
    aborted, kept, other = requests(client, server, ("DELETE", "/orders/7"), ("GET", "/orders/7"),
                                    ("DELETE", "/carts/7"))
    assert aborted["error"] == "RemoteDisconnected", aborted
    assert echoed(kept)["method"] == "GET" and echoed(other)["target"] == "/carts/7"
    recover(session, experiment, "http-abort")
    assert echoed(requests(client, server, ("DELETE", "/orders/7"))[0])["method"] == "DELETE"
    assert snapshot(server) == before and proxies_in(server) == []


@pytest.mark.parametrize("target", ["Request", "Response"])
def test_http_delay_holds_matching_exchanges_for_the_delay_and_others_not_at_all(session, pair, target):
    server, client = pair
    experiment = apply(session, "http-delay", server, target=target, path="/slow", delay="1s")
    results = requests(client, server, ("GET", "/fast"), ("GET", "/slow"), ("GET", "/fast"), ("GET", "/slow"))
    fast = max(results[0]["seconds"], results[2]["seconds"])
    for slow in (results[1], results[3]):
        assert slow["status"] == 200
        measured(f"http-delay ({target}) exchange (s)", slow["seconds"], "1s")
        # Never less than asked, not held twice; an unmatched exchange is not held (it would take the whole
        # second). Bounds that fail only when the fault is broken, however busy the machine.
        assert 0.99 <= slow["seconds"] < 2.0 + fast, results
    assert fast < 1.0, results
    recover(session, experiment, "http-delay")


def test_a_connection_opened_before_the_fault_is_reset(session, pair):
    server, client = pair
    held = subprocess.Popen(
        ["nsenter", f"--net={client.netns_path}", sys.executable, "-I", "-c", CLIENT,
         json.dumps({"ip": server.ip, "port": PORT, "held": True, "requests": [["GET", "/a", None, {}]] * 2})],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert held.stdout.readline().strip() == "ready"  # connected, before the first request
        held.stdin.write("\n")
        held.stdin.flush()
        assert held.stdout.readline().strip() == "ready"  # the first request answered: an open, used connection
        experiment = apply(session, "http-replace", server, target="Response", replace={"code": 500})
        held.stdin.write("\n")
        held.stdin.flush()
        first, second = json.loads(held.stdout.readline())
        assert echoed(first)["target"] == "/a"
        # The old connection is reset (or seen closed) at its next request, never proxied nor left alone.
        assert second.get("error") in ("ConnectionResetError", "RemoteDisconnected", "BrokenPipeError"), second
        assert requests(client, server, ("GET", "/a"))[0]["status"] == 500  # a new one gets the fault
        recover(session, experiment, "http-replace")
    finally:
        held.kill()
        held.wait()


def test_a_client_side_fault_changes_what_the_target_itself_gets_from_the_port(session, pair):
    server, client = pair
    before = snapshot(client)
    experiment = apply(session, "http-replace", client, target="Response", side="client",
                       replace={"code": 418})
    assert requests(client, server, ("GET", "/x"))[0]["status"] == 418
    recover(session, experiment, "http-replace")
    assert echoed(requests(client, server, ("GET", "/x"))[0])["target"] == "/x"
    assert snapshot(client) == before and proxies_in(client) == []


def http_request(on: NetTarget, injection_id: str, lease_s: int, kind: str = "http-replace",
                 **params) -> pb.ApplyRequest:
    checked = KINDS[kind].check_params({"port": PORT, **params})
    request = pb.ApplyRequest(container_id=on.container_id, injection=pb.Injection(id=injection_id),
                              http=KINDS[kind].message(checked))
    request.injection.lease.FromSeconds(lease_s)
    return request


def test_a_daemon_sigkilled_and_restarted_resumes_the_proxy_and_recovers(start_daemon, pair, tmp_path):
    server, client = pair
    state = str(tmp_path / "state")
    first = start_daemon("--allow-pid-targets", "--state-dir", state)
    before = snapshot(server)
    first.stub.Apply(http_request(server, "kept-http", 120, target="Response", replace={"code": 502}), timeout=30)
    assert requests(client, server, ("GET", "/"))[0]["status"] == 502
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    # The proxy died with its daemon; the redirect stayed, so the port is refused rather than served unfaulted.
    wait_for(lambda: proxies_in(server) == [], "the proxy to end with its daemon", 15)
    assert "status" not in requests(client, server, ("GET", "/"), timeout=5)[0]
    second = start_daemon("--allow-pid-targets", "--state-dir", state)
    wait_for(lambda: requests(client, server, ("GET", "/"), timeout=5)[0].get("status") == 502,
             "the proxy to be started again", 20)
    [status] = second.stub.Recover(pb.RecoverRequest(injection_ids=["kept-http"]), timeout=30).injections
    assert status.state == pb.InjectionStatus.RECOVERED, status.detail
    assert echoed(requests(client, server, ("GET", "/"))[0])["target"] == "/"
    assert snapshot(server) == before and proxies_in(server) == []


def test_a_lease_that_runs_out_recovers_the_fault_with_no_runner(daemon, pair):
    server, client = pair
    before = snapshot(server)
    daemon.stub.Apply(http_request(server, "orphan-http", 2, kind="http-abort", target="Request"), timeout=30)
    assert requests(client, server, ("GET", "/"))[0]["error"] == "RemoteDisconnected"
    wait_for(lambda: proxies_in(server) == [] and snapshot(server) == before, "the lease to end the fault", 30)
    assert echoed(requests(client, server, ("GET", "/"))[0])["target"] == "/"


@pytest.mark.parametrize("change, field", [
    (lambda m: setattr(m, "port", 0), "port"),
    (lambda m: m.replace.headers.add(name="Content-Length", value="1"), "replace.headers[0]"),
    (lambda m: setattr(m.patch, "body_json", "{not json"), "patch.body.value"),
    (lambda m: setattr(m, "target", pb.Http.TARGET_REQUEST), "replace.code"),
    (lambda m: setattr(m, "kind", pb.Http.KIND_DELAY), "delay"),
    (lambda m: setattr(m, "path", "bad path with spaces"), "path"),
])
def test_the_daemon_refuses_bad_http_requests_naming_the_field(daemon, network_bed, change, field):
    target = network_bed.process()
    request = http_request(target, "bad-http", 30, target="Response", replace={"code": 503})
    change(request.http)
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Apply(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details()
