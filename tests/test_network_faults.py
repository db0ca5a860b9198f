"""Network faults on the local backend, measured with real traffic between real targets on a bridge.

Each test applies a fault through the plugin's session (selection, peers,
transport) to a daemon of its own, measures its effect from outside the
daemon with the bed's traffic tools (tests/support/network_bed.py), recovers, and
compares the target's namespace with a snapshot from before: no chain, rule,
qdisc, device or queue of ours may be left. Statistical checks use intervals
computed from the requested rate, never a tolerance picked to pass.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys

import grpc
import pytest
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb
from pytest_chaos_daemon.confinement import procfs

from pytest_chaos.backends.local import LocalBackend
from pytest_chaos.session import ChaosSession
from tests.support.binomial import binomial_interval
from tests.support.network_bed import (
    DNS_SERVER,
    NetworkBed,
    dns_query,
    emulations,
    measured,
    snapshot,
    snmp,
    tcp_connects,
    tcp_listener,
    tcp_throughput,
    udp_echo_server,
    udp_probe,
    udp_receiver,
    udp_send,
)
from tests.support.sessions import local_session
from tests.support.targets import running, wait_for

PORT = 7100


@pytest.fixture
def daemon(start_daemon):
    return start_daemon("--allow-pid-targets", "--containerd-namespace", "*")


@pytest.fixture
def session(daemon):
    yield from local_session(daemon)


@pytest.fixture
def queue_session(start_daemon):
    """A session whose daemon makes the netem kinds with the packet queue, which runs a program, even where the
    kernel has netem (which runs none)."""
    yield from local_session(start_daemon("--allow-pid-targets", "--containerd-namespace", "*",
                                       "--network-emulation", "queue"))




def pytest_generate_tests(metafunc):
    # The netem kinds' tests run once per mechanism this kernel offers (both where it has netem).
    if "emulation" in metafunc.fixturenames:
        metafunc.parametrize("emulation", emulations())


@pytest.fixture
def emulating(start_daemon, emulation):
    """A session whose daemon makes the netem kinds with ``emulation``: netem, or the packet queue."""
    # "netem" runs the daemon's default, auto: netem where the device's qdisc is free, the queue where not.
    yield from local_session(start_daemon("--allow-pid-targets", "--containerd-namespace", "*",
                                       "--network-emulation", "auto" if emulation == "netem" else emulation))


MECHANISMS = {"netem": "tc netem on the device's egress", "queue": "packet queue (iptables NFQUEUE)"}


def assert_made_with(experiment, emulation: str) -> None:
    assert experiment.targets[0].mechanism.startswith(MECHANISMS[emulation]), experiment.targets[0].mechanism


def apply(session: ChaosSession, kind: str, source, **params):
    spec = session.spec((kind,), {"selector": source.selector, "mode": "all", **params})
    return session.apply(spec)


def peers(*targets) -> dict:
    return {"selector": {"pids": [t.pid for t in targets]}, "mode": "all"}


@pytest.fixture
def trio(network_bed: NetworkBed):
    """Three processes on one bridge: the target, the peer the fault names, and a bystander."""
    return network_bed.process(name="target"), network_bed.process(name="peer"), network_bed.process(name="other")


def test_partition_to_cuts_the_connections_the_target_opens_to_the_peer_only(session, trio):
    target, peer, other = trio
    for t in trio:
        tcp_listener(t, PORT)
    before = snapshot(target)
    experiment = apply(session, "network-partition", target, target=peers(peer))
    assert experiment.targets[0].mechanism == "iptables DROP in the target's network namespace"
    assert not tcp_connects(target, peer.ip, PORT, timeout_s=1)
    assert tcp_connects(target, other.ip, PORT)  # another peer
    assert tcp_connects(peer, target.ip, PORT)  # the reverse direction
    session.recover(experiment)
    assert experiment.outcome == "recovered", experiment.summary()
    assert tcp_connects(target, peer.ip, PORT)
    assert snapshot(target) == before


def test_partition_from_and_both(session, trio):
    target, peer, other = trio
    for t in trio:
        tcp_listener(t, PORT)
    before = snapshot(target)
    experiment = apply(session, "network-partition", target, target=peers(peer), direction="from")
    assert not tcp_connects(peer, target.ip, PORT, timeout_s=1)
    assert tcp_connects(target, peer.ip, PORT)
    assert tcp_connects(other, target.ip, PORT)
    session.recover(experiment)
    experiment = apply(session, "network-partition", target, target=peers(peer), direction="both")
    assert not tcp_connects(peer, target.ip, PORT, timeout_s=1)
    assert not tcp_connects(target, peer.ip, PORT, timeout_s=1)
    assert tcp_connects(target, other.ip, PORT)
    session.recover(experiment)
    assert snapshot(target) == before


def test_partition_of_an_external_target_cidr(session, network_bed):
    target, peer = network_bed.process(), network_bed.process()
    tcp_listener(peer, PORT)
    experiment = apply(session, "network-partition", target, external_targets=[f"{peer.ip}/32"])
    assert not tcp_connects(target, peer.ip, PORT, timeout_s=1)
    session.recover(experiment)
    assert tcp_connects(target, peer.ip, PORT)


def test_loss_30_percent_over_1000_packets_is_within_a_binomial_interval(emulating, emulation, trio):
    session = emulating
    target, peer, other = trio
    receiver, bystander = udp_receiver(peer, PORT), udp_receiver(other, PORT)
    before = snapshot(target)
    experiment = apply(session, "network-loss", target, target=peers(peer), loss="30")
    assert_made_with(experiment, emulation)
    sent = udp_send(target, peer.ip, PORT, 1000)
    assert sent == 1000  # dropped later, by netem or the queue: sendto never fails
    udp_send(target, other.ip, PORT, 200)
    counts, others = receiver.result(), bystander.result()
    low, high = binomial_interval(1000, 0.7)
    measured(f"network-loss 30% ({emulation}) over 1000 UDP datagrams: loss", 1 - counts.received / 1000, "0.30")
    assert low <= counts.received <= high, f"{counts.received} of 1000 arrived; expected {low:.0f} to {high:.0f}"
    assert others.received == 200  # only towards the selected peer
    session.recover(experiment)
    assert snapshot(target) == before


def test_delay_100ms_with_jitter_raises_the_round_trip_to_the_peer_only(emulating, emulation, trio):
    session = emulating
    target, peer, other = trio
    udp_echo_server(peer, PORT)
    udp_echo_server(other, PORT)
    baseline = udp_probe(target, peer.ip, PORT, count=40).median_rtt_ms
    before = snapshot(target)
    experiment = apply(session, "network-delay", target, target=peers(peer), latency="100ms", jitter="10ms")
    assert_made_with(experiment, emulation)
    delayed = udp_probe(target, peer.ip, PORT, count=60, interval_s=0.02)
    elsewhere = udp_probe(target, other.ip, PORT, count=20).median_rtt_ms
    rise = statistics.median(delayed.rtts_ms) - baseline
    measured(f"network-delay 100ms jitter 10ms ({emulation}): round-trip rise in ms (baseline {baseline:.2f} ms, "
             f"min {min(delayed.rtts_ms) - baseline:.1f}, max {max(delayed.rtts_ms) - baseline:.1f})", rise, "100")
    # The median of uniform jitter is the latency; the queue's own scheduling adds under a few ms.
    assert 95 <= rise <= 110, f"round trip rose by {rise:.1f} ms"
    # Jitter spreads the rest by ±10 ms; a busy machine may hold a rare packet longer (deciles, not extremes).
    deciles = statistics.quantiles(delayed.rtts_ms, n=10)
    assert 85 <= deciles[0] - baseline and deciles[-1] - baseline <= 130, deciles
    assert elsewhere < 20
    session.recover(experiment)
    assert udp_probe(target, peer.ip, PORT, count=20).median_rtt_ms < 20
    assert snapshot(target) == before


def test_reorder_sends_a_share_at_once(emulating, emulation, network_bed):
    session = emulating
    target, peer = network_bed.process(), network_bed.process()
    udp_echo_server(peer, PORT)
    experiment = apply(session, "network-delay", target, latency="100ms", reorder={"reorder": "50", "gap": 0})
    assert_made_with(experiment, emulation)
    result = udp_probe(target, peer.ip, PORT, count=200, interval_s=0.005)
    # Sent at once, or held 100 ms: half-way between tells them apart even where a round trip alone takes tens of
    # ms (the VM lane's one emulated CPU).
    fast = sum(rtt < 50 for rtt in result.rtts_ms)
    measured(f"network-delay 100ms reorder 50% ({emulation}): share sent at once ({result.out_of_order} out of order)",
             fast / result.received, "0.50")
    low, high = binomial_interval(result.received, 0.5)
    assert low <= fast <= high
    assert result.out_of_order > 0
    session.recover(experiment)


def test_duplicate_50_percent(emulating, emulation, network_bed):
    session = emulating
    target, peer = network_bed.process(), network_bed.process()
    receiver = udp_receiver(peer, PORT)
    before = snapshot(target)
    experiment = apply(session, "network-duplicate", target, duplicate="50")
    assert_made_with(experiment, emulation)
    udp_send(target, peer.ip, PORT, 1000)
    counts = receiver.result()
    low, high = binomial_interval(1000, 0.5)
    measured(f"network-duplicate 50% ({emulation}) over 1000 UDP datagrams: duplicate share", counts.duplicates / 1000, "0.50")
    assert counts.received == 1000
    assert low <= counts.duplicates <= high, f"{counts.duplicates} duplicates; expected {low:.0f} to {high:.0f}"
    session.recover(experiment)
    assert snapshot(target) == before


def test_corrupt_40_percent_is_dropped_by_the_receiver_on_its_checksum(emulating, emulation, network_bed):
    session = emulating
    target, peer = network_bed.process(), network_bed.process()
    receiver = udp_receiver(peer, PORT)
    errors_before = checksum_errors(peer)
    before = snapshot(target)
    experiment = apply(session, "network-corrupt", target, corrupt="40")
    assert_made_with(experiment, emulation)
    udp_send(target, peer.ip, PORT, 1000)
    counts = receiver.result()
    errors = checksum_errors(peer) - errors_before
    dropped = 1000 - counts.received
    # netem's flip may land in the Ethernet source address (6 of the frame's 106 bytes), which no one checks:
    # such a datagram arrives intact, so with netem a little more than 60% do.
    intact = 0.6 if emulation == "queue" else 0.6 + 0.4 * 6 / 106
    low, high = binomial_interval(1000, intact)
    measured(f"network-corrupt 40% ({emulation}) over 1000 UDP datagrams: share dropped ({errors} checksum errors)",
             dropped / 1000, "0.40")
    assert low <= counts.received <= high, f"{counts.received} of 1000 arrived intact"
    # The queue flips a bit past the IP header: the UDP checksum catches it, unless the bit is in the ports or the
    # length (the datagram then misses the socket). netem flips one anywhere in the frame (106 bytes here): the
    # IP header's 20 are caught by its checksum, the Ethernet header's 14 (13%) are dropped uncounted or not at all.
    assert (0.9 if emulation == "queue" else 0.75) * dropped <= errors <= dropped, (errors, dropped)
    session.recover(experiment)
    assert snapshot(target) == before


def checksum_errors(target) -> int:
    """Datagrams the target's stack dropped on a checksum: UDP's, and the IP header's."""
    return snmp(target, "Udp")["InCsumErrors"] + snmp(target, "Ip")["InHdrErrors"]


