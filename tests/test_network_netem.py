"""network-netem (Chaos Mesh's netem action): several of netem's effects as one fault, measured with real traffic on
the bed, once per mechanism this kernel offers (netem, the packet queue)."""

from __future__ import annotations

import re
import statistics

import grpc
import pytest
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb

from tests.support.binomial import binomial_interval
from tests.support.network_bed import measured, snapshot, udp_echo_server, udp_probe
from tests.test_network_faults import (  # noqa: F401 - fixtures and the per-mechanism parametrization
    PORT,
    apply,
    assert_made_with,
    daemon,
    emulating,
    peers,
    pytest_generate_tests,
    trio,
)

PROBES = 400


def test_delay_and_loss_at_once_towards_the_peer_only(emulating, emulation, trio):
    session = emulating
    target, peer, other = trio
    udp_echo_server(peer, PORT)
    udp_echo_server(other, PORT)
    baseline = udp_probe(target, peer.ip, PORT, count=40).median_rtt_ms
    before = snapshot(target)
    experiment = apply(session, "network-netem", target, target=peers(peer), delay={"latency": "60ms"},
                       loss={"loss": "30"})
    assert_made_with(experiment, emulation)
    assert len({t.mechanism for t in experiment.targets}) == 1  # one fault, one mechanism
    if emulation == "netem":
        qdisc = target.run("tc", "qdisc", "show", "dev", "eth0", check=True).stdout
        assert re.search(r"netem .*delay 60ms.* loss 30%", qdisc), qdisc  # one qdisc holding both
    probed = udp_probe(target, peer.ip, PORT, count=PROBES, interval_s=0.005)
    elsewhere = udp_probe(target, other.ip, PORT, count=20)
    rise = statistics.median(probed.rtts_ms) - baseline
    low, high = binomial_interval(PROBES, 0.7)  # the requests are dropped on the way out, the echoes are not
    measured(f"network-netem delay 60ms + loss 30% ({emulation}): loss", 1 - probed.received / PROBES, "0.30")
    measured(f"network-netem delay 60ms + loss 30% ({emulation}): round-trip rise in ms", rise, "60")
    assert low <= probed.received <= high, f"{probed.received} of {PROBES} came back; expected {low:.0f} to {high:.0f}"
    assert 0.8 * 60 <= rise <= 1.2 * 60, f"round trip rose by {rise:.1f} ms"
    assert elsewhere.received == 20 and elsewhere.median_rtt_ms < 20  # the bystander is untouched
    session.recover(experiment)
    assert udp_probe(target, peer.ip, PORT, count=20).median_rtt_ms < 20
    assert snapshot(target) == before


def test_each_sections_correlation_is_netems_and_the_queue_refuses_it_naming_it(emulating, emulation, network_bed):
    session = emulating
    target, peer = network_bed.process(), network_bed.process()
    before = snapshot(target)
    # netem correlates a delay's jitter (with none, a correlation changes nothing, and tc shows none).
    params = dict(target=peers(peer), delay={"latency": "50ms", "jitter": "10ms", "correlation": "25"},
                  duplicate={"duplicate": "10", "correlation": "50"})
    if emulation == "queue":
        with pytest.raises(Exception, match=r"delay.correlation 25 .* and duplicate.correlation 50 .*needs netem"):
            apply(session, "network-netem", target, **params)
        assert snapshot(target) == before
        return
    experiment = apply(session, "network-netem", target, **params)
    qdisc = target.run("tc", "qdisc", "show", "dev", "eth0", check=True).stdout
    assert re.search(r"netem .*delay 50ms +10ms +25%.* duplicate 10% 50%", qdisc), qdisc
    session.recover(experiment)
    assert snapshot(target) == before


@pytest.mark.parametrize("fault, message", [
    (pb.NetworkNetem(), "network-netem needs at least one of delay, loss, duplicate, corrupt"),
    (pb.NetworkNetem(loss=pb.NetworkLoss(loss=101)), "network-netem loss: loss must be a percentage"),
    (pb.NetworkNetem(delay=pb.NetworkDelay()), "network-netem delay: latency is required"),
    (pb.NetworkNetem(loss=pb.NetworkLoss(loss=1, scope=pb.NetworkScope(device="lo"))), "loss.scope must be unset"),
])
def test_the_daemon_refuses_bad_netem_requests(daemon, fault, message):  # noqa: F811 - the imported fixture
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Apply(pb.ApplyRequest(container_id="pid://1", injection=pb.Injection(id="bad"),
                                          network_netem=fault), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_the_marker_refuses_a_bad_section_naming_it():
    from pytest_chaos.backends.kubernetes import KubernetesBackend
    from pytest_chaos.errors import ChaosSpecError
    from pytest_chaos.spec import build_spec

    backend = KubernetesBackend(kubeconfig="/nonexistent")
    for params, field in (({}, "delay"), ({"loss": {"los": "1"}}, "loss.los"), ({"delay": {"latency": "x"}},
                                                                                 "delay.latency"),
                          ({"corrupt": "5"}, "corrupt")):
        with pytest.raises(ChaosSpecError) as raised:
            build_spec(backend, ("network-netem",), {"selector": {"namespaces": ["a"]}, **params})
        assert raised.value.field == field, (params, raised.value)
