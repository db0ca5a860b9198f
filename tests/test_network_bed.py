"""The network test bed: real targets on a private bridge, reaching each other, and tools that
measure traffic between them from outside the chaos daemon."""

from __future__ import annotations

import os
import shutil

import pytest

from pytest_chaos.backends.local import LocalBackend
from tests.support import network_bed as bed_module
from tests.support.network_bed import (
    NetTarget,
    NetworkBed,
    forward_may_drop,
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
from tests.support.targets import CONTAINERD_NAMESPACE, CONTAINERD_SOCKET, DOCKER_SOCKET, require, run

ECHO_PORT = 7007
TCP_PORT = 7008
SINK_PORT = 7009
WEB = {"app": "network-bed-web"}
NF_CALL_IPTABLES = "/proc/sys/net/bridge/bridge-nf-call-iptables"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def netns_inode(target: NetTarget) -> int:
    return os.stat(target.netns_path).st_ino


def test_processes_a_container_and_the_host_reach_each_other(network_bed):
    a = network_bed.process(name="a")
    b = network_bed.process(name="b")
    c = network_bed.containerd(name="c")
    host = network_bed.host

    assert (a.container_id, a.selector) == (f"pid://{a.pid}", {"pids": [a.pid]})
    container = c.container_id.removeprefix("containerd://")
    assert c.selector == {"containers": [container]}
    assert len({netns_inode(t) for t in (a, b, c, host)}) == 4
    assert a.run("ip", "-o", "-4", "addr", "show", "dev", "eth0", check=True).stdout.split()[3] == f"{a.ip}/24"
    assert f"default via {network_bed.gateway} dev eth0" in c.run("ip", "route", check=True).stdout

    everyone = (a, b, c, host)
    for target in everyone:
        udp_echo_server(target, ECHO_PORT)
        tcp_listener(target, TCP_PORT)
    for source in everyone:
        for dest in everyone:
            if dest is source:
                continue
            probe = udp_probe(source, dest.ip, ECHO_PORT, count=10, interval_s=0.002, wait_s=0.2)
            assert (probe.sent, probe.received, probe.duplicates, probe.malformed) == (10, 10, 0, 0), \
                f"{source.name} -> {dest.name}: {probe}"
            assert tcp_connects(source, dest.ip, TCP_PORT), f"{source.name} -> {dest.name}"
    assert not tcp_connects(a, b.ip, TCP_PORT + 100, timeout_s=1), "nothing listens there: the tool must say so"
    # The container's own busybox, not only host tools in its namespace, reaches a process.
    ping = run("ctr", "-n", CONTAINERD_NAMESPACE, "tasks", "exec", "--exec-id", "ping", container,
               "ping", "-c", "1", "-W", "2", a.ip, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr


def test_throughput_and_round_trip_baselines(network_bed):
    a, b = network_bed.process(name="a"), network_bed.process(name="b")
    udp_echo_server(b, ECHO_PORT)
    probe = udp_probe(a, b.ip, ECHO_PORT, count=100, interval_s=0.002, wait_s=0.3)
    free = tcp_throughput(a, b.ip, SINK_PORT, seconds=1.0)
    print(f"bed baseline: UDP RTT median {probe.median_rtt_ms:.3f} ms (max {max(probe.rtts_ms):.3f} ms), "
          f"TCP {free / 1e9:.2f} Gbit/s")
    assert probe.received == probe.sent == 100
    assert probe.median_rtt_ms < 20
    assert free > 100e6, "a veth pair through a bridge carries far more than 100 Mbit/s"

    # A rate limit inside the sender shows at the sink: the tool measures, it does not just count.
    limit = a.run("tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "20mbit", "burst", "32kb",
                  "latency", "100ms")
    require(limit.returncode == 0, f"the tbf qdisc ({limit.stderr.strip()})")
    limited = tcp_throughput(a, b.ip, SINK_PORT, seconds=1.0)
    print(f"bed under tbf 20mbit: {limited / 1e6:.1f} Mbit/s")
    assert 14e6 < limited < 26e6


def test_tools_see_loss_duplicates_and_partition(network_bed):
    a, b = network_bed.process(name="a"), network_bed.process(name="b")
    udp_echo_server(b, ECHO_PORT)

    drop_half = a.run("iptables", "-A", "INPUT", "-p", "udp", "-m", "statistic", "--mode", "nth",
                      "--every", "2", "--packet", "0", "-j", "DROP")
    require(drop_half.returncode == 0, f"iptables statistic match ({drop_half.stderr.strip()})")
    probe = udp_probe(a, b.ip, ECHO_PORT, count=40, interval_s=0.002, wait_s=0.3)
    assert (probe.sent, probe.received, probe.send_errors) == (40, 20, 0)
    a.run("iptables", "-F", "INPUT", check=True)

    twice = a.run("iptables", "-t", "mangle", "-A", "POSTROUTING", "-d", b.ip, "-p", "udp", "-j", "TEE",
                  "--gateway", b.ip)
    require(twice.returncode == 0, f"iptables TEE target ({twice.stderr.strip()})")
    receiver = udp_receiver(b, ECHO_PORT + 1)
    assert udp_send(a, b.ip, ECHO_PORT + 1, 50) == 50
    counts = receiver.result()
    assert (counts.received, counts.duplicates, counts.datagrams) == (50, 50, 100)
    before = snmp(b)
    probe = udp_probe(a, b.ip, ECHO_PORT, count=20, interval_s=0.002, wait_s=0.3)
    assert (probe.received, probe.duplicates) == (20, 20)
    assert snmp(b)["InDatagrams"] - before["InDatagrams"] == 40
    a.run("iptables", "-t", "mangle", "-F", check=True)

    tcp_listener(b, TCP_PORT)
    assert tcp_connects(a, b.ip, TCP_PORT)
    b.run("iptables", "-A", "INPUT", "-s", a.ip, "-j", "DROP", check=True)
    assert not tcp_connects(a, b.ip, TCP_PORT, timeout_s=0.5)
    assert udp_probe(a, b.ip, ECHO_PORT, count=5, interval_s=0.01, wait_s=0.2).received == 0
    assert tcp_throughput(a, b.ip, SINK_PORT, seconds=0.2, connect_timeout_s=0.5) == 0.0


def test_resolv_conf_is_the_targets_own(network_bed):
    with open("/etc/resolv.conf") as f:
        host_before = f.read()
    content = f"nameserver {network_bed.gateway}\nsearch bed.test\n"
    process = network_bed.process(resolv_conf=content)
    plain = network_bed.process()
    container = network_bed.containerd(resolv_conf=content)

    seen = run("nsenter", f"--target={process.pid}", "--mount", "cat", "/etc/resolv.conf").stdout
    assert seen == content
    with open(f"/proc/{container.pid}/root/etc/resolv.conf") as f:
        assert f.read() == content
    with open(f"/proc/{plain.pid}/root/etc/resolv.conf") as f:
        assert f.read() == host_before
    with open("/etc/resolv.conf") as f:
        assert f.read() == host_before
    assert f"## /etc/resolv.conf\n{content}" in snapshot(process)


def test_snapshot_is_stable_and_sees_rules_and_qdiscs(network_bed):
    a, c = network_bed.process(), network_bed.containerd()
    udp_echo_server(c, ECHO_PORT)
    first = snapshot(a)
    # Traffic moves counters, which a snapshot leaves out.
    assert udp_probe(a, c.ip, ECHO_PORT, count=20, interval_s=0.001, wait_s=0.2).received == 20
    assert snapshot(a) == first
    assert snapshot(c) == snapshot(c)
    assert "eth0 kind=veth mtu=1500 up" in first

    a.run("iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "9", "-j", "DROP", check=True)
    with_rule = snapshot(a)
    assert with_rule != first and "--dport 9 -j DROP" in with_rule
    assert snapshot(a) == with_rule

    a.run("tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "1gbit", "burst", "64kb", "latency", "10ms",
          check=True)
    with_qdisc = snapshot(a)
    assert with_qdisc != with_rule and "qdisc tbf" in with_qdisc

    a.run("tc", "qdisc", "add", "dev", "eth0", "ingress", check=True)
    assert snapshot(a) != with_qdisc
    a.run("iptables", "-F", "OUTPUT", check=True)
    a.run("tc", "qdisc", "del", "dev", "eth0", "root", check=True)
    a.run("tc", "qdisc", "del", "dev", "eth0", "ingress", check=True)
    # An emptied table stays listed (iptables-nft keeps it): compare without netfilter.
    assert without_netfilter(snapshot(a)) == without_netfilter(first)
    assert snapshot(c) == snapshot(c), "a fault in one target shows in no other"


def without_netfilter(text: str) -> str:
    return "\n## ".join(part for part in text.split("\n## ") if not part.split("\n")[0].endswith("tables-save"))


@pytest.mark.needs_root
def test_close_leaves_nothing_behind(monkeypatch):
    require(os.path.exists(CONTAINERD_SOCKET) and shutil.which("ctr") is not None, "containerd")
    # The rule a bed adds when the host's FORWARD chain may drop bridged traffic: force that branch,
    # it is this bed's own ACCEPT for its own bridge (only with br_netfilter on).
    monkeypatch.setattr(bed_module, "forward_may_drop", lambda rules: True)
    br_netfilter = False
    if os.path.exists(NF_CALL_IPTABLES):
        with open(NF_CALL_IPTABLES) as f:
            br_netfilter = f.read().strip() == "1"
    with pytest.raises(ZeroDivisionError):
        with NetworkBed() as bed:
            a, c = bed.process(), bed.containerd()
            tools = [udp_echo_server(a, ECHO_PORT), udp_receiver(c, ECHO_PORT), tcp_listener(bed.host, TCP_PORT)]
            forward = run("iptables", "-w", "-S", "FORWARD").stdout
            assert (f"pytest-chaos network bed {bed.bridge}" in forward) == br_netfilter
            container = c.container_id.removeprefix("containerd://")
            raise ZeroDivisionError  # a failing test: the bed is removed all the same

    assert not [line for line in run("ip", "-o", "link").stdout.splitlines() if bed.bridge in line]
    assert not [line for line in run("ip", "netns", "list").stdout.splitlines() if bed.bridge in line]
    assert bed.bridge not in run("iptables", "-w", "-S", "FORWARD").stdout
    assert str(bed.subnet.network_address) not in run("ip", "route", "show", "table", "all").stdout
    for pid in (a.pid, c.pid, *(tool.process.pid for tool in tools)):
        assert not alive(pid), f"process {pid} outlived the bed"
    containers = run("ctr", "-n", CONTAINERD_NAMESPACE, "containers", "ls", "-q", check=False).stdout.split()
    assert container not in containers
    assert bed.leftovers() == []


def test_forward_rule_only_when_the_chain_may_drop():
    assert not forward_may_drop(["-P FORWARD ACCEPT"])
    assert forward_may_drop(["-P FORWARD DROP"])
    assert forward_may_drop(["-P FORWARD ACCEPT", "-A FORWARD -j DOCKER-USER"])


@pytest.fixture(scope="module")
def web(module_network_bed):
    """A labelled container on a module's bed, so a marker's selector finds it."""
    return module_network_bed.containerd(labels=WEB)


def test_selectors_are_what_the_local_backend_takes(module_network_bed, web, start_daemon):
    process = module_network_bed.process()
    daemon = start_daemon("--allow-pid-targets", "--containerd-socket", CONTAINERD_SOCKET, "--containerd-namespace",
                          CONTAINERD_NAMESPACE, "--docker-socket", DOCKER_SOCKET)
    backend = LocalBackend(lambda: daemon.address)
    try:
        for target in (process, web):
            selector = backend.check_selector(target.selector, None)
            [[found]] = backend.candidates(selector, None)
            assert found.container_id == target.container_id
    finally:
        backend.close()


@pytest.mark.chaos("helloworld", selector={"labels": WEB}, mode="all")
def test_a_marker_selects_a_bed_container(web, chaos):
    [experiment] = chaos.experiments
    [target] = experiment.targets
    assert target.container_id == web.container_id
    assert target.pid == web.pid