@pytest.mark.parametrize("direction", ["to", "from"])
def test_bandwidth_1mbps_holds_a_bulk_transfer_to_the_rate(session, network_bed, direction):
    target, peer = network_bed.process(), network_bed.process()
    before = snapshot(target)
    experiment = apply(session, "network-bandwidth", target, rate="1mbps", target=peers(peer), direction=direction)
    source, sink = (target, peer) if direction == "to" else (peer, target)
    measured_rate = tcp_throughput(source, sink.ip, PORT, seconds=4)
    rate_bits = (1 << 20) * 8  # Chaos Mesh's 1mbps: a MiB per second
    measured(f"network-bandwidth 1mbps {direction}: TCP goodput in Mbit/s", measured_bits := measured_rate / 1e6,
             f"{rate_bits / 1e6:.3f}")
    assert 0.85 * rate_bits <= measured_rate <= 1.15 * rate_bits, f"{measured_bits:.2f} Mbit/s"
    session.recover(experiment)
    assert tcp_throughput(source, sink.ip, PORT + 1, seconds=1) > 5 * rate_bits
    assert snapshot(target) == before


def test_two_faults_on_the_same_traffic_compose_and_recover_apart(emulating, emulation, network_bed):
    session = emulating
    target, peer = network_bed.process(), network_bed.process()
    udp_echo_server(peer, PORT)
    before = snapshot(target)
    delay = apply(session, "network-delay", target, latency="50ms", target=peers(peer))
    loss = apply(session, "network-loss", target, loss="50", target=peers(peer))
    assert_made_with(delay, emulation)
    # The device's root qdisc holds the first fault's netem: the second goes through the queue, and says why.
    assert_made_with(loss, "queue")
    assert emulation == "queue" or "already has a root qdisc" in loss.targets[0].mechanism
    both = udp_probe(target, peer.ip, PORT, count=300, interval_s=0.005)
    low, high = binomial_interval(300, 0.5)
    assert low <= both.received <= high
    assert statistics.median(both.rtts_ms) >= 45
    session.recover(loss)
    only_delay = udp_probe(target, peer.ip, PORT, count=40)
    assert only_delay.received == 40 and statistics.median(only_delay.rtts_ms) >= 45
    session.recover(delay)
    assert snapshot(target) == before


