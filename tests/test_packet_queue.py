"""The nfnetlink_queue program (pytest_chaos_daemon.programs.packet_queue) on real traffic.

Each test takes two targets of a network bed of its own (tests/support/network_bed.py,
IPv4 and IPv6): ``a`` (the sender) and ``b`` (a UDP echo server). The test
adds the NFQUEUE rule itself, starts the program in the namespace of the rule
and measures from outside it: replies counted by sequence number, round trips,
the receiver's /proc/net/snmp. Namespaces, rules and processes go in teardown.
The test process creates its sockets inside ``a`` (setns on its own thread, put
back at once), so no traffic touches the host's namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pathlib
import secrets
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from pytest_chaos_daemon.programs.packet_queue import MAX_HELD_BYTES, MAX_HELD_PACKETS, bound_queues, parse_args, queue_argv

from tests.support import programs
from tests.support.binomial import binomial_interval
from tests.support.network_bed import NetTarget, NetworkBed, netns_path, udp_echo_server, udp_probe, udp_send
from tests.support.programs import memory_kb, start_program, stop_program
from tests.support.targets import require

PROGRAM = [sys.executable, "-m", "pytest_chaos_daemon.programs.packet_queue"]
PORT = 7007
TCP_PORT = 7008
BIT_A = 0x10000
BIT_B = 0x20000
CLONE_NEWNET = 0x40000000
_SEQ = struct.Struct("!I")
# Round trips are timed by this test's process, which shares the machine's CPUs with the echo server,
# the programs and whatever else runs: now and then it, or a program, is scheduled late. So a test only
# checks what fails when the delay is wrong: no packet comes back sooner than the delay (against a
# baseline taken in the same test), and the median rise is the delay, give or take a fifth. How precise
# the delay is (percentiles, the worst case) is a figure: benchmarks/network_latency.py measures it.
def assert_delayed(rises: list[float], delay_ms: float) -> None:
    assert delay_ms - 0.5 <= min(rises), f"a packet came back {min(rises):.2f} ms late, sooner than {delay_ms} ms"
    median = statistics.median(rises)
    assert delay_ms - 0.5 <= median <= delay_ms * 1.2 + 2, f"median rise {median:.2f} ms for a {delay_ms} ms delay"

# Answers IPv4 and IPv6 alike (a dual-stack socket).
ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("::", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(data, peer)
"""

# Reads one TCP connection to its end; prints the bytes it got.
SINK = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
print("ready", flush=True)
conn, _ = s.accept()
total = 0
while chunk := conn.recv(1 << 20):
    total += len(chunk)
print(total, flush=True)
"""


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """This thread in namespace ``name`` for the block; sockets made there stay there."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns_path(name), os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and result.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result


def wait_line(process: subprocess.Popen[str], timeout: float = 15.0) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"{process.args} printed nothing within {timeout} s"
    return process.stdout.readline().strip()


