"""Network faults between real pods, through the DaemonSet's daemon, measured from outside it.

Traffic is sent and served by host Python entered into the pods' network
namespaces only (the bed's tools, tests/support/network_bed.py), so the measurement
does not depend on the daemon's word, nor on what the busybox image offers.
"""

from __future__ import annotations

import statistics
import subprocess
import sys

import pytest

from pytest_chaos.session import ChaosSession
from tests.support.binomial import binomial_interval
from tests.support.network_bed import (
    DNS_SERVER,
    Background,
    NetTarget,
    UdpReceiver,
    dns_query,
    measured,
    snapshot,
    tcp_connects,
    tcp_throughput,
    udp_probe,
    udp_send,
)
from tests.support.pods import busybox_pods, pod_target
from tests.support.targets import wait_for

NAMESPACE = "chaos-e2e-net"
PORT = 7200




@pytest.fixture(scope="module")
def pods(kube, tmp_path_factory):
    with busybox_pods(kube, NAMESPACE, ("net-a", "net-b", "net-c"), tmp_path_factory.mktemp("network")) as pods:
        yield pods



@pytest.fixture
def servers():
    """Traffic servers started in pods' namespaces, stopped after the test."""
    started: list[Background] = []

    def start(target: NetTarget, tool: str, kind: type[Background] = Background) -> Background:
        server = kind(target, tool, ip=target.ip, port=PORT)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def apply(session: ChaosSession, kind: str, source: NetTarget, **params):
    spec = session.spec((kind,), {"selector": source.selector, "mode": "all", **params})
    return session.apply(spec)


def test_partition_between_pods_cuts_only_the_chosen_direction_and_peer(session, pods, servers):
    a, b, c = pods["net-a"], pods["net-b"], pods["net-c"]
    for pod in (a, b, c):
        servers(pod, "listen")
    before = snapshot(a)
    experiment = apply(session, "network-partition", a, target={"selector": b.selector})
    assert experiment.peers[0].address == b.ip
    assert not tcp_connects(a, b.ip, PORT, timeout_s=1)
    assert tcp_connects(a, c.ip, PORT)
    assert tcp_connects(b, a.ip, PORT)
    session.recover(experiment)
    assert experiment.outcome == "recovered", experiment.summary()
    assert tcp_connects(a, b.ip, PORT)
    assert snapshot(a) == before


def test_delay_between_pods_raises_the_round_trip_to_the_peer_only(session, pods, servers):
    a, b, c = pods["net-a"], pods["net-b"], pods["net-c"]
    servers(b, "echo")
    servers(c, "echo")
    baseline = udp_probe(a, b.ip, PORT, count=30).median_rtt_ms
    before = snapshot(a)
    experiment = apply(session, "network-delay", a, latency="100ms", target={"selector": b.selector})
    rise = statistics.median(udp_probe(a, b.ip, PORT, count=40, interval_s=0.02).rtts_ms) - baseline
    measured(f"cluster network-delay 100ms pod to pod: round-trip rise in ms (baseline {baseline:.2f} ms)", rise, "100")
    assert 95 <= rise <= 110
    assert udp_probe(a, c.ip, PORT, count=20).median_rtt_ms < 20
    session.recover(experiment)
    assert snapshot(a) == before


def test_loss_between_pods_within_a_binomial_interval(session, pods, servers):
    a, b = pods["net-a"], pods["net-b"]
    before = snapshot(a)
    counts = one_way_under(session, servers, a, b, "network-loss", loss="30")
    low, high = binomial_interval(1000, 0.7)
    measured("cluster network-loss 30% pod to pod over 1000 datagrams: loss", 1 - counts.received / 1000, "0.30")
    assert low <= counts.received <= high
    assert snapshot(a) == before


def one_way_under(session: ChaosSession, servers, source: NetTarget, sink: NetTarget, kind: str, **params):
    """What ``sink`` receives of 1000 datagrams ``source`` sends under ``kind`` towards it (then recovered)."""
    receiver = servers(sink, "receive", UdpReceiver)
    experiment = apply(session, kind, source, target={"selector": sink.selector}, **params)
    udp_send(source, sink.ip, PORT, 1000)
    counts = receiver.result()
    session.recover(experiment)
    return counts


def test_rules_are_removed_after_the_target_container_restarted_in_its_pod(session, kube, pods, servers):
    """The pod's network namespace outlives its container (the sandbox holds it): recovery finds it there."""
    a, b = pods["net-a"], pods["net-b"]
    servers(b, "listen")
    before = snapshot(a)
    experiment = apply(session, "network-partition", a, target={"selector": b.selector})
    old_pid = a.pid
    subprocess.run(["kill", "-9", str(old_pid)], check=True)
    restarted = wait_for(lambda: _restarted(kube, "net-a", old_pid), "net-a's container to restart", timeout=60)
    assert not tcp_connects(restarted, b.ip, PORT, timeout_s=1)  # the rules outlived the container
    session.recover(experiment)
    assert experiment.outcome == "recovered", experiment.summary()
    assert tcp_connects(restarted, b.ip, PORT)
    assert snapshot(restarted) == before
    pods["net-a"] = restarted