def test_a_containerd_target_with_a_containerd_peer(session, network_bed):
    target, peer = network_bed.containerd(), network_bed.containerd()
    tcp_listener(peer, PORT)
    experiment = apply(session, "network-partition", target, target={"selector": peer.selector})
    assert experiment.peers[0].container_id == peer.container_id
    assert not tcp_connects(target, peer.ip, PORT, timeout_s=1)
    session.recover(experiment)
    assert tcp_connects(target, peer.ip, PORT)


def test_a_host_network_target_is_refused(session, targets):
    pid = targets.process("sleep", "4701")  # mount and pid namespaces of its own, the host's network
    with pytest.raises(Exception, match="node's own network namespace"):
        apply(session, "network-loss", type("T", (), {"selector": {"pids": [pid]}})(), loss="10")


def delay_80ms(target, injection_id: str, lease_s: int) -> pb.ApplyRequest:
    """An 80 ms delay on all of ``target``'s egress, applied straight through the daemon's API."""
    request = pb.ApplyRequest(container_id=target.container_id, injection=pb.Injection(id=injection_id),
                              network_delay=pb.NetworkDelay(latency={"nanos": 80_000_000}))
    request.injection.lease.FromSeconds(lease_s)
    return request


def test_a_lease_that_runs_out_recovers_the_fault_with_no_runner(start_daemon, emulation, network_bed):
    """What a SIGKILLed runner leaves: an injection nobody renews."""
    daemon = start_daemon("--allow-pid-targets", "--network-emulation", emulation)
    target, peer = network_bed.process(), network_bed.process()
    udp_echo_server(peer, PORT)
    before = snapshot(target)
    daemon.stub.Apply(delay_80ms(target, "orphan-delay", lease_s=2), timeout=30)
    assert udp_probe(target, peer.ip, PORT, count=10).median_rtt_ms >= 75
    wait_for(lambda: snapshot(target) == before, "the daemon to recover the fault when its lease ran out", 15)
    assert udp_probe(target, peer.ip, PORT, count=10).median_rtt_ms < 20