def percentile(ordered: list[float], pct: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


class Probe:
    """What came back for one run of UDP datagrams: replies by sequence number, in arrival order."""

    def __init__(self, sent: int, send_errors: int, replies: dict[int, list[float]], order: list[int]) -> None:
        self.sent = sent
        self.send_errors = send_errors
        self.replies = replies  # seq -> round trips in ms, one per reply
        self.order = order

    @property
    def answered(self) -> int:
        return sum(1 for rtts in self.replies.values() if rtts)

    def first_rtts(self) -> list[float]:
        return [rtts[0] for rtts in self.replies.values() if rtts]


class Pair:
    """Two targets of an IPv6-enabled network bed (tests/support/network_bed.py), named by their namespaces:
    ``a`` sends, ``b`` runs a UDP echo server; all removed by ``close``."""

    def __init__(self) -> None:
        self.bed = NetworkBed(ipv6=True)
        try:
            sender, receiver = self.bed.process(name="queue-a"), self.bed.process(name="queue-b")
        except BaseException:
            self.bed.close()
            raise
        self.a, self.b = sender.netns, receiver.netns
        self.dev_a = self.dev_b = "eth0"
        self.addr_a, self.addr_b = sender.ip, receiver.ip
        self.addr6_a, self.addr6_b = sender.ip6, receiver.ip6
        self.processes: list[subprocess.Popen[str]] = []

    def open(self) -> None:
        echo = self.spawn(self.b, sys.executable, "-c", ECHO, str(PORT))
        assert wait_line(echo) == "ready"
        self.echo = echo

    def spawn(self, namespace: str, *argv: str) -> subprocess.Popen[str]:
        # nsenter execs argv: the pid is the program's own.
        process = subprocess.Popen(["nsenter", f"--net={netns_path(namespace)}", *argv], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        self.processes.append(process)
        return process

    def iptables(self, namespace: str, *rule: str, v6: bool = False) -> None:
        run("nsenter", f"--net={netns_path(namespace)}", "ip6tables" if v6 else "iptables", "-w", "-t", "mangle", *rule)

    def egress_rule(self, queue: int, bit: int, *match: str, v6: bool = False) -> None:
        self.iptables(self.a, "-A", "POSTROUTING", "-o", self.dev_a, *match, "-m", "mark", "!", "--mark",
                      f"{bit:#x}/{bit:#x}", "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass", v6=v6)

    def rule(self, hook: str, queue: int, bit: int, v6: bool = False, protocol: str = "udp") -> str:
        """Queue the traffic from ``a`` to ``b``, on ``a``'s egress or ``b``'s ingress; returns the namespace
        the program must run in."""
        if hook == "egress":
            self.egress_rule(queue, bit, "-p", protocol, v6=v6)
            return self.a
        self.iptables(self.b, "-A", "PREROUTING", "-i", self.dev_b, "-p", protocol, "-m", "mark", "!", "--mark",
                      f"{bit:#x}/{bit:#x}", "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass", v6=v6)
        return self.b

    def tcp_transfer(self, seconds: float = 1.0) -> float:
        """Mbit/s of one TCP connection from ``a`` to a sink in ``b``, sending for ``seconds``."""
        sink = self.spawn(self.b, sys.executable, "-c", SINK, str(TCP_PORT))
        assert wait_line(sink) == "ready"
        with in_netns(self.a):
            sock = socket.create_connection((self.addr_b, TCP_PORT), timeout=10)
        try:
            chunk = b"x" * (1 << 16)
            start = time.monotonic()
            while time.monotonic() < start + seconds:
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
            total = int(wait_line(sink, 30))
            return total * 8 / (time.monotonic() - start) / 1e6
        finally:
            sock.close()

    def start_queue(self, namespace: str, *args: str) -> subprocess.Popen[str]:
        process = self.spawn(namespace, *PROGRAM, *args)
        line = wait_line(process)
        assert line == "ready", f"{line!r}; stderr: {process.stderr.read() if process.poll() is not None else ''}"
        return process

    def stop_queue(self, process: subprocess.Popen[str]) -> dict[str, int]:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
        assert process.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])

    def udp_counters(self, namespace: str, v6: bool = False) -> dict[str, int]:
        """The namespace's UDP counters (InErrors, InCsumErrors, ...) from /proc/net/snmp or snmp6."""
        if v6:
            with in_netns(namespace), open("/proc/thread-self/net/snmp6") as f:
                pairs = [line.split() for line in f if line.startswith("Udp6")]
            return {key.removeprefix("Udp6"): int(value) for key, value in pairs}
        with in_netns(namespace), open("/proc/thread-self/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        return {key: int(value) for key, value in zip(rows[0][1:], rows[1][1:], strict=False)}

    def queues(self, namespace: str) -> set[int]:
        with in_netns(namespace):
            return bound_queues("/proc/thread-self/net")

    def udp_socket(self, v6: bool = False) -> socket.socket:
        with in_netns(self.a):
            sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.connect((self.addr6_b if v6 else self.addr_b, PORT))
        sock.setblocking(False)
        return sock

    def probe(self, count: int, interval: float, wait: float = 0.3, size: int = 64, v6: bool = False) -> Probe:
        """Send ``count`` datagrams ``interval`` s apart to the echo server; collect replies until ``wait``
        s after the last one."""
        sock = self.udp_socket(v6)
        sent_at: dict[int, float] = {}
        replies: dict[int, list[float]] = {}
        order: list[int] = []
        errors = 0
        start = time.monotonic()
        seq = 0
        try:
            while True:
                now = time.monotonic()
                if seq < count and now >= start + seq * interval:
                    sent_at[seq] = time.monotonic()
                    try:
                        sock.send(_SEQ.pack(seq).ljust(size, b"x"))
                    except OSError:
                        errors += 1
                    replies[seq] = []
                    seq += 1
                    continue
                deadline = start + seq * interval if seq < count else start + (count - 1) * interval + wait
                if now >= deadline and seq >= count:
                    break
                readable, _, _ = select.select([sock], [], [], max(0.0, deadline - now))
                if readable:
                    while True:
                        try:
                            data = sock.recv(65535)
                        except BlockingIOError:
                            break
                        arrived = time.monotonic()
                        number = _SEQ.unpack_from(data)[0]
                        replies[number].append((arrived - sent_at[number]) * 1000)
                        order.append(number)
        finally:
            sock.close()
        return Probe(count, errors, replies, order)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)
        self.bed.close()  # the namespaces, with their rules; it checks from outside that nothing is left


