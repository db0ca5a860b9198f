"""The DNSChaos responder: pattern and resolv.conf helpers, then real queries between two
network namespaces.

The end-to-end tests build a private network: a "server" and a "target" namespace
joined by a veth pair on an unrouted 10.251.N.0/30. The server namespace runs a
test-owned authoritative DNS server (fixed A, AAAA and TXT answers). The target
namespace gets the REDIRECT rules and the responder, and a small client there
asks the server's address over UDP and TCP, as an application would. Nothing on
the host's network changes; every namespace, rule and process goes in teardown.
"""

from __future__ import annotations

import ipaddress
import json
import random
import selectors
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pytest_chaos_daemon.programs import dns_responder
from pytest_chaos_daemon.programs.dns_responder import (
    MAX_PENDING,
    MAX_PENDING_PER_CONNECTION,
    MAX_TCP_CONNECTIONS,
    TCP_RCVBUF,
    TCP_READ_SIZE,
    WRITE_HIGH_WATER,
    WRITE_TIMEOUT_S,
    check_pattern,
    parse_upstream,
    pattern_matches,
    redirect_rule_specs,
    resolv_conf_nameservers,
    responder_argv,
)

from tests.support import programs
from tests.support.network_bed import NetTarget, NetworkBed
from tests.support.programs import memory_kb, start_program, stop_program

A, AAAA, TXT = 1, 28, 16
SERVER_A = "10.9.9.9"
SERVER_AAAA = "fd00:9::9"
SERVER_TXT = "answered-by-the-upstream"
MARK = 0x2000
# The counters of load and of the responder's own failures, all 0 when neither happened.
NO_TROUBLE = {"overloaded": 0, "connections_refused": 0, "slow_readers": 0, "errors": 0}

# --- patterns -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "normalised"), [
    ("example.com", "example.com"),
    ("Example.COM.", "example.com"),
    ("example.*", "example.*"),
    ("example.*.", "example.*"),
    ("*", "*"),
    ("api-?.example.com", "api-?.example.com"),
    ("_sip._tcp.example.com", "_sip._tcp.example.com"),
    ("a" * 253, "a" * 253),
    ("a" * 253 + ".", "a" * 253),
])
def test_check_pattern_accepts_and_normalises(pattern: str, normalised: str) -> None:
    assert check_pattern(pattern) == normalised


@pytest.mark.parametrize(("pattern", "problem"), [
    ("", "is empty"),
    (".", "is empty"),
    ("*.example.com", "'*' is allowed only as the last character"),
    ("ex*ample.com", "'*' is allowed only as the last character"),
    ("**", "'*' is allowed only as the last character"),
    ("exa mple.com", "contains ' '"),
    ("example.com/path", "contains '/'"),
    ("ex[a]mple.com", "contains '[', ']'"),
    ("bücher.de", "contains 'ü'"),
    ("\u212aelvin.example", "contains '\u212a'"),  # the Kelvin sign lowercases to an ASCII 'k'
    ("a" * 254, "254 characters long, more than 253"),
    ("a..example.com", "empty label"),
    (".example.com", "empty label"),
])
def test_check_pattern_says_what_is_wrong_and_the_accepted_form(pattern: str, problem: str) -> None:
    with pytest.raises(ValueError) as raised:
        check_pattern(pattern)
    message = str(raised.value)
    assert problem in message
    assert "'?' stands for exactly one character" in message
    assert "allowed only as the last character" in message
    assert "at most 253 characters" in message


@pytest.mark.parametrize(("pattern", "name", "expected"), [
    ("example.com", "example.com", True),
    ("example.com", "EXAMPLE.com.", True),
    ("Example.Com.", "example.com", True),
    ("example.com", "www.example.com", False),
    ("example.com", "example.com.au", False),
    ("example.com", "example.co", False),
    ("example.*", "example.org", True),
    ("example.*", "example.co.uk.", True),
    ("example.*", "example.", False),  # that is the name "example": the pattern's '.' is missing
    ("example.*", "examples.org", False),
    ("example*", "example", True),  # '*' may match nothing
    ("example*", "examples.org", True),
    ("*", "anything.at.all", True),
    ("*", ".", True),
    ("q?.example.org", "q1.example.org", True),
    ("q?.example.org", "QX.example.org.", True),
    ("q?.example.org", "q.example.org", False),  # '?' is exactly one character
    ("q?.example.org", "q12.example.org", False),
    ("??", "ab", True),
    ("??", "abc", False),
    ("a?c*", "abcdef", True),
    ("a?c*", "ab", False),
])
def test_pattern_matches(pattern: str, name: str, expected: bool) -> None:
    assert pattern_matches(pattern, name) is expected


def test_pattern_matches_refuses_an_invalid_pattern() -> None:
    with pytest.raises(ValueError, match="only as the last character"):
        pattern_matches("*.example.com", "www.example.com")


# --- helpers for the daemon ---------------------------------------------------------------------