def test_a_restarted_daemon_keeps_the_delay_and_recovers_it(start_daemon, emulation, network_bed, tmp_path):
    state = str(tmp_path / "state")
    daemon_args = ("--allow-pid-targets", "--state-dir", state, "--network-emulation", emulation)
    first = start_daemon(*daemon_args)
    target, peer = network_bed.process(), network_bed.process()
    udp_echo_server(peer, PORT)
    before = snapshot(target)
    first.stub.Apply(delay_80ms(target, "kept-delay", lease_s=120), timeout=30)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    if emulation == "queue":
        # The queue's program died with it: --queue-bypass lets traffic through undelayed meanwhile.
        assert udp_probe(target, peer.ip, PORT, count=10).median_rtt_ms < 20
    else:  # netem is the kernel's: it holds without any daemon
        assert udp_probe(target, peer.ip, PORT, count=10).median_rtt_ms >= 75
    second = start_daemon(*daemon_args)
    wait_for(lambda: udp_probe(target, peer.ip, PORT, count=3).median_rtt_ms >= 75, "the delay to be served again", 15)
    assert udp_probe(target, peer.ip, PORT, count=10).median_rtt_ms >= 75
    [status] = second.stub.Recover(pb.RecoverRequest(injection_ids=["kept-delay"]), timeout=30).injections
    assert status.state == pb.InjectionStatus.RECOVERED, status.detail
    assert snapshot(target) == before