@pytest.fixture
def pair() -> Iterator[Pair]:
    for tool in ("ip", "iptables", "ip6tables"):
        require(shutil.which(tool) is not None, tool)
    require(os.path.exists("/proc/net/netfilter/nfnetlink_queue")
            or (shutil.which("modprobe") is not None
                and run("modprobe", "nfnetlink_queue", check=False).returncode == 0), "nfnetlink_queue kernel module")
    network = Pair()
    try:
        network.open()
        yield network
    finally:
        network.close()


def baseline_median(pair: Pair) -> float:
    return statistics.median(pair.probe(40, 0.005, wait=0.1).first_rtts())


# --- options -----------------------------------------------------------------


@pytest.mark.parametrize(("args", "option"), [
    (["--mark-bit", "0x10000"], "--queue"),
    (["--queue", "70000", "--mark-bit", "0x10000"], "--queue"),
    (["--queue", "x", "--mark-bit", "0x10000"], "--queue"),
    (["--queue", "1", "--mark-bit", "0x30000"], "--mark-bit"),
    (["--queue", "1", "--mark-bit", "0"], "--mark-bit"),
    (["--queue", "1", "--mark-bit", "0x100000000"], "--mark-bit"),
    (["--queue", "1", "--mark-bit", "0x1", "--loss", "101"], "--loss"),
    (["--queue", "1", "--mark-bit", "0x1", "--loss", "nan"], "--loss"),
    (["--queue", "1", "--mark-bit", "0x1", "--delay-ms", "-1"], "--delay-ms"),
    (["--queue", "1", "--mark-bit", "0x1", "--delay-ms", "5", "--jitter-ms", "-2"], "--jitter-ms"),
    (["--queue", "1", "--mark-bit", "0x1", "--reorder", "50"], "--reorder"),
    (["--queue", "1", "--mark-bit", "0x1", "--duplicate", "-5"], "--duplicate"),
    (["--queue", "1", "--mark-bit", "0x1", "--corrupt", "200"], "--corrupt"),
    (["--queue", "1", "--mark-bit", "0x1", "--hook", "forward"], "--hook"),
    (["--queue", "1", "--mark-bit", "0x1", "--resend"], "--resend"),
    (["--queue", "1", "--mark-bit", "0x1", "--delay-ms", "5", "--hook", "ingress", "--resend"], "--resend"),
])
def test_bad_options_exit_nonzero_naming_the_option(args: list[str], option: str) -> None:
    result = subprocess.run([*PROGRAM, *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert option in result.stderr, result.stderr
    assert result.stdout == ""


def test_queue_argv_round_trips_through_the_parser() -> None:
    argv = queue_argv(7, 0x10000, hook="ingress", loss=12.5, delay_ms=100, jitter_ms=10, reorder=25,
                      duplicate=1, corrupt=0.1)
    options = parse_args(argv)
    assert (options.queue, options.mark_bit, options.hook) == (7, 0x10000, "ingress")
    assert (options.loss, options.delay_ms, options.jitter_ms, options.reorder, options.duplicate,
            options.corrupt) == (12.5, 100, 10, 25, 1, 0.1)
    assert queue_argv(0, 1, hook="egress") == ["--queue", "0", "--mark-bit", "0x1", "--hook", "egress"]
    assert queue_argv(0, 1, hook="egress", delay_ms=5, resend=True)[-1] == "--resend"
    for bad in ({"loss": 101}, {"delay_ms": -1}, {"reorder": 10}, {"hook": "sideways"}, {"resend": True},
                {"hook": "ingress", "delay_ms": 5, "resend": True}):
        with pytest.raises(ValueError):
            queue_argv(1, 0x10000, **{"hook": "egress", **bad})
    with pytest.raises(ValueError, match="--mark-bit"):
        queue_argv(1, 0x3, hook="egress")


def test_bound_queues_parses_the_proc_file(tmp_path: pathlib.Path) -> None:
    assert bound_queues(str(tmp_path)) == set()
    (tmp_path / "netfilter").mkdir()
    (tmp_path / "netfilter" / "nfnetlink_queue").write_text(
        "    3  12345     0 2 65531     0     0        7  1\n"
        "65535 -4000      2 1 65531     0     0       42  1\n")
    assert bound_queues(str(tmp_path)) == {3, 65535}


# --- faults on real traffic ----------------------------------------------------


@pytest.mark.needs_root
@pytest.mark.parametrize("hook", ["egress", "ingress"])
def test_loss_rate_is_binomial(pair: Pair, hook: str) -> None:
    namespace = pair.rule(hook, 1, BIT_A)
    program = pair.start_queue(namespace, "--queue", "1", "--mark-bit", hex(BIT_A), "--hook", hook, "--loss", "30",
                               "--seed", "1")
    assert 1 in pair.queues(namespace)
    probe = pair.probe(600, 0.001)
    counters = pair.stop_queue(program)
    lost = probe.sent - probe.answered
    low, high = binomial_interval(probe.sent, 0.30)
    print(f"loss ({hook}): {lost}/{probe.sent} = {lost / probe.sent:.3f}, 99% interval [{low}, {high}]; {counters}")
    assert probe.send_errors == 0  # a verdict drops silently, unlike an iptables DROP on egress
    assert low <= lost <= high
    assert counters["seen"] == probe.sent and counters["dropped"] == lost and counters["errors"] == 0
    assert 1 not in pair.queues(namespace)


@pytest.mark.needs_root
@pytest.mark.parametrize("hook", ["egress", "ingress"])
def test_delay_with_jitter_raises_the_round_trip(pair: Pair, hook: str) -> None:
    base = baseline_median(pair)
    namespace = pair.rule(hook, 1, BIT_A)
    program = pair.start_queue(namespace, "--queue", "1", "--mark-bit", hex(BIT_A), "--hook", hook,
                               "--delay-ms", "100", "--jitter-ms", "10", "--seed", "2")
    probe = pair.probe(100, 0.005, wait=0.3)
    counters = pair.stop_queue(program)
    rises = sorted(rtt - base for rtt in probe.first_rtts())
    median = statistics.median(rises)
    print(f"delay ({hook}): baseline {base:.3f} ms; rise median {median:.2f} ms, min {rises[0]:.2f}, "
          f"max {rises[-1]:.2f}; {counters}")
    assert probe.answered == probe.sent == counters["delayed"]
    assert 95 <= median <= 115
    # Jitter keeps every delay at 90 ms or more.
    assert 89.5 <= rises[0]


@pytest.mark.needs_root
def test_reorder_lets_some_packets_overtake(pair: Pair) -> None:
    base = baseline_median(pair)
    pair.rule("egress", 1, BIT_A)
    program = pair.start_queue(pair.a, "--queue", "1", "--mark-bit", hex(BIT_A), "--delay-ms", "50",
                               "--reorder", "50", "--seed", "3")
    probe = pair.probe(300, 0.002, wait=0.2)
    counters = pair.stop_queue(program)
    rises = [rtt - base for rtt in probe.first_rtts()]
    undelayed = sum(1 for rise in rises if rise < 25)
    late = sorted(rise for rise in rises if rise >= 25)
    overtaken = sum(1 for before, after in zip(probe.order, probe.order[1:], strict=False) if after < before)
    low, high = binomial_interval(probe.sent, 0.5)
    print(f"reorder: {undelayed}/{probe.sent} undelayed (99% interval [{low}, {high}]), {overtaken} "
          f"inversions, delayed ones rose {late[0]:.2f}..{late[-1]:.2f} ms (90th percentile "
          f"{percentile(late, 90):.2f}); {counters}")
    assert probe.answered == probe.sent
    assert low <= undelayed <= high and undelayed == counters["reordered"]
    assert overtaken > 0
    # Without jitter a held packet comes back 50 ms late, give or take the timing's own noise.
    assert_delayed(late, 50)


HOOK_AND_FAMILY = pytest.mark.parametrize(("hook", "v6"), [("egress", False), ("ingress", False),
                                                           ("egress", True), ("ingress", True)],
                                          ids=["egress-ipv4", "ingress-ipv4", "egress-ipv6", "ingress-ipv6"])


@pytest.mark.needs_root
@HOOK_AND_FAMILY
def test_duplicates_arrive_at_a_binomial_rate(pair: Pair, hook: str, v6: bool) -> None:
    namespace = pair.rule(hook, 1, BIT_A, v6=v6)
    program = pair.start_queue(namespace, "--queue", "1", "--mark-bit", hex(BIT_A), "--hook", hook,
                               "--duplicate", "50", "--seed", "4")
    probe = pair.probe(500, 0.001, v6=v6)
    counters = pair.stop_queue(program)
    copies = {seq: len(rtts) for seq, rtts in probe.replies.items()}
    doubled = sum(1 for n in copies.values() if n == 2)
    low, high = binomial_interval(probe.sent, 0.5)
    print(f"duplicate ({hook}, IPv{6 if v6 else 4}): {doubled}/{probe.sent} doubled, 99% interval [{low}, {high}]; "
          f"{counters}")
    assert set(copies.values()) <= {1, 2}
    assert low <= doubled <= high
    assert doubled == counters["duplicated"] and counters["errors"] == 0


@pytest.mark.needs_root
@HOOK_AND_FAMILY
def test_corrupted_packets_fail_the_receivers_checksum(pair: Pair, hook: str, v6: bool) -> None:
    namespace = pair.rule(hook, 1, BIT_A, v6=v6)
    before = pair.udp_counters(pair.b, v6)
    program = pair.start_queue(namespace, "--queue", "1", "--mark-bit", hex(BIT_A), "--hook", hook,
                               "--corrupt", "40", "--seed", "5")
    probe = pair.probe(500, 0.001, size=200, v6=v6)
    counters = pair.stop_queue(program)
    after = pair.udp_counters(pair.b, v6)
    bad = after["InCsumErrors"] - before["InCsumErrors"]
    errors = after["InErrors"] - before["InErrors"]
    low, high = binomial_interval(probe.sent, 0.6)
    print(f"corrupt ({hook}, IPv{6 if v6 else 4}): {probe.answered}/{probe.sent} answered (99% interval "
          f"[{low}, {high}]); receiver InCsumErrors +{bad}, InErrors +{errors}; {counters}")
    assert low <= probe.answered <= high
    assert counters["corrupted"] == probe.sent - probe.answered
    # Every corrupted datagram is an input error at the receiver; nearly all fail the checksum (a flip in
    # the UDP length field that makes it longer than the packet counts as a short packet instead).
    assert errors == probe.sent - probe.answered
    assert bad >= 0.95 * errors


@pytest.mark.needs_root
def test_two_queues_compose_on_the_same_traffic(pair: Pair) -> None:
    base = baseline_median(pair)
    pair.rule("egress", 1, BIT_A)
    pair.rule("egress", 2, BIT_B)
    delayer = pair.start_queue(pair.a, "--queue", "1", "--mark-bit", hex(BIT_A), "--delay-ms", "50", "--seed", "6")
    dropper = pair.start_queue(pair.a, "--queue", "2", "--mark-bit", hex(BIT_B), "--loss", "50", "--seed", "7")
    assert {1, 2} <= pair.queues(pair.a)
    probe = pair.probe(400, 0.002, wait=0.3)
    delays = pair.stop_queue(delayer)
    losses = pair.stop_queue(dropper)
    rises = sorted(rtt - base for rtt in probe.first_rtts())
    low, high = binomial_interval(probe.sent, 0.5)
    print(f"composition: {probe.answered}/{probe.sent} answered (99% interval [{low}, {high}]), rise "
          f"{rises[0]:.2f}..{rises[-1]:.2f} ms; delayer {delays}; dropper {losses}")
    assert delays["seen"] == delays["delayed"] == losses["seen"] == probe.sent
    assert low <= probe.answered <= high and losses["dropped"] == probe.sent - probe.answered
    assert_delayed(rises, 50)


@pytest.mark.needs_root
@pytest.mark.parametrize("resend", [False, True], ids=["held", "resend"])
def test_sigterm_releases_held_packets_at_once(pair: Pair, resend: bool) -> None:
    pair.rule("egress", 1, BIT_A)
    program = pair.start_queue(pair.a, "--queue", "1", "--mark-bit", hex(BIT_A), "--delay-ms", "5000",
                               *(["--resend"] if resend else []))
    sock = pair.udp_socket()
    try:
        for seq in range(20):
            sock.send(_SEQ.pack(seq))
        time.sleep(0.3)
        with pytest.raises(BlockingIOError):
            sock.recv(100)  # all held
        stopped = time.monotonic()
        counters = pair.stop_queue(program)
        got = set()
        while len(got) < 20 and time.monotonic() < stopped + 2:
            if select.select([sock], [], [], 0.1)[0]:
                got.add(_SEQ.unpack(sock.recv(100))[0])
        took = time.monotonic() - stopped
    finally:
        sock.close()
    print(f"sigterm: {len(got)}/20 released {took * 1000:.0f} ms after SIGTERM; {counters}")
    assert got == set(range(20))
    assert took < 2
    assert counters == {**counters, "seen": 20, "delayed": 20, "dropped": 0, "resent": 20 if resend else 0}
    assert set(counters) >= {"seen", "dropped", "delayed", "reordered", "duplicated", "corrupted"}
    assert 1 not in pair.queues(pair.a)
    assert pair.probe(20, 0.002).answered == 20  # unbound: the rule is bypassed


@pytest.mark.needs_root
def test_sigkill_leaves_traffic_flowing(pair: Pair) -> None:
    pair.rule("egress", 1, BIT_A)
    program = pair.start_queue(pair.a, "--queue", "1", "--mark-bit", hex(BIT_A), "--delay-ms", "30")
    delayed = pair.probe(20, 0.005)
    assert delayed.answered == 20 and min(delayed.first_rtts()) >= 29.5
    program.kill()
    program.wait(timeout=10)
    assert 1 not in pair.queues(pair.a)
    probe = pair.probe(200, 0.001)
    print(f"sigkill: {probe.answered}/{probe.sent} answered, median {statistics.median(probe.first_rtts()):.3f} ms")
    assert probe.answered == probe.sent and max(probe.first_rtts()) < 20


@pytest.mark.needs_root
def test_a_second_program_cannot_take_a_bound_queue(pair: Pair) -> None:
    pair.start_queue(pair.a, "--queue", "1", "--mark-bit", hex(BIT_A), "--delay-ms", "1")
    second = pair.spawn(pair.a, *PROGRAM, "--queue", "1", "--mark-bit", hex(BIT_B))
    out, err = second.communicate(timeout=15)
    assert second.returncode == 1 and "ready" not in out
    assert "already bound" in err


@pytest.mark.needs_root
@pytest.mark.parametrize("copy", ["meta", "packet"])
def test_tcp_throughput_and_gso(pair: Pair, copy: str) -> None:
    """GSO packets (larger than the MTU) reach the hook; the kernel segments them before queueing."""
    big = ("-m", "length", "--length", "1501:65535")

    def big_packets() -> int:
        out = run("nsenter", f"--net={netns_path(pair.a)}", "iptables", "-w", "-t", "mangle", "-L", "POSTROUTING", "-n", "-v",
                  "-x").stdout
        return sum(int(line.split()[0]) for line in out.splitlines() if "length 1501:65535" in line)

    # Counted after the queue's rule: a packet is counted there once the queue has let it through.
    plain = pair.tcp_transfer()
    pair.iptables(pair.a, "-A", "POSTROUTING", "-o", pair.dev_a, *big)
    pair.tcp_transfer()
    gso = big_packets()
    pair.iptables(pair.a, "-F", "POSTROUTING")
    pair.rule("egress", 1, BIT_A, protocol="tcp")
    pair.iptables(pair.a, "-A", "POSTROUTING", "-o", pair.dev_a, *big)
    # A corrupt chance that never fires asks for whole-packet copies.
    extra = ["--corrupt", "1e-12"] if copy == "packet" else []
    program = pair.start_queue(pair.a, "--queue", "1", "--mark-bit", hex(BIT_A), "--seed", "8", *extra)
    queued = pair.tcp_transfer()
    counters = pair.stop_queue(program)
    print(f"tcp ({copy} copy): {plain:.0f} Mbit/s plain, {queued:.0f} Mbit/s through the queue; {gso} packets "
          f"over the MTU without the queue, {big_packets()} with it; {counters}")
    assert gso > 0
    assert big_packets() == 0
    assert counters["seen"] > 0 and counters["truncated"] == 0 and counters["errors"] == 0
    if copy == "packet":  # only packet copies tell the program a packet's length
        assert 0 < counters["largest"] <= 1500
    assert queued > 10


@pytest.mark.needs_root
def test_a_packet_longer_than_the_copy_range_passes_whole(pair: Pair) -> None:
    """On lo (MTU 65536) a 65535-byte packet exceeds the kernel's copy range (65531): the program gets a
    truncated copy, must not hand it back, and neither duplicates nor corrupts it."""
    echo = pair.spawn(pair.a, sys.executable, "-c", ECHO, str(PORT))
    assert wait_line(echo) == "ready"
    pair.iptables(pair.a, "-A", "OUTPUT", "-o", "lo", "-p", "udp", "-m", "mark", "!", "--mark",
                  f"{BIT_A:#x}/{BIT_A:#x}", "-j", "NFQUEUE", "--queue-num", "1", "--queue-bypass")
    program = pair.start_queue(pair.a, "--queue", "1", "--mark-bit", hex(BIT_A), "--duplicate", "100",
                               "--corrupt", "100", "--seed", "9")
    payload = secrets.token_bytes(65507)  # the largest UDP payload IPv4 carries
    with in_netns(pair.a):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.connect(("127.0.0.1", PORT))
        sock.send(payload)
        sock.settimeout(2)
        assert sock.recv(65535) == payload
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(65535)  # no duplicate
    finally:
        sock.close()
    counters = pair.stop_queue(program)
    print(f"truncated: {counters}")
    assert counters["seen"] == counters["truncated"] == 2 and counters["largest"] == 65535
    assert counters["duplicated"] == counters["corrupted"] == counters["errors"] == 0


@pytest.mark.needs_root
@pytest.mark.parametrize("hook", ["egress", "ingress"])
def test_a_stopped_program_loses_nothing(pair: Pair, hook: str) -> None:
    """A program that falls behind (here: stopped). On ingress the queue fills and fail-open lets what does
    not fit pass untouched. On egress a held packet stays charged to the sending socket, so the sender runs
    out of send buffer long before the queue fills: it is held up, as behind a slow link. Either way
    nothing is lost."""
    namespace = pair.rule(hook, 1, BIT_A)
    program = pair.start_queue(namespace, "--queue", "1", "--mark-bit", hex(BIT_A), "--hook", hook, "--seed", "10")
    before = pair.udp_counters(pair.b)["NoPorts"]
    count, sent, refused = 20000, 0, 0
    with in_netns(pair.a):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        program.send_signal(signal.SIGSTOP)
        for seq in range(count):
            try:
                # Nothing listens: the receiver counts each as NoPorts. Unconnected, so its port unreachable
                # replies do not come back as errors.
                sock.sendto(_SEQ.pack(seq), (pair.addr_b, PORT + 1))
                sent += 1
            except BlockingIOError:
                refused += 1
        time.sleep(0.2)
        passed = pair.udp_counters(pair.b)["NoPorts"] - before
    finally:
        program.send_signal(signal.SIGCONT)
        sock.close()
    deadline = time.monotonic() + 10
    while pair.udp_counters(pair.b)["NoPorts"] - before < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    arrived = pair.udp_counters(pair.b)["NoPorts"] - before
    counters = pair.stop_queue(program)
    print(f"stopped program ({hook}): {sent}/{count} sent ({refused} refused: send buffer full), {passed} passed "
          f"while it was stopped, {arrived} in all; {counters}")
    assert arrived == sent
    assert counters["seen"] == sent - passed
    if hook == "ingress":
        assert refused == 0 and 0 < passed < sent
    else:
        assert refused > 0 and passed == 0


@pytest.mark.parametrize(("hook", "resend"), [("egress", False), ("egress", True), ("ingress", False)],
                         ids=["egress", "egress-resend", "ingress"])
@pytest.mark.needs_root
def test_tcp_through_a_delay(pair: Pair, hook: str, resend: bool) -> None:
    """A delayed packet held on egress stays charged to its TCP socket (netem orphans it; a queue cannot),
    so TCP small queues throttle the sender to a trickle. --resend frees it at once and sends a copy when
    due; on ingress the sender is not held back either."""
    namespace = pair.rule(hook, 1, BIT_A, protocol="tcp")
    program = pair.start_queue(namespace, "--queue", "1", "--mark-bit", hex(BIT_A), "--hook", hook,
                               "--delay-ms", "10", *(["--resend"] if resend else []))
    rate = pair.tcp_transfer()
    counters = pair.stop_queue(program)
    print(f"tcp through a 10 ms delay ({hook}{', resend' if resend else ''}): {rate:.1f} Mbit/s; {counters}")
    # The connection's last packets may come while the program stops: those go through at once.
    assert 0 <= counters["seen"] - counters["delayed"] <= 3 and counters["errors"] == 0
    assert counters["resent"] == (counters["delayed"] if resend else 0)
    assert rate > (0.5 if hook == "egress" and not resend else 100)


@pytest.mark.needs_root
def test_resend_delays_like_holding_and_holds_what_it_cannot_resend(pair: Pair) -> None:
    base = baseline_median(pair)
    pair.rule("egress", 1, BIT_A)
    program = pair.start_queue(pair.a, "--queue", "1", "--mark-bit", hex(BIT_A), "--delay-ms", "30", "--resend")
    small = pair.probe(100, 0.002, wait=0.2)
    # Longer than the MTU: IP fragments it after the hook, which a raw socket will not do; held instead.
    large = pair.probe(10, 0.002, wait=0.2, size=3000)
    counters = pair.stop_queue(program)
    rises = sorted(rtt - base for rtt in small.first_rtts() + large.first_rtts())
    print(f"resend: {small.answered}/100 small and {large.answered}/10 large answered, rise {rises[0]:.2f}.."
          f"{rises[-1]:.2f} ms (90th percentile {percentile(rises, 90):.2f}); {counters}")
    assert small.answered == 100 and large.answered == 10
    assert counters["resent"] == 100 and counters["delayed"] == 110 and counters["errors"] == 0
    assert_delayed(rises, 30)


# --- hostile input and floods, from a target on the network bed ---------------------------------------

BED_PORT = 7011
# The packet: the version nibble says 6 (IHL 5), in 20 bytes, to be followed by the IPv4 destination.
MALFORMED_HEAD = bytes([0x65]) + bytes(15)


def _queue_rule(target: NetTarget, peer: NetTarget, queue: int, bit: int) -> None:
    target.run("iptables", "-w", "-t", "mangle", "-A", "POSTROUTING", "-o", "eth0", "-d", peer.ip, "-m", "mark", "!",
               "--mark", f"{bit:#x}/{bit:#x}", "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass", check=True)


def _rule_packets(target: NetTarget, comment: str) -> int:
    out = target.run("iptables", "-w", "-t", "mangle", "-L", "POSTROUTING", "-n", "-v", "-x", check=True).stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if f"/* {comment} */" in line)


def test_a_malformed_packet_from_a_target_is_counted_and_the_queue_serves_on(network_bed: NetworkBed) -> None:
    """A target with CAP_NET_RAW sends, with IP_HDRINCL, a packet whose version nibble says 6 in 20 bytes.
    Its copy used to end the program when resent (--resend, as the daemon runs an egress delay), after which
    --queue-bypass let all traffic through unchanged. Now it is counted, passed on after its delay, and the
    queue goes on delaying and dropping."""
    target, peer = network_bed.process(name="target"), network_bed.process(name="peer")
    udp_echo_server(peer, BED_PORT)
    _queue_rule(target, peer, 1, BIT_A)
    # After the queue's rule: counts the packets it let through (its bit set) whose first nibble is 6.
    target.run("iptables", "-w", "-t", "mangle", "-A", "POSTROUTING", "-o", "eth0", "-d", peer.ip, "-m", "mark",
               "--mark", f"{BIT_A:#x}/{BIT_A:#x}", "-m", "u32", "--u32", "0>>28=6", "-m", "comment", "--comment",
               "version-6", check=True)
    program = start_program(target, "packet_queue", "--queue", "1", "--mark-bit", hex(BIT_A), "--delay-ms", "30",
                            "--resend", "--loss", "20", "--seed", "12")
    before = udp_probe(target, peer.ip, BED_PORT, count=100, interval_s=0.005, wait_s=0.5)
    malformed = (MALFORMED_HEAD + socket.inet_aton(peer.ip)).hex()
    assert programs.tool(target, programs.RAW_SEND, [malformed] * 5, peer.ip) == {"sent": 5, "errors": []}
    time.sleep(0.5)  # well past their 30 ms: when their copies would have been resent
    alive = program.poll() is None
    after = udp_probe(target, peer.ip, BED_PORT, count=100, interval_s=0.005, wait_s=0.5)
    counters, stderr = stop_program(program) if alive else ({}, program.communicate(timeout=10)[1])
    passed = _rule_packets(target, "version-6")
    low, high = binomial_interval(100, 0.2)
    print(f"malformed: alive {alive}; before {before.lost}/100 lost, min rtt {min(before.rtts_ms):.2f} ms; after "
          f"{after.lost}/100 lost, min rtt {min(after.rtts_ms):.2f} ms; {passed} passed with version 6; {counters}; "
          f"stderr {stderr.strip()}")
    assert alive, stderr
    # Every packet was seen; a malformed one not lost went through, after its delay, as it came.
    assert counters["seen"] == 205 and counters["errors"] == 0
    assert 1 <= counters["malformed"] <= 5 and passed == counters["malformed"]
    assert counters["dropped"] == before.lost + after.lost + 5 - counters["malformed"]
    assert counters["resent"] == before.received + after.received
    assert counters["delayed"] == counters["resent"] + counters["malformed"]
    # Still delaying (only the way out is delayed: a reply comes no sooner than 30 ms), still dropping.
    assert min(after.rtts_ms) >= 29.9 and low <= after.lost <= high
    assert "IP version 6 in an IPv4 hook" in stderr


def test_a_flood_through_resend_holds_no_more_than_the_bound(network_bed: NetworkBed) -> None:
    """Resent packets were held without limit (100,000 of them took 168 MB): now at most MAX_HELD_PACKETS and
    MAX_HELD_BYTES; beyond, packets are dropped and counted, as by a full netem queue."""
    target, peer = network_bed.process(name="target"), network_bed.process(name="peer")
    _queue_rule(target, peer, 1, BIT_A)
    # Held past the flood's end: everything held stays until SIGTERM releases it.
    program = start_program(target, "packet_queue", "--queue", "1", "--mark-bit", hex(BIT_A), "--delay-ms", "600000",
                            "--resend")
    idle = memory_kb(program.pid)["VmRSS"]
    size = 1400  # UDP payload: 1428-byte packets
    # In bursts the queue's socket buffer takes whole (fail-open would pass the rest untouched): every packet
    # reaches the program, 40,000 of them, to hold 57 MB.
    sent = sum(udp_send(target, peer.ip, BED_PORT, count=4000, interval_s=0, size=size) for _ in range(10))
    time.sleep(1)  # the queue reads what the kernel still holds for it
    peak = memory_kb(program.pid)["VmHWM"]
    counters, _ = stop_program(program)
    grown_mb = (peak - idle) / 1024
    print(f"resend flood: {sent} sent of {size + 28} bytes, idle {idle / 1024:.1f} MB, peak {peak / 1024:.1f} MB "
          f"(+{grown_mb:.1f}); {counters}")
    held = counters["delayed"]  # none was released before SIGTERM
    assert counters["overflowed"] > 0, "the flood did not reach the bound"
    assert held + counters["overflowed"] == counters["seen"]  # each one held, or dropped at the bound
    assert held <= MAX_HELD_PACKETS and held * (size + 28) <= MAX_HELD_BYTES
    assert counters["resent"] == held and counters["errors"] == 0
    # What it holds, and for each held packet a generous 1 KiB of bookkeeping, with 8 MiB to spare.
    assert peak - idle <= (MAX_HELD_BYTES + MAX_HELD_PACKETS * 1024 + (8 << 20)) / 1024
