"""The tcp-* kinds between real pods, through the kubernetes backend and the DaemonSet's daemon.

A TCP server runs in one pod's network namespace, a client in another's (host
Python entered into the namespaces only, as tests/test_tcp_toxics.py does on
the local bed); the fault is applied to the server pod by its labels and
measured by the client, from outside the daemon.
"""

from __future__ import annotations

import statistics

import pytest

from pytest_chaos.session import ChaosSession
from tests.support.network_bed import NetTarget, measured, snapshot
from tests.support.pods import busybox_pods
from tests.test_tcp_toxics import Server, client

NAMESPACE = "chaos-e2e-tcp"
PORT = 7310




@pytest.fixture(scope="module")
def pods(kube, tmp_path_factory):
    with busybox_pods(kube, NAMESPACE, ("tcp-server", "tcp-client"), tmp_path_factory.mktemp("tcp")) as pods:
        yield pods["tcp-server"], pods["tcp-client"]



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