def test_netem_parameters_are_honoured_by_netem_and_refused_by_the_queue(emulating, emulation, network_bed):
    """Chaos Mesh's reorder gap: with netem, every 5th packet goes at once (reorder 100%, gap 5), as the qdisc
    seen from outside the daemon says; the packet queue cannot, and the fault is refused before anything
    changes, naming why."""
    session = emulating
    target, peer = network_bed.process(), network_bed.process()
    udp_echo_server(peer, PORT)
    before = snapshot(target)
    params = dict(latency="100ms", jitter="5ms", correlation="25", reorder={"reorder": "100", "correlation": "0", "gap": 5})
    if emulation == "queue":
        with pytest.raises(Exception, match="reorder.gap 5 .*needs netem") as info:
            apply(session, "network-delay", target, **params)
        assert "correlation 25 " in str(info.value) and "through the packet queue" in str(info.value)
        assert snapshot(target) == before
        return
    experiment = apply(session, "network-delay", target, **params)
    assert_made_with(experiment, emulation)
    qdisc = target.run("tc", "qdisc", "show", "dev", "eth0", check=True).stdout
    assert re.search(r"netem .*delay 100ms +5ms +25%.* reorder 100% gap 5", qdisc), qdisc
    result = udp_probe(target, peer.ip, PORT, count=100, interval_s=0.005)
    fast = sum(rtt < 50 for rtt in result.rtts_ms)
    measured("network-delay 100ms reorder 100% gap 5 (netem): share sent at once", fast / result.received, "0.20")
    # Never more than every 5th goes at once (a held packet takes 100 +- 5 ms); a stalled machine (the VM lane's
    # one emulated CPU) can only make a fast one late, so fewer is allowed, down to 70% of them.
    assert 0.7 * result.received / 5 <= fast <= result.received / 5 + 1, f"{fast} of {result.received} went at once"
    session.recover(experiment)
    assert snapshot(target) == before


def test_a_gone_namespace_counts_as_recovered_and_says_so(daemon):
    # A namespace only its process holds (no bind mount, unlike the bed's): it goes with the process.
    process = subprocess.Popen(["unshare", "--net", "sleep", "4702"])
    wait_for(lambda: running("sleep 4702"), "the process to start")
    request = pb.ApplyRequest(container_id=f"pid://{process.pid}", injection=pb.Injection(id="gone"),
                              network_partition=pb.NetworkPartition(scope=pb.NetworkScope(device="lo")))
    try:
        daemon.stub.Apply(request, timeout=30)
    finally:
        process.kill()
        process.wait()
    [status] = daemon.stub.Recover(pb.RecoverRequest(injection_ids=["gone"]), timeout=30).injections
    assert status.state == pb.InjectionStatus.RECOVERED
    assert "namespace is gone" in status.detail