def test_resolv_conf_nameservers() -> None:
    text = textwrap.dedent("""\
        # Generated by a container runtime
        ; nameserver 192.0.2.99
        search default.svc.cluster.local svc.cluster.local
        nameserver 10.96.0.10
        nameserver   fd00:10::a  # trailing comment
        options ndots:5 timeout:1
        nameserver\t192.0.2.53
        nameserver fe80::1%eth0
        nameserver not-an-address
        nameserver
        nameservers 192.0.2.1
          nameserver 192.0.2.54
    """)
    assert resolv_conf_nameservers(text) == [
        "10.96.0.10", "fd00:10::a", "192.0.2.53", "fe80::1%eth0", "192.0.2.54"]
    assert resolv_conf_nameservers("") == []
    assert resolv_conf_nameservers("# nameserver 10.0.0.1\n") == []


@pytest.mark.parametrize(("text", "parsed"), [
    ("10.96.0.10", ("10.96.0.10", 53)),
    ("10.96.0.10:5353", ("10.96.0.10", 5353)),
    ("fd00::10", ("fd00::10", 53)),
    ("[fd00::10]:5353", ("fd00::10", 5353)),
    ("[fd00::10]", ("fd00::10", 53)),
])
def test_parse_upstream(text: str, parsed: tuple[str, int]) -> None:
    assert parse_upstream(text) == parsed


@pytest.mark.parametrize("text", ["", "dns.example.com", "10.96.0.10:", "10.96.0.10:0", "10.96.0.10:65536",
                                  "[fd00::10", "[fd00::10]5353", "10.96.0.300"])
def test_parse_upstream_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected IP\[:PORT\]"):
        parse_upstream(text)


def test_responder_argv_round_trips_through_the_command_line() -> None:
    argv = responder_argv(5353, 0x2000, "random", ["Example.COM.", "-dash.*"], ["10.96.0.10", "[fd00::a]:53"])
    assert argv[:6] == ["--port", "5353", "--mark", "0x2000", "--action", "random"]
    args = dns_responder.build_parser().parse_args(argv)
    assert (args.port, args.mark, args.action) == (5353, 0x2000, "random")
    assert args.patterns == ["example.com", "-dash.*"]  # a pattern starting with '-' is not an option
    assert args.upstreams == [("10.96.0.10", 53), ("fd00::a", 53)]
    assert dns_responder.build_parser().parse_args(responder_argv(53, 1, "error", [], ["10.0.0.1"])).patterns == []