def _restarted(kube, name: str, old_pid: int) -> NetTarget | None:
    try:
        target = pod_target(kube, NAMESPACE, name)
    except (KeyError, LookupError):
        return None
    return target if target.pid not in (0, old_pid) else None


def test_dns_between_pods(session, kube, pods, tmp_path):
    server = pods["net-c"]
    serving = subprocess.Popen(["nsenter", f"--net={server.netns_path}", sys.executable, "-c", DNS_SERVER, server.ip],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert serving.stdout.readline().strip() == "ready"
        manifest = tmp_path / "client.yaml"
        manifest.write_text(f"""
apiVersion: v1
kind: Pod
metadata: {{name: dns-client, namespace: {NAMESPACE}, labels: {{app: dns-client}}}}
spec:
  terminationGracePeriodSeconds: 1
  dnsPolicy: None
  dnsConfig: {{nameservers: ["{server.ip}"]}}
  containers:
    - {{name: main, image: localhost/pytest-chaos/busybox:1, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}}
""")
        kube.kubectl("apply", "-f", str(manifest))
        kube.kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", "pod/dns-client", "--timeout=120s")
        client = pod_target(kube, NAMESPACE, "dns-client")
        assert dns_query(client, server.ip, "db.example.com")["addresses"] == ["10.9.9.9"]
        before = snapshot(client)
        experiment = apply(session, "dns", client, action="error", patterns=["db.example.com"])
        assert dns_query(client, server.ip, "db.example.com") == {"rcode": 2, "addresses": []}
        assert dns_query(client, server.ip, "web.example.com")["addresses"] == ["10.9.9.9"]
        # The pod's own lookup path: busybox nslookup reads the resolv.conf the kubelet wrote.
        looked_up = subprocess.run([*kube_exec(kube, "dns-client"), "nslookup", "db.example.com"],
                                   capture_output=True, text=True, timeout=60)
        assert "10.9.9.9" not in looked_up.stdout
        session.recover(experiment)
        assert dns_query(client, server.ip, "db.example.com")["addresses"] == ["10.9.9.9"]
        assert snapshot(client) == before
    finally:
        serving.kill()
        serving.wait()


def kube_exec(kube, pod: str) -> list[str]:
    return [kube.kubectl_path, f"--kubeconfig={kube.kubeconfig}", "-n", NAMESPACE, "exec", pod, "--"]



def test_bandwidth_duplicate_and_corrupt_between_pods(session, pods, servers):
    a, b = pods["net-a"], pods["net-b"]
    before = snapshot(a)
    peer = {"selector": b.selector}
    experiment = apply(session, "network-bandwidth", a, rate="1mbps", target=peer)
    bits = tcp_throughput(a, b.ip, PORT, seconds=3, sink=servers(b, "sink"))
    measured("cluster network-bandwidth 1mbps pod to pod: TCP goodput in Mbit/s", bits / 1e6, "8.389")
    assert 0.85 * 8 * (1 << 20) <= bits <= 1.15 * 8 * (1 << 20)
    session.recover(experiment)
    counts = one_way_under(session, servers, a, b, "network-duplicate", duplicate="50")
    low, high = binomial_interval(1000, 0.5)
    measured("cluster network-duplicate 50% pod to pod: duplicate share", counts.duplicates / 1000, "0.50")
    assert counts.received == 1000 and low <= counts.duplicates <= high
    counts = one_way_under(session, servers, a, b, "network-corrupt", corrupt="40")
    low, high = binomial_interval(1000, 0.6)
    measured("cluster network-corrupt 40% pod to pod: share dropped", 1 - counts.received / 1000, "0.40")
    assert low <= counts.received <= high
    assert snapshot(a) == before


def test_a_replaced_daemon_pod_takes_the_fault_over_and_recovers_it(session, kube, pods, servers):
    """The daemon's journal is on the node (hostPath): its replacement resumes the packet queue, and the
    plugin's recovery reaches it at its new address."""
    a, b = pods["net-a"], pods["net-b"]
    servers(b, "echo")
    before = snapshot(a)
    experiment = apply(session, "network-delay", a, latency="80ms", target={"selector": b.selector})
    old = kube.kubectl("-n", "chaos-testing", "get", "pods", "-l", "app.kubernetes.io/name=chaos-daemon",
                       "-o", "jsonpath={.items[0].metadata.name}")
    kube.kubectl("-n", "chaos-testing", "delete", "pod", old, "--wait=true", "--timeout=120s")
    kube.kubectl("-n", "chaos-testing", "rollout", "status", "daemonset/chaos-daemon", "--timeout=180s")
    wait_for(lambda: udp_probe(a, b.ip, PORT, count=3).median_rtt_ms >= 75, "the delay to be served again", 60)
    session.recover(experiment)
    assert experiment.outcome == "recovered", experiment.summary()
    assert snapshot(a) == before
    assert udp_probe(a, b.ip, PORT, count=10).median_rtt_ms < 20