@pytest.mark.parametrize("fault, message", [
    (dict(network_loss=pb.NetworkLoss(loss=101)), "loss must be a percentage from 0 to 100"),
    (dict(network_loss=pb.NetworkLoss(loss=10, correlation=101)), "correlation must be a percentage"),
    (dict(network_delay=pb.NetworkDelay(latency={"nanos": 1000}, reorder=pb.NetworkDelay.Reorder(gap=-1))),
     "reorder.gap must be from 0"),
    (dict(network_delay=pb.NetworkDelay()), "latency is required"),
    (dict(network_delay=pb.NetworkDelay(latency={"seconds": 61})), "latency must be from 0 to 60s"),
    (dict(network_bandwidth=pb.NetworkBandwidth(rate=0)), "rate must be from 1 byte/s"),
    (dict(network_partition=pb.NetworkPartition(scope=pb.NetworkScope(peers=["fe80::1"]))), "only IPv4 peers"),
    (dict(network_partition=pb.NetworkPartition(scope=pb.NetworkScope(device="eth0; reboot"))), "interface name"),
    (dict(network_loss=pb.NetworkLoss(loss=1, scope=pb.NetworkScope(direction=pb.NetworkScope.DIRECTION_FROM))),
     "needs peers"),
    (dict(dns=pb.Dns(patterns=["a*b"])), "dns: patterns"),
])
def test_the_daemon_refuses_bad_network_requests(daemon, fault, message):
    with pytest.raises(grpc.RpcError) as info:
        daemon.stub.Apply(pb.ApplyRequest(container_id="pid://1", injection=pb.Injection(id="bad"), **fault),
                          timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


@pytest.mark.parametrize("action", ["error", "random"])
def test_dns_fails_or_randomises_matching_names_and_forwards_the_rest(session, network_bed, action):
    server = network_bed.process()
    serving = subprocess.Popen(["nsenter", f"--net={server.netns_path}", sys.executable, "-c", DNS_SERVER, server.ip],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert serving.stdout.readline().strip() == "ready"
        target = network_bed.process(resolv_conf=f"nameserver {server.ip}\n")
        assert dns_query(target, server.ip, "db.example.com") == {"rcode": 0, "addresses": ["10.9.9.9"]}
        before = snapshot(target)
        experiment = apply(session, "dns", target, action=action, patterns=["db.example.*", "cache-?.example.com"])
        for name in ("db.example.com", "db.example.org", "cache-1.example.com"):
            answer = dns_query(target, server.ip, name)
            if action == "error":
                assert answer == {"rcode": 2, "addresses": []}, name  # SERVFAIL
            else:
                assert answer["rcode"] == 0 and len(answer["addresses"]) == 1 and answer["addresses"] != ["10.9.9.9"]
        # Other names, and other types of a matching name, reach the target's own nameserver.
        assert dns_query(target, server.ip, "web.example.com") == {"rcode": 0, "addresses": ["10.9.9.9"]}
        assert dns_query(target, server.ip, "cache-10.example.com")["addresses"] == ["10.9.9.9"]
        assert dns_query(target, server.ip, "db.example.com", qtype=16)["rcode"] == 0  # TXT: forwarded
        session.recover(experiment)
        assert experiment.outcome == "recovered", experiment.summary()
        assert dns_query(target, server.ip, "db.example.com") == {"rcode": 0, "addresses": ["10.9.9.9"]}
        assert snapshot(target) == before
    finally:
        serving.kill()
        serving.wait()


def test_the_marker_applies_a_partition_and_the_report_names_peers_and_mechanism(pytester, network_bed):
    target, peer = network_bed.process(), network_bed.process()
    tcp_listener(peer, PORT)
    before = snapshot(target)
    pytester.makepyfile(test_user=f"""
        import subprocess, sys
        import pytest

        CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], {PORT}), timeout=1)"

        def connects():
            return subprocess.run(["nsenter", "--net={target.netns_path}", sys.executable, "-c", CONNECT,
                                   "{peer.ip}"], capture_output=True).returncode == 0

        @pytest.mark.chaos("network-partition", selector={target.selector!r},
                           target={{"selector": {peer.selector!r}}})
        def test_cut_off(chaos):
            assert not connects()
    """)
    result = pytester.runpytest_subprocess("-p", "chaos", "-rA")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*chaos network-partition mode=one: 1 target [[]{target.container_id}[]] with 1 peer "
                                 f"[[]{peer.container_id}[]] recovered*mechanism: iptables DROP in the target's "
                                 f"network namespace (cgroup v*); daemon: pytest-chaos-daemon *"])
    assert snapshot(target) == before
    assert tcp_connects(target, peer.ip, PORT)