@pytest.mark.parametrize(("arguments", "problem"), [
    ((0, MARK, "error", [], ["10.0.0.1"]), "port"),
    ((5353, 0, "error", [], ["10.0.0.1"]), "mark"),
    ((5353, 1 << 32, "error", [], ["10.0.0.1"]), "mark"),
    ((5353, MARK, "delay", [], ["10.0.0.1"]), "action"),
    ((5353, MARK, "error", ["*.example.com"], ["10.0.0.1"]), "last character"),
    ((5353, MARK, "error", [], []), "upstream"),
    ((5353, MARK, "error", [], ["dns.example.com"]), "not an IP address"),
])
def test_responder_argv_refuses_bad_input(arguments: tuple, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        responder_argv(*arguments)


def test_command_line_refuses_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, problem in [
        (["--port", "53", "--mark", "0x10", "--action", "error", "--upstream", "10.0.0.1", "--pattern", "*.a"],
         "only as the last character"),
        (["--port", "53", "--mark", "zz", "--action", "error", "--upstream", "10.0.0.1"], "hexadecimal"),
        (["--port", "53", "--mark", "0x10", "--action", "crash", "--upstream", "10.0.0.1"], "invalid choice"),
        (["--port", "53", "--mark", "0x10", "--action", "error"], "--upstream"),
    ]:
        with pytest.raises(SystemExit) as exited:
            dns_responder.main(argv)
        assert exited.value.code == 2
        assert problem in capsys.readouterr().err


def test_redirect_rule_specs() -> None:
    assert redirect_rule_specs(5353, 0x2000) == [
        ["-p", "udp", "--dport", "53", "-m", "mark", "!", "--mark", "0x2000/0x2000",
         "-j", "REDIRECT", "--to-ports", "5353"],
        ["-p", "tcp", "--dport", "53", "-m", "mark", "!", "--mark", "0x2000/0x2000",
         "-j", "REDIRECT", "--to-ports", "5353"],
    ]


# --- DNS messages without a network -------------------------------------------------------------


def _query(name: str, qtype: int, query_id: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.rstrip(".").split(".") if part)
    return struct.pack("!6H", query_id, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, 1)


def test_decode_name_follows_compression_pointers_and_refuses_loops() -> None:
    # "example.com" at 12, then "www" + a pointer to it at 25.
    message = b"\0" * 12 + b"\x07example\x03com\x00" + b"\x03www\xc0\x0c" + b"\0\x01\0\x01"
    labels, end = dns_responder.decode_name(message, 25)
    assert labels == (b"www", b"example", b"com") and end == 31
    with pytest.raises(dns_responder.MalformedMessage, match="backwards"):
        dns_responder.decode_name(b"\0" * 12 + b"\xc0\x0c", 12)  # points at itself
    with pytest.raises(dns_responder.MalformedMessage, match="past the end"):
        dns_responder.decode_name(b"\0" * 12 + b"\x07exam", 12)
    with pytest.raises(dns_responder.MalformedMessage, match="255"):
        dns_responder.decode_name(b"\0" * 12 + b"\x3f" + b"a" * 63 + (b"\x3f" + b"a" * 63) * 4 + b"\0", 12)


def test_decide_without_network() -> None:
    config = dns_responder.Config(port=5353, mark=MARK, action="random", patterns=("fault.example.com",),
                                  upstreams=(("10.0.0.1", 53),))
    responder = dns_responder.Responder(config)
    reply = responder.decide(_query("Fault.Example.com.", AAAA, 0xBEEF))
    assert isinstance(reply, bytes)
    query_id, flags, qd, an = struct.unpack_from("!4H", reply)
    assert (query_id, flags & 0x8000, flags & 0x0080, flags & 0xF, qd, an) == (0xBEEF, 0x8000, 0x0080, 0, 1, 1)
    assert reply[12:12 + len(_query("Fault.Example.com.", AAAA)) - 12] == _query("Fault.Example.com.", AAAA)[12:]
    assert responder.decide(_query("fault.example.com", TXT)) is dns_responder.FORWARD
    assert responder.decide(_query("other.example.com", A)) is dns_responder.FORWARD
    assert responder.decide(b"\x12") is None
    formerr = responder.decide(struct.pack("!6H", 7, 0x0100, 1, 0, 0, 0) + b"\x05abc")
    assert isinstance(formerr, bytes) and struct.unpack_from("!HH", formerr) == (7, 0x8000 | 0x0100 | 0x0080 | 1)
    assert responder.decide(struct.pack("!6H", 7, 0x8000, 1, 0, 0, 0)) is None  # a response: never answered
    assert responder.counters == {"queries": 6, "faulted": 1, "forwarded": 0, "malformed": 3,
                                  "upstream_failures": 0, **NO_TROUBLE}


# --- end to end, between two namespaces ---------------------------------------------------------

SERVER_SCRIPT = r'''
"""A tiny authoritative DNS server for the test: fixed answers for any name."""
import socket, struct, sys, threading, time

address, log_path = sys.argv[1], sys.argv[2]
ANSWERS = {1: socket.inet_aton(%(a)r), 28: socket.inet_pton(socket.AF_INET6, %(aaaa)r),
           16: bytes([len(%(txt)r)]) + %(txt)r.encode()}
lock = threading.Lock()
log = open(log_path, "a")


def answer(query, proto):
    query_id, flags = struct.unpack_from("!HH", query)
    position, labels = 12, []
    while query[position]:
        length = query[position]
        labels.append(query[position + 1:position + 1 + length].decode())
        position += 1 + length
    qtype, = struct.unpack_from("!H", query, position + 1)
    question = query[12:position + 5]
    with lock:
        log.write("%%s %%s %%d\n" %% (proto, ".".join(labels), qtype))
        log.flush()
    if labels and labels[0].lower() == "slow":
        time.sleep(1.5)
    rdata = ANSWERS.get(qtype)
    records = b"" if rdata is None else struct.pack("!HHHIH", 0xC00C, qtype, 1, 300, len(rdata)) + rdata
    flags = 0x8000 | 0x0400 | (flags & 0x0100)  # QR, AA, RD as asked
    return struct.pack("!6H", query_id, flags, 1, 1 if rdata else 0, 0, 0) + question + records


def serve_udp(sock):
    while True:
        query, client = sock.recvfrom(4096)
        threading.Thread(target=lambda q=query, c=client: sock.sendto(answer(q, "udp"), c), daemon=True).start()


def read_exactly(conn, size):
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def serve_tcp_connection(conn):
    with conn:
        while True:
            prefix = read_exactly(conn, 2)
            if prefix is None:
                return
            query = read_exactly(conn, struct.unpack("!H", prefix)[0])
            if query is None:
                return
            reply = answer(query, "tcp")
            # A zone transfer's answer spans messages: three of them here.
            copies = 3 if struct.unpack_from("!H", reply, len(reply) - 4)[0] == 252 else 1
            conn.sendall((struct.pack("!H", len(reply)) + reply) * copies)


def serve_tcp(listener):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_tcp_connection, args=(conn,), daemon=True).start()


udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((address, 53))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind((address, 53))
tcp.listen(64)
# A silent upstream on 5300: datagrams are read and never answered, connections never accepted.
silent_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
silent_udp.bind((address, 5300))
silent_tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
silent_tcp.bind((address, 5300))
silent_tcp.listen(64)
threading.Thread(target=serve_udp, args=(udp,), daemon=True).start()
threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
print("ready", flush=True)
while True:
    time.sleep(3600)
''' % {"a": SERVER_A, "aaaa": SERVER_AAAA, "txt": SERVER_TXT}  # noqa: UP031 (a script whose braces are its own)

CLIENT_SCRIPT = r'''
"""Sends DNS queries as an application in the target namespace would; prints the replies as JSON."""
import json, random, socket, struct, sys, threading, time

import dns.flags, dns.message, dns.rdatatype

request = json.loads(sys.argv[1])
server = request["server"]


def encode_query(name, qtype, query_id):
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".") if p)
    question = labels + b"\0" + struct.pack("!HH", qtype, 1)
    return struct.pack("!6H", query_id, 0x0100, 1, 0, 0, 0) + question, question


def decode_reply(reply, query_id, question):
    # dnspython decodes: an independent decoder, not the responder's own codec.
    message = dns.message.from_wire(reply)
    qd = struct.unpack_from("!H", reply, 4)[0]
    result = {"id_ok": message.id == query_id, "qr": bool(message.flags & dns.flags.QR),
              "ra": bool(message.flags & dns.flags.RA), "rcode": message.rcode(),
              "question_ok": qd == 1 and reply[12:12 + len(question)] == question, "answers": []}
    for rrset in message.answer:
        for rdata in rrset:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                data = rdata.address
            elif rrset.rdtype == dns.rdatatype.TXT:
                data = rdata.strings[0].decode()
            else:
                data = rdata.to_wire().hex()
            result["answers"].append({"type": int(rrset.rdtype), "ttl": rrset.ttl, "data": data})
    return result


def read_exactly(conn, size):
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def udp_exchange(message, port, timeout=3.0):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(message, (server, port))
        return sock.recv(65535)


def tcp_exchange(messages, port, timeout=3.0, expected=None):
    with socket.create_connection((server, port), timeout=timeout) as conn:
        conn.sendall(b"".join(struct.pack("!H", len(m)) + m for m in messages))
        replies = []
        for _ in range(expected or len(messages)):
            prefix = read_exactly(conn, 2)
            if prefix is None:
                break
            replies.append(read_exactly(conn, struct.unpack("!H", prefix)[0]))
        return replies


def run(spec):
    started = time.monotonic()
    port = spec.get("port", 53)
    try:
        if spec["kind"] == "raw":
            message = bytes.fromhex(spec["hex"])
            try:
                if spec["proto"] == "udp":
                    replies = [udp_exchange(message, port, timeout=1.0)]
                else:
                    replies = tcp_exchange([message], port, timeout=1.0)
            except socket.timeout:
                replies = []
            result = {"replies": [r.hex() for r in replies if r]}
        elif spec["kind"] == "pair":  # two queries on one TCP connection, as glibc sends A and AAAA
            queries = [encode_query(q["name"], q["qtype"], random.randrange(65536)) for q in spec["queries"]]
            replies = tcp_exchange([m for m, _ in queries], port)
            by_id = {struct.unpack_from("!H", r)[0]: r for r in replies}
            ids = [struct.unpack_from("!H", m)[0] for m, _ in queries]
            result = {"results": [decode_reply(by_id[struct.unpack_from("!H", m)[0]], struct.unpack_from("!H", m)[0], q)
                                  if struct.unpack_from("!H", m)[0] in by_id else {"error": "no reply"}
                                  for m, q in queries],
                      # Which query each reply answered, in the order the replies came.
                      "arrival": [ids.index(struct.unpack_from("!H", r)[0]) for r in replies
                                  if struct.unpack_from("!H", r)[0] in ids]}
        else:
            query_id = random.randrange(65536)
            message, question = encode_query(spec["name"], spec["qtype"], query_id)
            if spec["proto"] == "udp":
                reply = udp_exchange(message, port)
            else:
                replies = tcp_exchange([message], port, expected=spec.get("messages"))
                reply = replies[0]
            result = decode_reply(reply, query_id, question)
            if spec["proto"] == "tcp":
                result["messages"] = sum(1 for r in replies if r and r[:2] == message[:2])
    except OSError as error:
        result = {"error": repr(error)}
    result["elapsed"] = time.monotonic() - started
    return result


specs = request["specs"]
results = [None] * len(specs)
if request.get("parallel"):
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, run(specs[i]))) for i in range(len(specs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
else:
    results = [run(spec) for spec in specs]
print(json.dumps(results))
'''


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """One line of the process's stdout, or "" when it ends or stays silent."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return process.stdout.readline().strip()


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


class DnsNetwork:
    """Two targets of a network bed (tests/support/network_bed.py): the test's DNS server in one, the
    responder and a client in the other (the target)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.log_path = directory / "server.log"
        self.client_path = directory / "client.py"
        self.processes: list[subprocess.Popen[str]] = []
        self.bed = NetworkBed()
        try:
            self.target = self.bed.process(name="dns-target")
            self.server = self.bed.process(name="dns-server")
        except BaseException:
            self.bed.close()
            raise
        self.server_ip = self.server.ip

    def build(self) -> None:
        server_path = self.directory / "server.py"
        server_path.write_text(SERVER_SCRIPT)
        self.client_path.write_text(CLIENT_SCRIPT)
        self.log_path.touch()
        server = self.start(self.server, sys.executable, str(server_path), self.server_ip, str(self.log_path))
        if _read_line(server, 10) != "ready":
            raise RuntimeError(f"the test DNS server did not start: {server.stderr.read() if server.poll() else ''}")

    def start(self, target: NetTarget, *argv: str) -> subprocess.Popen[str]:
        """``argv`` in ``target``'s network namespace (nsenter execs it: the Popen's pid is the program's own)."""
        process = subprocess.Popen(["nsenter", f"--net={target.netns_path}", *argv], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        self.processes.append(process)
        return process

    def iptables(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = self.target.run("iptables", "-w", *argv, timeout=30)
        if check and result.returncode != 0:
            raise RuntimeError(f"iptables {' '.join(argv)} failed: {result.stderr.strip()}")
        return result

    def nat_output(self) -> str:
        return self.iptables("-t", "nat", "-S", "OUTPUT").stdout

    def ask(self, *specs: dict, parallel: bool = False) -> list[dict]:
        """Run the specs from the target namespace, to the server's address."""
        request = json.dumps({"server": self.server_ip, "specs": list(specs), "parallel": parallel})
        result = self.target.run(sys.executable, str(self.client_path), request, timeout=30)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def server_saw(self, since: int) -> list[str]:
        with open(self.log_path) as log:
            log.seek(since)
            return log.read().splitlines()

    def close(self) -> None:
        for process in self.processes:
            _stop(process)
        self.bed.close()  # its namespaces, with their rules and sockets; it checks nothing is left


@pytest.fixture(scope="module")
def dns_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsNetwork]:
    network = DnsNetwork(tmp_path_factory.mktemp("dns"))
    try:
        network.build()
        yield network
    finally:
        network.close()


class RunningResponder:
    def __init__(self, network: DnsNetwork, process: subprocess.Popen[str], rules: list[list[str]]) -> None:
        self.network = network
        self.process = process
        self.rules = rules

    def stop(self) -> dict[str, int]:
        """SIGTERM: it must exit 0 and print its counters."""
        self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=10)
        assert self.process.returncode == 0 and err == "", err
        return json.loads(out.strip().splitlines()[-1])

    def remove_rules(self) -> None:
        while self.rules:
            self.network.iptables("-t", "nat", "-D", "OUTPUT", *self.rules.pop(), check=False)


@pytest.fixture
def start_responder(dns_network: DnsNetwork) -> Iterator[Callable[..., RunningResponder]]:
    """Add the REDIRECT rules in the target namespace and start the responder there."""
    started: list[RunningResponder] = []

    def start(action: str, patterns: list[str], upstreams: list[str] | None = None,
              timeout: float | None = None) -> RunningResponder:
        port = random.randrange(20000, 60000)
        argv = responder_argv(port, MARK, action, patterns, upstreams or [dns_network.server_ip])
        if timeout is not None:
            argv += ["--timeout", str(timeout)]
        responder = RunningResponder(dns_network, None, [])  # type: ignore[arg-type]
        started.append(responder)
        for rule in redirect_rule_specs(port, MARK):
            responder.rules.append(rule)
            dns_network.iptables("-t", "nat", "-A", "OUTPUT", *rule)
        responder.process = dns_network.start(dns_network.target, sys.executable, "-m",
                                              "pytest_chaos_daemon.programs.dns_responder", *argv)
        line = _read_line(responder.process, 10)
        assert line == "ready", responder.process.stderr.read() if responder.process.poll() is not None else line
        return responder

    yield start
    for responder in started:
        if responder.process is not None:
            _stop(responder.process)
        responder.remove_rules()
    assert "REDIRECT" not in dns_network.nat_output()


def _q(name: str, qtype: int, proto: str) -> dict:
    return {"kind": "query", "name": name, "qtype": qtype, "proto": proto}


def _servfail(result: dict) -> bool:
    return (result.get("rcode") == 2 and result["id_ok"] and result["qr"] and result["ra"]
            and result["question_ok"] and result["answers"] == [])


def _server_answer(result: dict, qtype: int) -> bool:
    expected = {A: SERVER_A, AAAA: SERVER_AAAA, TXT: SERVER_TXT}[qtype]
    return (result.get("rcode") == 0 and result["id_ok"] and result["question_ok"]
            and [a["data"] for a in result["answers"]] == [expected] and result["answers"][0]["ttl"] == 300)


@pytest.mark.needs_root
def test_error_action_over_udp_and_tcp(dns_network: DnsNetwork, start_responder: Callable[..., RunningResponder]) -> None:
    responder = start_responder("error", ["fault.example.com", "wild.*", "q?.example.org"])
    assert "REDIRECT" in dns_network.nat_output()
    since = dns_network.log_size()
    cases = [  # (query, faulted?)
        (_q("fault.example.com", A, "udp"), True),
        (_q("FAULT.Example.COM.", AAAA, "tcp"), True),  # case and trailing dot do not matter
        (_q("fault.example.com", AAAA, "udp"), True),
        (_q("fault.example.com", TXT, "udp"), False),  # only A and AAAA are faulted
        (_q("fault.example.com", TXT, "tcp"), False),
        (_q("www.fault.example.com", A, "udp"), False),  # the whole name must match
        (_q("fault.example.com.evil", A, "tcp"), False),
        (_q("wild.anything.net", A, "udp"), True),  # '*' is any rest
        (_q("wild.a.b.c", AAAA, "tcp"), True),
        (_q("wildcard.net", A, "udp"), False),
        (_q("wild", A, "tcp"), False),
        (_q("q1.example.org", A, "udp"), True),  # '?' is exactly one character
        (_q("QZ.example.org", AAAA, "tcp"), True),
        (_q("q.example.org", A, "udp"), False),
        (_q("q12.example.org", A, "tcp"), False),
    ]
    results = dns_network.ask(*(spec for spec, _ in cases))
    for (spec, faulted), result in zip(cases, results, strict=False):
        if faulted:
            assert _servfail(result), (spec, result)
        else:
            assert _server_answer(result, spec["qtype"]), (spec, result)
    # glibc asks A and AAAA on one TCP connection: both answered there, one faulted, one not.
    pair = dns_network.ask({"kind": "pair", "queries": [{"name": "q9.example.org", "qtype": A},
                                                        {"name": "example.org", "qtype": AAAA}]})[0]["results"]
    assert _servfail(pair[0]) and _server_answer(pair[1], AAAA), pair
    # Faulted queries never reached the server; the rest reached it through the responder.
    seen = dns_network.server_saw(since)
    expected = [f"{spec['proto']} {spec['name'].rstrip('.')} {spec['qtype']}" for spec, faulted in cases if not faulted]
    assert seen == expected + [f"tcp example.org {AAAA}"]
    faulted = sum(1 for _, f in cases if f) + 1
    assert responder.stop() == {"queries": len(cases) + 2, "faulted": faulted, "forwarded": len(cases) + 2 - faulted,
                                "malformed": 0, "upstream_failures": 0, **NO_TROUBLE}


@pytest.mark.needs_root
@pytest.mark.parametrize("patterns", [[], ["*"]], ids=["no-pattern", "star"])
def test_random_action(dns_network: DnsNetwork, start_responder: Callable[..., RunningResponder],
                       patterns: list[str]) -> None:
    responder = start_responder("random", patterns)
    specs = [_q("service.example.com", A, "udp"), _q("service.example.com", A, "udp"),
             _q("other.example.net", A, "tcp"), _q("service.example.com", AAAA, "udp"),
             _q("service.example.com", AAAA, "tcp"), _q("service.example.com", TXT, "udp")]
    results = dns_network.ask(*specs)
    for result in results[:5]:
        assert result["rcode"] == 0 and result["id_ok"] and result["qr"] and result["ra"] and result["question_ok"]
        assert len(result["answers"]) == 1 and result["answers"][0]["ttl"] == 5, result
    ipv4 = [ipaddress.IPv4Address(r["answers"][0]["data"]) for r in results[:3]]
    ipv6 = [ipaddress.IPv6Address(r["answers"][0]["data"]) for r in results[3:5]]
    assert len(set(ipv4)) == 3 and len(set(ipv6)) == 2  # random each time
    assert ipaddress.IPv4Address(SERVER_A) not in ipv4 and ipaddress.IPv6Address(SERVER_AAAA) not in ipv6
    for address in ipv4:
        assert address.packed[0] not in (0, 127) and address.packed[0] < 224, address
    for address in ipv6:
        assert address in ipaddress.IPv6Network("2000::/3"), address
    assert _server_answer(results[5], TXT)  # only A and AAAA are faulted
    assert responder.stop()["faulted"] == 5


@pytest.mark.needs_root
def test_malformed_queries_never_crash_it(dns_network: DnsNetwork,
                                          start_responder: Callable[..., RunningResponder]) -> None:
    responder = start_responder("error", ["fault.example.com"])
    header = struct.pack("!6H", 0x4242, 0x0100, 1, 0, 0, 0)
    results = dns_network.ask(
        {"kind": "raw", "proto": "udp", "hex": "12"},  # shorter than a header: dropped
        {"kind": "raw", "proto": "udp", "hex": (header + b"\x07exam").hex()},  # truncated name: FORMERR
        {"kind": "raw", "proto": "udp", "hex": (header + b"\xc0\x0c\x00\x01\x00\x01").hex()},  # pointer loop
        {"kind": "raw", "proto": "udp", "hex": (header + b"\x40abc\x00\x00\x01\x00\x01").hex()},  # bad label type
        {"kind": "raw", "proto": "udp", "hex": struct.pack("!6H", 1, 0x8180, 0, 0, 0, 0).hex()},  # a response
        {"kind": "raw", "proto": "tcp", "hex": "0102030405"},  # dropped: the connection closes
        {"kind": "raw", "proto": "tcp", "hex": (header + b"\x07exam").hex()},
        _q("fault.example.com", A, "udp"),  # still serving, over both
        _q("fault.example.com", A, "tcp"),
    )
    assert results[0]["replies"] == [] and results[4]["replies"] == [] and results[5]["replies"] == []
    for result in (results[1], results[2], results[3], results[6]):
        reply = bytes.fromhex(result["replies"][0])
        assert struct.unpack_from("!HH", reply) == (0x4242, 0x8000 | 0x0100 | 0x0080 | 1), result  # FORMERR
    assert _servfail(results[7]) and _servfail(results[8])
    counters = responder.stop()
    assert counters["malformed"] == 7 and counters["faulted"] == 2


@pytest.mark.needs_root
def test_a_slow_upstream_answer_blocks_no_other_query(dns_network: DnsNetwork,
                                                      start_responder: Callable[..., RunningResponder]) -> None:
    # Patient with its upstream (the default 2 s is close to the slow answer's 1.5 s on a busy machine): the
    # test is about order, not time.
    responder = start_responder("error", ["fault.example.com"], timeout=30)
    # The server takes 1.5 s for names starting with "slow"; the rest must not wait for it: each is answered
    # before either slow one.
    results = dns_network.ask(_q("slow.example.net", A, "udp"), _q("slow.example.net", A, "tcp"),
                              _q("fast.example.net", A, "udp"), _q("fast.example.net", AAAA, "tcp"),
                              _q("fault.example.com", A, "udp"), parallel=True)
    assert _server_answer(results[0], A) and _server_answer(results[1], A)
    assert results[0]["elapsed"] >= 1.4 and results[1]["elapsed"] >= 1.4
    assert _server_answer(results[2], A) and _server_answer(results[3], AAAA) and _servfail(results[4])
    assert max(r["elapsed"] for r in results[2:]) < min(r["elapsed"] for r in results[:2]), results
    # Over one TCP connection too: the answer the responder makes itself does not wait behind the slow one.
    pair = dns_network.ask({"kind": "pair", "queries": [{"name": "slow.example.net", "qtype": A},
                                                        {"name": "fault.example.com", "qtype": A}]})[0]
    assert _server_answer(pair["results"][0], A) and _servfail(pair["results"][1])
    assert pair["arrival"] == [1, 0], pair
    assert responder.stop()["forwarded"] == 5


@pytest.mark.needs_root
def test_upstreams_are_tried_in_order(dns_network: DnsNetwork,
                                      start_responder: Callable[..., RunningResponder]) -> None:
    silent = f"{dns_network.server_ip}:5300"
    responder = start_responder("error", ["fault.example.com"], upstreams=[silent, dns_network.server_ip],
                                timeout=0.5)
    results = dns_network.ask(_q("next.example.net", A, "udp"), _q("next.example.net", TXT, "tcp"), parallel=True)
    assert _server_answer(results[0], A) and _server_answer(results[1], TXT)
    assert all(0.45 <= r["elapsed"] < 2.5 for r in results), results
    counters = responder.stop()
    assert counters["forwarded"] == 2 and counters["upstream_failures"] == 0
    responder.remove_rules()  # else they, first in the chain, send queries to its closed port
    # With no upstream answering, the client hears SERVFAIL, as from any forwarding resolver.
    responder = start_responder("error", ["fault.example.com"], upstreams=[silent], timeout=0.3)
    results = dns_network.ask(_q("lost.example.net", A, "udp"), _q("lost.example.net", A, "tcp"), parallel=True)
    assert _servfail(results[0]) and _servfail(results[1])
    assert responder.stop()["upstream_failures"] == 2


@pytest.mark.needs_root
def test_queries_reach_the_server_again_after_recovery(dns_network: DnsNetwork,
                                                       start_responder: Callable[..., RunningResponder]) -> None:
    responder = start_responder("error", ["*"])
    assert all(_servfail(r) for r in dns_network.ask(_q("after.example.com", A, "udp"),
                                                      _q("after.example.com", A, "tcp")))
    # A zone transfer is relayed whole: every message of it.
    transfer = dns_network.ask({**_q("example.com", 252, "tcp"), "messages": 3})[0]
    assert transfer["rcode"] == 0 and transfer["messages"] == 3, transfer
    # An idle TCP client does not hold up the stop.
    idle = dns_network.start(dns_network.target, sys.executable, "-c",
                             f"import socket, time; c = socket.create_connection(({dns_network.server_ip!r}, 53)); "
                             "print('connected', flush=True); time.sleep(60)")
    assert _read_line(idle, 10) == "connected"
    started = time.monotonic()
    counters = responder.stop()
    assert time.monotonic() - started < 3
    assert counters["queries"] == 3 and counters["faulted"] == 2 and counters["forwarded"] == 1
    responder.remove_rules()
    assert "REDIRECT" not in dns_network.nat_output()
    since = dns_network.log_size()
    results = dns_network.ask(_q("after.example.com", A, "udp"), _q("after.example.com", AAAA, "tcp"))
    assert _server_answer(results[0], A) and _server_answer(results[1], AAAA)
    assert dns_network.server_saw(since) == [f"udp after.example.com {A}", f"tcp after.example.com {AAAA}"]


# --- bounds, under floods from a target on the network bed ------------------------------------------------------

FLOOD_NAME = "www.example.net"  # forwarded upstream: these responders fault fault.example.com only
# A connection's buffers at most (the module's "Bounds"): the reader's own and one read into it, a read and one
# message being received, replies waiting and one more: 256 KiB.
CONNECTION_KB = (2 * TCP_READ_SIZE + 2 * TCP_RCVBUF + TCP_READ_SIZE + 65537 + WRITE_HIGH_WATER + 65537) // 1024
QUERY_KB = 64  # a query in flight, generously: its task, its upstream connection and its buffers
SLACK_KB = 8 << 10  # the interpreter's own allocations under load


def _flood_responder(target: NetTarget, upstream: str) -> tuple[subprocess.Popen[str], int]:
    """The responder in the target's namespace, upstream ``upstream`` (2 s each); no REDIRECT: the floods
    connect to it on 127.0.0.1 themselves."""
    port = random.randrange(20000, 60000)
    argv = responder_argv(port, MARK, "error", ["fault.example.com"], [upstream])
    return start_program(target, "dns_responder", *argv, "--timeout", "2"), port


def test_pipelined_queries_wait_for_room_and_the_responder_stays_small(network_bed: NetworkBed) -> None:
    """3.1 MB of queries pipelined on one connection to an upstream that never answers: the responder used
    to read them all at once, a task each (170 MB). Now it takes 16 at a time from the connection, and the
    rest wait, unread, in the client's socket."""
    target, upstream = network_bed.process(name="target"), network_bed.process(name="upstream")
    silent = programs.background(upstream, programs.SILENT_UPSTREAM, upstream.ip)
    responder, port = _flood_responder(target, upstream.ip)
    idle = memory_kb(responder.pid)["VmRSS"]
    started = time.monotonic()
    flood = programs.tool(target, programs.DNS_TCP_FLOOD, port, FLOOD_NAME, 3_100_000, 5.0)
    peak = memory_kb(responder.pid)["VmHWM"]
    counters, err = stop_program(responder)
    took = time.monotonic() - started
    seen = programs.finish(silent)
    print(f"pipelined flood: {flood}; upstream {seen}; idle {idle / 1024:.1f} MB, peak {peak / 1024:.1f} MB "
          f"in {took:.1f} s; {counters}")
    assert 0 < seen["most_at_once"] <= MAX_PENDING_PER_CONNECTION
    # Each query takes its 2 s at the silent upstream: a round of 16 every 2 s, one more round to spare.
    assert counters["queries"] <= MAX_PENDING_PER_CONNECTION * (took / 2 + 2)
    assert peak - idle <= CONNECTION_KB + MAX_PENDING_PER_CONNECTION * QUERY_KB + SLACK_KB and err == ""


def test_connections_past_the_bound_are_refused_and_queries_in_flight_are_bounded(network_bed: NetworkBed) -> None:
    target, upstream = network_bed.process(name="target"), network_bed.process(name="upstream")
    silent = programs.background(upstream, programs.SILENT_UPSTREAM, upstream.ip)
    responder, port = _flood_responder(target, upstream.ip)
    idle = memory_kb(responder.pid)["VmRSS"]
    extra = 44
    flood = programs.tool(target, programs.DNS_TCP_CONNECTIONS, port, FLOOD_NAME, MAX_TCP_CONNECTIONS + extra, 4.0)
    peak = memory_kb(responder.pid)["VmHWM"]
    counters, err = stop_program(responder)
    seen = programs.finish(silent)
    print(f"{MAX_TCP_CONNECTIONS + extra} connections: {flood}; upstream {seen}; idle {idle / 1024:.1f} MB, peak "
          f"{peak / 1024:.1f} MB; {counters}")
    assert counters["connections_refused"] == flood["closed_by_responder"] == extra
    # Many connections had queries out at once, never more than MAX_PENDING in all.
    assert MAX_PENDING_PER_CONNECTION < seen["most_at_once"] <= MAX_PENDING
    assert peak - idle <= MAX_TCP_CONNECTIONS * CONNECTION_KB + MAX_PENDING * QUERY_KB + SLACK_KB and err == ""


def test_a_client_that_does_not_read_a_transfer_is_cut_off(network_bed: NetworkBed) -> None:
    """A zone transfer relayed to a client that reads nothing: the responder used to write every message
    the upstream sent into its own memory. Now each waits for the client to read; after WRITE_TIMEOUT_S
    without reading the client is cut off and the transfer stops."""
    target, upstream = network_bed.process(name="target"), network_bed.process(name="upstream")
    server = programs.background(upstream, programs.ENDLESS_TRANSFER, upstream.ip, 256 << 20)
    responder, port = _flood_responder(target, upstream.ip)
    idle = memory_kb(responder.pid)["VmRSS"]
    client = programs.tool(target, programs.UNREAD_TRANSFER, port, "example.com", WRITE_TIMEOUT_S + 5)
    peak = memory_kb(responder.pid)["VmHWM"]
    counters, err = stop_program(responder)
    sent = sum(programs.finish(server)["sent"])
    # What the upstream got out sits in the sockets' buffers (their largest sizes here), not in the responder.
    with open("/proc/sys/net/ipv4/tcp_rmem") as rmem, open("/proc/sys/net/ipv4/tcp_wmem") as wmem:
        buffers = int(rmem.read().split()[2]) + int(wmem.read().split()[2])
    print(f"unread transfer: {client}; upstream sent {sent / 2**20:.1f} MiB (socket buffers {buffers / 2**20:.0f} "
          f"MiB); idle {idle / 1024:.1f} MB, peak {peak / 1024:.1f} MB; {counters}")
    assert client["closed_by_responder"] and counters["slow_readers"] == 1
    assert sent <= buffers + (1 << 20)
    assert peak - idle <= 2 * CONNECTION_KB + QUERY_KB + SLACK_KB and err == ""  # the client's and the upstream's