RUNNER_KILLED_TEST = """
import time
import pytest

@pytest.mark.chaos("network-delay", selector={target!r}, latency="80ms", target={{"selector": {peer!r}}})
@pytest.mark.chaos("network-partition", selector={target!r}, external_targets=["{other}"])
def test_app(chaos):
    print("APPLIED", flush=True)
    time.sleep(600)
"""


def test_a_sigkilled_runner_leaves_no_rule_queue_or_program_behind(pytester, network_bed):
    target, peer, other = network_bed.process(), network_bed.process(), network_bed.process()
    udp_echo_server(peer, PORT)
    before = snapshot(target)
    pytester.makepyfile(test_user=RUNNER_KILLED_TEST.format(target=target.selector, peer=peer.selector,
                                                            other=other.ip))
    output = pytester.path / "pytest.out"
    with open(output, "wb") as out:
        runner = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "chaos", "-s", "test_user.py"],
                                  cwd=pytester.path, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b"APPLIED" in output.read_bytes() or runner.poll() is not None, "the faults to apply", 60)
        assert runner.poll() is None, output.read_text()
        assert udp_probe(target, peer.ip, PORT, count=5).median_rtt_ms >= 75
        runner.kill()
        runner.wait()
        # The runner's own daemon saw it die and recovered both on its way out.
        wait_for(lambda: snapshot(target) == before, "the target's namespace to be as before", 15)
    finally:
        runner.kill()
        runner.wait()
    assert udp_probe(target, peer.ip, PORT, count=5).median_rtt_ms < 20


def test_the_run_seed_repeats_each_packets_fate(start_daemon, network_bed):
    """--chaos-seed reaches the packet queue: the same seed drops the same packets (without it, two runs of
    1000 packets at 50% would drop the same number about one time in 25). netem draws from the kernel's own
    random numbers: where it makes the fault, a seed cannot repeat it."""
    daemon = start_daemon("--allow-pid-targets", "--network-emulation", "queue")
    target, peer = network_bed.process(), network_bed.process()
    received = []
    for _ in range(2):
        session = ChaosSession(LocalBackend(lambda: daemon.address), seed=4242)
        try:
            receiver = udp_receiver(peer, PORT)
            experiment = apply(session, "network-loss", target, loss="50", target=peers(peer))
            udp_send(target, peer.ip, PORT, 1000)
            received.append(receiver.result().received)
            session.recover(experiment)
        finally:
            session.close()
    assert received[0] == received[1]


@pytest.mark.parametrize("kind, params", [("network-delay", {"latency": "20ms"}), ("dns", {"action": "error"})],
                         ids=["queue", "responder"])
def test_a_fault_whose_program_is_frozen_with_its_paused_target_still_recovers(queue_session, network_bed, kind,
                                                                               params):
    """The daemon's programs run in the target's cgroups, so pausing the target freezes them too; under a v1
    freezer a SIGKILL then waits for the thaw. Recovering the fault meanwhile must still end its program
    (found by the soak: a network-corrupt whose lease ran out on a paused target failed its recovery)."""
    session = queue_session
    target, peer = network_bed.containerd(resolv_conf=f"nameserver {network_bed.gateway}\n"), network_bed.process()
    before = snapshot(target)
    extra = {"target": peers(peer)} if kind != "dns" else {}
    fault = apply(session, kind, target, **params, **extra)
    programs = [pid for pid in programs_of(target) if pid != target.pid]
    assert programs, "the fault runs a program in the target's cgroups"
    paused = apply(session, "container-pause", target)
    session.recover(fault)
    assert fault.outcome == "recovered", fault.summary()
    assert not [pid for pid in programs if os.path.exists(f"/proc/{pid}")], "its program outlived the recovery"
    session.recover(paused)
    assert snapshot(target) == before


def programs_of(target) -> list[int]:
    """The processes in the target's cgroup and below (v1: its freezer cgroup; v2: the daemon's programs run in a
    child of it), the target's own included."""
    membership = next(m for m in procfs.read_cgroups(target.pid) if "freezer" in m.controllers or m.v2)
    found = []
    for directory, _, _ in os.walk(procfs.cgroup_dir(membership, procfs.cgroup_mounts())):
        with open(os.path.join(directory, "cgroup.procs")) as f:
            found += [int(line) for line in f if line.strip()]
    return found
