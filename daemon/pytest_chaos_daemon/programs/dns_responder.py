"""DNSChaos without touching the target's resolv.conf: a faulting DNS responder.

Chaos Mesh points the target's ``/etc/resolv.conf`` at a patched CoreDNS and
restores it from a backup afterwards; a restarted container loses the backup
and keeps the chaos server. Here nothing in the target's filesystem changes:
the daemon runs this program as root inside the target's network namespace
and adds a port-53 REDIRECT there (``redirect_rule_specs``), so the target's
queries, to whichever server, reach this responder on ``127.0.0.1:PORT``.

For a query of type A or AAAA (class IN) whose name matches one of the
patterns (every name when there is none), the responder answers itself:
SERVFAIL (``--action error``) or one random address (``--action random``).
Every other query is relayed unchanged to the upstream servers, from sockets
carrying the firewall mark the REDIRECT rule skips, and the upstream's answer
comes back unchanged. Over UDP and TCP alike.

Run as ``python3 -m pytest_chaos_daemon.programs.dns_responder --help``. It prints
``ready`` once it listens and, on SIGTERM, one JSON line of counters.
Importing the module has no side effects: the pattern, resolv.conf and
command-line helpers are for the daemon too.

Malformed input. The target, or anyone who reaches it, sends any bytes. A
message that does not read as a query is counted (``malformed``) and answered
FORMERR when its header can be answered, else dropped; a TCP stream that breaks
its framing (a zero length, a message cut by the end of the stream) is counted
and closed. The parsers raise nothing but MalformedMessage. Should answering a
query fail all the same, it is counted in ``errors`` and reported on stderr: no
input ends the program, which would end the fault.

Bounds. At most MAX_TCP_CONNECTIONS (256) connections (more are closed at once,
``connections_refused``). A connection has at most MAX_PENDING_PER_CONNECTION
(16) queries read and not yet answered, and the responder at most MAX_PENDING
(512) queries in flight, of MAX_PENDING_BYTES (4 MiB), over UDP and TCP. Past
those a UDP query is dropped (``overloaded``; its client retries) and a TCP
connection is not read until one of its queries is done, so a client that
pipelines faster than it is answered waits in its own socket buffer. A reply,
and each message of a zone transfer, is written once the client has read what
waits beyond WRITE_HIGH_WATER (16 KiB); a client that has not for
WRITE_TIMEOUT_S (10 s) is cut off (``slow_readers``; reset, so the kernel
frees what waited too), and a transfer it asked for stops.

So a connection holds at most about 256 KiB: the reader's buffer (twice
TCP_READ_SIZE) and one read into it (at most the kernel's receive buffer,
twice TCP_RCVBUF), a read and one message being received, replies past
WRITE_HIGH_WATER and one message; 64 MiB over 256 connections at the very
worst. A query in flight holds its message (MAX_PENDING_BYTES in all) and,
relayed over TCP, an upstream connection with buffers of the same kinds.
Measured (``python3 -m benchmarks.program_memory``, 2 cores; an upstream that
never answers, 2 s a query): 3.1 MB of queries pipelined on one connection,
peak RSS 22.8 MB from 22.6 MB idle, 16 queries out at once (before the bounds:
49.6 MB, 3,592 at once, and growing with the flood); 300 connections
pipelining for 5 s, 45.3 MB, 512 out at once, 44 refused (130.5 MB, 4,096);
an endless zone transfer to a client that reads nothing, 22.8 MB, the client
cut off after 10 s (275.1 MB when the upstream stopped at 256 MiB).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import random
import signal
import socket
import string
import struct
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from ..api.contract import ASCII_LOWER, check_pattern

__all__ = [
    "check_pattern",
    "main",
    "parse_upstream",
    "pattern_matches",
    "redirect_rule_specs",
    "resolv_conf_nameservers",
    "responder_argv",
]

ACTIONS = ("error", "random")
LISTEN_ADDRESS = "127.0.0.1"
DNS_PORT = 53
RANDOM_TTL = 5  # short, so caches forget the fake address soon after recovery
DEFAULT_TIMEOUT_S = 2.0  # per upstream: two of them still fit glibc's 5 s per try

TYPE_A = 1
TYPE_AAAA = 28
TYPE_IXFR = 251
TYPE_AXFR = 252
CLASS_IN = 1
OPCODE_QUERY = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2

FLAG_QR = 0x8000
FLAG_RD = 0x0100
FLAG_RA = 0x0080
FLAG_CD = 0x0010

MAX_NAME_OCTETS = 255  # RFC 1035 2.3.4, on the wire
# What the responder holds (see "Bounds" above). Queries being answered or relayed, over UDP and TCP: past
# either bound a UDP query is dropped (its client retries, as after a lost datagram) and a TCP connection is
# not read until one finishes.
MAX_PENDING = 512
MAX_PENDING_BYTES = 4 << 20
MAX_PENDING_PER_CONNECTION = 16  # read and not yet answered on one TCP connection; RFC 7766 6.2.1.1 pipelining
MAX_TCP_CONNECTIONS = 256  # past it a new connection is closed at once (its client retries)
TCP_IDLE_TIMEOUT_S = 10.0
TCP_READ_SIZE = 16 << 10  # read from a connection at a time, and the reader's buffer limit (asyncio pauses at 2x)
# A TCP connection's kernel receive buffer, a client's or an upstream's (the kernel doubles it for its
# bookkeeping): what one of asyncio's reads can bring at most, and the window the peer is offered.
TCP_RCVBUF = 32 << 10
# Replies waiting for a client to read them: past this mark the next waits. A client that has not read them
# for WRITE_TIMEOUT_S is cut off.
WRITE_HIGH_WATER = 16 << 10
WRITE_TIMEOUT_S = 10.0

SO_MARK = getattr(socket, "SO_MARK", 36)  # 36 on Linux
_PLAIN_LABEL_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_")


# --- patterns -----------------------------------------------------------------------------------


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether ``name`` matches ``pattern`` as Chaos Mesh's DNSChaos matches it.

    Case-insensitive, a trailing dot ignored on both sides; ``?`` matches exactly one
    character; a final ``*`` matches any, possibly empty, rest; otherwise the whole name
    must match ("example.com" does not match "www.example.com").
    """
    return _matches_normalised(check_pattern(pattern), _normalise_name(name))


def _normalise_name(name: str) -> str:
    name = name.translate(ASCII_LOWER)
    return name[:-1] if name.endswith(".") else name


def _matches_normalised(pattern: str, name: str) -> bool:
    if pattern.endswith("*"):
        fixed = pattern[:-1]
        if len(name) < len(fixed):
            return False
        name = name[: len(fixed)]
    else:
        fixed = pattern
        if len(name) != len(fixed):
            return False
    return all(p == "?" or p == c for p, c in zip(fixed, name, strict=False))


# --- helpers for the daemon ---------------------------------------------------------------------


def resolv_conf_nameservers(text: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf, in order (IPv4 and IPv6 literals).

    Comment lines (``#`` or ``;``), other keywords and values that are not IP literals are
    ignored, as glibc ignores them. An IPv6 scope (``fe80::1%eth0``) is kept.
    """
    servers = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue  # comments start with '#' or ';', so they never read "nameserver"
        try:
            ipaddress.ip_address(fields[1])
        except ValueError:
            continue
        servers.append(fields[1])
    return servers


def parse_upstream(text: str) -> tuple[str, int]:
    """``IP``, ``IP:PORT``, ``IPv6`` or ``[IPv6]:PORT`` as (address, port); ValueError otherwise."""
    form = "expected IP[:PORT], e.g. 10.96.0.10, 10.96.0.10:53, fd00::10 or [fd00::10]:53"
    host, port_text = text, ""
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"upstream {text!r}: {form}")
        port_text = rest[1:] if rest else ""
        if rest and not port_text:
            raise ValueError(f"upstream {text!r} has an empty port; {form}")
    elif text.count(":") == 1:  # IPv4:PORT; a bare IPv6 address has more colons
        host, port_text = text.split(":")
        if not port_text:
            raise ValueError(f"upstream {text!r} has an empty port; {form}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"upstream {text!r} is not an IP address; {form}") from None
    port = DNS_PORT
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"upstream {text!r} has an invalid port; {form}")
        port = int(port_text)
    return host if "%" in host else str(address), port


def responder_argv(port: int, mark: int, action: str, patterns: list[str], upstreams: list[str]) -> list[str]:
    """The arguments after ``python3 -m pytest_chaos_daemon.programs.dns_responder``; ValueError on bad input,
    so the daemon refuses a request before it changes anything."""
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not between 1 and 65535")
    _check_mark(mark)
    if action not in ACTIONS:
        raise ValueError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
    if not upstreams:
        raise ValueError("no upstream DNS server: non-matching queries would have nowhere to go")
    argv = ["--port", str(port), "--mark", f"{mark:#x}", "--action", action]
    # "--opt=value": a value starting with '-' must not read as an option.
    argv += [f"--pattern={check_pattern(pattern)}" for pattern in patterns]
    for upstream in upstreams:
        parse_upstream(upstream)
        argv.append(f"--upstream={upstream}")
    return argv


def redirect_rule_specs(port: int, mark: int) -> list[list[str]]:
    """iptables rule specifications (after ``-t nat -A OUTPUT``) sending the namespace's port-53
    queries, UDP and TCP, to the responder; the responder's own marked packets pass."""
    _check_mark(mark)
    return [
        ["-p", protocol, "--dport", str(DNS_PORT), "-m", "mark", "!", "--mark", f"{mark:#x}/{mark:#x}",
         "-j", "REDIRECT", "--to-ports", str(port)]
        for protocol in ("udp", "tcp")
    ]


def _check_mark(mark: int) -> None:
    if not 1 <= mark <= 0xFFFFFFFF:
        raise ValueError(f"firewall mark {mark:#x} is not a non-zero 32-bit value")


# --- DNS messages -------------------------------------------------------------------------------


class MalformedMessage(ValueError):
    """A message that cannot be a DNS query, or a TCP stream that does not frame DNS messages."""


@dataclasses.dataclass(frozen=True)
class Header:
    id: int
    flags: int
    qdcount: int
    ancount: int
    nscount: int
    arcount: int

    SIZE = 12

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_QR)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @classmethod
    def decode(cls, message: bytes) -> Header:
        if len(message) < cls.SIZE:
            raise MalformedMessage(f"{len(message)} bytes, shorter than a DNS header")
        return cls(*struct.unpack_from("!6H", message))

    def encode(self) -> bytes:
        return struct.pack("!6H", self.id, self.flags, self.qdcount, self.ancount, self.nscount, self.arcount)


@dataclasses.dataclass(frozen=True)
class Question:
    labels: tuple[bytes, ...]  # as sent, case preserved
    qtype: int
    qclass: int

    @property
    def name(self) -> str:
        """The name in text form with a trailing dot; bytes outside letters, digits, '-' and '_'
        are escaped (\\DDD), so they can match a pattern only through '?' or '*'."""
        return "".join(_label_text(label) + "." for label in self.labels) or "."

    def encode(self) -> bytes:
        return encode_name(self.labels) + struct.pack("!HH", self.qtype, self.qclass)


def _label_text(label: bytes) -> str:
    return "".join(chr(b) if chr(b) in _PLAIN_LABEL_CHARACTERS else f"\\{b:03d}" for b in label)


def decode_name(message: bytes, offset: int) -> tuple[tuple[bytes, ...], int]:
    """The labels of the name at ``offset`` and the offset just after it, following
    compression pointers (RFC 1035 4.1.4); MalformedMessage on truncation, loops, bad labels."""
    labels: list[bytes] = []
    octets = 1
    end = None  # where the name ends in the message: after the first pointer, if any
    position = offset
    while True:
        if position >= len(message):
            raise MalformedMessage("name runs past the end of the message")
        length = message[position]
        if length & 0xC0 == 0xC0:
            if position + 1 >= len(message):
                raise MalformedMessage("truncated compression pointer")
            target = struct.unpack_from("!H", message, position)[0] & 0x3FFF
            if end is None:
                end = position + 2
            # Only backwards, to before where this name started following it: no loops.
            if target >= offset:
                raise MalformedMessage("compression pointer does not point backwards")
            offset = position = target
            continue
        if length & 0xC0:
            raise MalformedMessage(f"unsupported label type {length >> 6:#b}")
        position += 1
        if length == 0:
            break
        if position + length > len(message):
            raise MalformedMessage("label runs past the end of the message")
        octets += length + 1
        if octets > MAX_NAME_OCTETS:
            raise MalformedMessage("name longer than 255 octets")
        labels.append(message[position:position + length])
        position += length
    return tuple(labels), end if end is not None else position


def encode_name(labels: Sequence[bytes]) -> bytes:
    """A name without compression."""
    out = bytearray()
    for label in labels:
        if not 0 < len(label) < 64:
            raise ValueError(f"label of {len(label)} octets")
        out.append(len(label))
        out += label
    out.append(0)
    if len(out) > MAX_NAME_OCTETS:
        raise ValueError("name longer than 255 octets")
    return bytes(out)


def decode_question(message: bytes, offset: int = Header.SIZE) -> Question:
    labels, offset = decode_name(message, offset)
    if offset + 4 > len(message):
        raise MalformedMessage("question ends before its type and class")
    qtype, qclass = struct.unpack_from("!HH", message, offset)
    return Question(labels, qtype, qclass)


def build_response(header: Header, question: Question | None, rcode: int, answers: Sequence[bytes] = ()) -> bytes:
    """A reply to ``header``'s query: same id, opcode, RD and CD, with QR and RA set."""
    flags = FLAG_QR | FLAG_RA | (header.flags & (0x7800 | FLAG_RD | FLAG_CD)) | rcode
    reply = Header(header.id, flags, 1 if question else 0, len(answers), 0, 0).encode()
    if question is not None:
        reply += question.encode()
    return reply + b"".join(answers)


def address_record(qtype: int, address: bytes, ttl: int = RANDOM_TTL) -> bytes:
    """An answer RR for the (only) question, its name a pointer to the question's at offset 12."""
    return struct.pack("!HHHIH", 0xC000 | Header.SIZE, qtype, CLASS_IN, ttl, len(address)) + address


def random_address(qtype: int, rng: random.Random) -> bytes:
    """A random unicast address: IPv4 outside 0/8, 127/8 and 224.0.0.0 and above (multicast, reserved);
    IPv6 from 2000::/3 (global unicast), so never loopback, unspecified or multicast."""
    if qtype == TYPE_A:
        first = rng.choice([n for n in range(1, 224) if n != 127])
        return bytes([first, rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)])
    return bytes([rng.randrange(0x20, 0x40)]) + rng.randbytes(15)


class FrameBuffer:
    """DNS messages out of a TCP byte stream, each after its two-byte length (RFC 1035 4.2.2); no I/O.

    Bytes go in with ``feed`` as they come; ``next_message`` hands out one whole message at a time, so
    the caller decides when to take the next and the buffer never holds more than what was fed.
    """

    def __init__(self) -> None:
        self._data = bytearray()

    def __len__(self) -> int:
        """Bytes fed and not yet handed out as a message."""
        return len(self._data)

    def feed(self, data: bytes) -> None:
        self._data += data

    def next_message(self) -> bytes | None:
        """The next whole message, or None until more bytes come. MalformedMessage for a zero length: no DNS
        message is empty, and nothing after it can be trusted to be framed."""
        if len(self._data) < 2:
            return None
        length = self._data[0] << 8 | self._data[1]
        if length == 0:
            raise MalformedMessage("zero-length message on a TCP connection")
        if len(self._data) < 2 + length:
            return None
        message = bytes(self._data[2:2 + length])
        del self._data[:2 + length]
        return message


def frame(message: bytes) -> bytes:
    """``message`` with its TCP length prefix; ValueError when it is longer than a prefix can say."""
    if len(message) > 0xFFFF:
        raise ValueError(f"a DNS message of {len(message)} bytes does not fit TCP framing (65535 at most)")
    return struct.pack("!H", len(message)) + message


# --- the responder ------------------------------------------------------------------------------


class Budget:
    """Queries held at once, by count and by bytes. UDP takes room or drops the query; TCP waits for room."""

    def __init__(self, count: int, size: int) -> None:
        self.count = count
        self.size = size
        self.used_count = 0
        self.used_bytes = 0
        self._freed = asyncio.Event()

    def try_take(self, size: int) -> bool:
        if self.used_count >= self.count or self.used_bytes + size > self.size:
            return False
        self.used_count += 1
        self.used_bytes += size
        return True

    async def take(self, size: int) -> None:
        while not self.try_take(size):
            self._freed.clear()
            await self._freed.wait()

    def give(self, size: int) -> None:
        self.used_count -= 1
        self.used_bytes -= size
        self._freed.set()


class Connection:
    """One client's TCP connection: its replies go out one at a time, each drained with a bound."""

    def __init__(self, writer: asyncio.StreamWriter, counters: dict[str, int]) -> None:
        self.writer = writer
        self.counters = counters
        self.slots = asyncio.Semaphore(MAX_PENDING_PER_CONNECTION)
        self._lock = asyncio.Lock()

    async def send(self, message: bytes) -> bool:
        """Write one message and wait until the client has read enough of what waits; False when the
        connection is gone, or cut off because the client did not read for WRITE_TIMEOUT_S."""
        async with self._lock:  # one message at a time past the high water mark, not one per query
            if self.writer.is_closing():
                return False
            self.writer.write(frame(message))
            try:
                await asyncio.wait_for(self.writer.drain(), WRITE_TIMEOUT_S)
            except TimeoutError:
                self.counters["slow_readers"] += 1
                self.reset()
                return False
            except OSError:
                return False
        return True

    def reset(self) -> None:
        """Drop the connection, and what waits for the client in the kernel too: a reset, where a close would
        go on sending the unread bytes first."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


@dataclasses.dataclass(frozen=True)
class Config:
    port: int
    mark: int
    action: str
    patterns: tuple[str, ...]  # normalised; empty means every name
    upstreams: tuple[tuple[str, int], ...]
    timeout_s: float = DEFAULT_TIMEOUT_S


FORWARD = object()  # verdict: relay the query upstream


class Responder:
    """Decides per query, answers faults itself and relays the rest; counts what it did."""

    def __init__(self, config: Config, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.Random()
        self.counters = {"queries": 0, "faulted": 0, "forwarded": 0, "malformed": 0, "upstream_failures": 0,
                         # Beyond the answers: UDP queries dropped for want of room (MAX_PENDING,
                         # MAX_PENDING_BYTES), connections closed at once (MAX_TCP_CONNECTIONS) or cut off
                         # for not reading (WRITE_TIMEOUT_S), and failures of the responder's own (a bug).
                         "overloaded": 0, "connections_refused": 0, "slow_readers": 0, "errors": 0}
        self.budget = Budget(MAX_PENDING, MAX_PENDING_BYTES)
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections = 0
        self._errors_reported = 0

    def matches(self, name: str) -> bool:
        if not self.config.patterns:
            return True
        normalised = _normalise_name(name)
        return any(_matches_normalised(pattern, normalised) for pattern in self.config.patterns)

    def decide(self, message: bytes) -> bytes | object | None:
        """The reply to send, FORWARD, or None to drop the message."""
        self.counters["queries"] += 1
        try:
            header = Header.decode(message)
        except MalformedMessage:
            self.counters["malformed"] += 1
            return None  # too short to reply to
        if header.is_response:
            self.counters["malformed"] += 1
            return None  # never answer an answer: that could loop between two servers
        if header.opcode != OPCODE_QUERY or header.qdcount != 1:
            return FORWARD  # NOTIFY, UPDATE, cookie-only queries...: the upstream's business
        try:
            question = decode_question(message)
        except MalformedMessage:
            self.counters["malformed"] += 1
            return build_response(header, None, RCODE_FORMERR)
        if question.qtype not in (TYPE_A, TYPE_AAAA) or question.qclass != CLASS_IN:
            return FORWARD
        if not self.matches(question.name):
            return FORWARD
        self.counters["faulted"] += 1
        if self.config.action == "error":
            return build_response(header, question, RCODE_SERVFAIL)
        answer = address_record(question.qtype, random_address(question.qtype, self.rng))
        return build_response(header, question, 0, [answer])

    def _upstream_failed(self, message: bytes) -> bytes | None:
        # As a forwarding resolver does: SERVFAIL, so the client moves on at once.
        self.counters["upstream_failures"] += 1
        try:
            header = Header.decode(message)
            question = decode_question(message) if header.qdcount == 1 else None
        except MalformedMessage:
            return None
        return build_response(header, question, RCODE_SERVFAIL)

    def _marked_socket(self, family: int, kind: int) -> socket.socket:
        sock = socket.socket(family, kind)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, self.config.mark)  # skips the REDIRECT
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def failed(self, what: str, error: BaseException) -> None:
        """A failure of the responder's own: counted and reported (a few times), never fatal."""
        self.counters["errors"] += 1
        if self._errors_reported < 10:  # a failure that repeats must not flood the daemon's log
            self._errors_reported += 1
            print(f"dns_responder: {what}: {type(error).__name__}: {error}", file=sys.stderr, flush=True)

    # UDP ------------------------------------------------------------------------------------

    def on_datagram(self, message: bytes, client: tuple[str, int], transport: asyncio.DatagramTransport) -> None:
        verdict = self.decide(message)
        if isinstance(verdict, bytes):
            transport.sendto(verdict, client)
        elif verdict is FORWARD:
            if not self.budget.try_take(len(message)):
                self.counters["overloaded"] += 1
                return  # overloaded: the client retransmits, as after a lost datagram
            self._spawn(self._relay_udp(message, client, transport))

    async def _relay_udp(self, message: bytes, client: tuple[str, int], transport: asyncio.DatagramTransport) -> None:
        try:
            reply = await self._forward_udp(message)
        finally:
            self.budget.give(len(message))
        if reply is None:
            reply = self._upstream_failed(message)
        else:
            self.counters["forwarded"] += 1
        if reply is not None and not transport.is_closing():
            transport.sendto(reply, client)

    async def _forward_udp(self, message: bytes) -> bytes | None:
        loop = asyncio.get_running_loop()
        for host, port in self.config.upstreams:
            try:
                family = _family(host)
                with self._marked_socket(family, socket.SOCK_DGRAM) as sock:
                    # Connected: the kernel drops datagrams from anyone but the upstream.
                    await loop.sock_connect(sock, (host, port))
                    await loop.sock_sendall(sock, message)
                    deadline = loop.time() + self.config.timeout_s
                    while True:
                        reply = await asyncio.wait_for(loop.sock_recv(sock, 65535), deadline - loop.time())
                        if reply[:2] == message[:2]:  # the same id: the answer to this query
                            return reply
            except (OSError, TimeoutError):
                continue  # refused, unreachable or silent: the next upstream
        return None

    # TCP ------------------------------------------------------------------------------------

    async def serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        answering: set[asyncio.Task[None]] = set()
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        connection = Connection(writer, self.counters)
        frames = FrameBuffer()
        self._connections += 1
        try:
            if self._connections > MAX_TCP_CONNECTIONS:
                self.counters["connections_refused"] += 1
                return  # overloaded: the client sees the connection close and retries
            while True:
                try:
                    message = frames.next_message()
                except MalformedMessage:
                    self.counters["queries"] += 1
                    self.counters["malformed"] += 1
                    break  # the framing is lost: nothing after can be read as messages
                if message is None:
                    try:
                        data = await asyncio.wait_for(reader.read(TCP_READ_SIZE), TCP_IDLE_TIMEOUT_S)
                    except (OSError, TimeoutError):
                        break
                    if not data:
                        if frames:  # the stream ended inside a message
                            self.counters["queries"] += 1
                            self.counters["malformed"] += 1
                        break
                    frames.feed(data)
                    continue
                # Room on this connection, then in all, before the next query is taken: a client that
                # pipelines faster than its queries are answered waits, in its own socket buffers.
                await connection.slots.acquire()
                try:
                    await self.budget.take(len(message))
                except BaseException:
                    connection.slots.release()
                    raise
                # Each query on its own: a slow upstream answer does not hold up the next (RFC 7766 6.2.1.1).
                answer = asyncio.get_running_loop().create_task(self._answer_tcp(message, connection))
                answering.add(answer)
                answer.add_done_callback(answering.discard)
            if answering:  # the client may half-close right after its query: answer it still
                await asyncio.wait(answering, timeout=self.config.timeout_s * len(self.config.upstreams) + 1)
        except asyncio.CancelledError:
            pass  # shutting down; ending normally keeps asyncio from logging the cancelled handler
        finally:
            for answer in answering:
                answer.cancel()
            writer.close()
            self._connections -= 1
            if task is not None:
                self._tasks.discard(task)

    async def _answer_tcp(self, message: bytes, connection: Connection) -> None:
        try:
            verdict = self.decide(message)
            if isinstance(verdict, bytes):
                await connection.send(verdict)
            elif verdict is FORWARD:
                if not await self._forward_tcp(message, connection.send):
                    reply = self._upstream_failed(message)
                    if reply is not None:
                        await connection.send(reply)
            else:
                connection.writer.close()  # nothing sensible to say: end the connection
        except Exception as error:
            # Raised out of a task it would only be logged when collected; the query gets no answer.
            self.failed("answering over TCP", error)
        finally:
            self.budget.give(len(message))
            connection.slots.release()

    async def _forward_tcp(self, message: bytes, send: Callable[[bytes], Awaitable[bool]]) -> bool:
        """Relay over TCP; a zone transfer's answer spans several messages, all relayed, each written only
        once the client has read enough of the ones before (``send`` drains with a bound)."""
        loop = asyncio.get_running_loop()
        timeout = self.config.timeout_s
        transfer = _qtype(message) in (TYPE_AXFR, TYPE_IXFR)
        for host, port in self.config.upstreams:
            relayed = False
            writer = None
            try:
                sock = self._marked_socket(_family(host), socket.SOCK_STREAM)
                try:
                    # Small, as a client's: one read brings at most this much of a transfer the client is slow to take.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, TCP_RCVBUF)
                    await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
                except BaseException:
                    sock.close()
                    raise
                reader, writer = await asyncio.open_connection(sock=sock, limit=TCP_READ_SIZE)
                writer.write(frame(message))
                await asyncio.wait_for(writer.drain(), timeout)
                frames = FrameBuffer()
                while True:
                    reply = frames.next_message()
                    if reply is None:
                        data = await asyncio.wait_for(reader.read(TCP_READ_SIZE), timeout)
                        if not data:
                            break
                        frames.feed(data)
                        continue
                    if not relayed:  # counted now: a transfer's end may come much later
                        relayed = True
                        self.counters["forwarded"] += 1
                    if not await send(reply) or not transfer:
                        break  # the client is gone or cut off, or the one answer is relayed
                if relayed:
                    return True
            except (OSError, TimeoutError, MalformedMessage):
                if relayed:
                    return True  # a transfer that went quiet or was cut: what came is relayed
            finally:
                if writer is not None:
                    writer.close()
        return False

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)


def _qtype(message: bytes) -> int | None:
    try:
        return decode_question(message).qtype
    except MalformedMessage:
        return None


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is None:
            return
        try:
            self.responder.on_datagram(data, addr, self.transport)
        except Exception as error:
            # Raised out of here, asyncio would close the socket: the fault would silently stop.
            self.responder.failed("answering over UDP", error)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an earlier reply: that client went away, nothing to do


async def serve(config: Config, ready: Callable[[], None] = lambda: print("ready", flush=True)) -> dict[str, int]:
    """Serve until SIGTERM or SIGINT; the counters."""
    loop = asyncio.get_running_loop()
    responder = Responder(config)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _UdpProtocol(responder), local_addr=(LISTEN_ADDRESS, config.port))
    try:
        server = await asyncio.start_server(responder.serve_tcp, sock=_tcp_listener(config.port), limit=TCP_READ_SIZE)
    except BaseException:
        transport.close()
        raise
    try:
        ready()
        await stop.wait()
    finally:
        transport.close()
        server.close()
        await responder.close()
        await server.wait_closed()
    return responder.counters


def _tcp_listener(port: int) -> socket.socket:
    """The listening socket; the connections it accepts inherit its small receive buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, TCP_RCVBUF)  # before listen: in the first window too
        sock.bind((LISTEN_ADDRESS, port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# --- command line -------------------------------------------------------------------------------


def _mark(text: str) -> int:
    try:
        mark = int(text, 16)
        _check_mark(mark)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-zero 32-bit hexadecimal mark, e.g. 0x2000") from None
    return mark


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port between 1 and 65535")
    return int(text)


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds between 0 and 60")
    return value


def _checked(parse: Callable[[str], object]) -> Callable[[str], object]:
    def wrapped(text: str) -> object:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    wrapped.__name__ = parse.__name__
    return wrapped


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m pytest_chaos_daemon.programs.dns_responder",
        description=(
            "DNSChaos responder. Run as root in the target's network namespace, next to an iptables "
            "nat OUTPUT REDIRECT of port 53 (UDP and TCP) to --port that skips packets marked --mark. "
            "A/AAAA queries for matching names get the fault; everything else is relayed unchanged to "
            "the upstream servers. Prints 'ready' once listening; on SIGTERM, one JSON line of counters."
        ),
    )
    parser.add_argument("--port", type=_port, required=True,
                        help="port on 127.0.0.1 to listen on, UDP and TCP: the REDIRECT's --to-ports")
    parser.add_argument("--mark", type=_mark, required=True,
                        help="firewall mark (hexadecimal, e.g. 0x2000) set on the sockets that forward queries "
                             "upstream; the REDIRECT rule must skip packets carrying it (-m mark ! --mark M/M)")
    parser.add_argument("--action", choices=ACTIONS, required=True,
                        help="error: answer matching A/AAAA queries SERVFAIL; random: answer them with one "
                             f"random address (TTL {RANDOM_TTL} s)")
    parser.add_argument("--pattern", dest="patterns", type=_checked(check_pattern), action="extend", nargs="+",
                        default=[], metavar="PATTERN",
                        help="name pattern to fault, repeatable; case-insensitive, trailing dot ignored, '?' is "
                             "one character, '*' only as the last character is any rest; the whole name must "
                             "match. None: every name")
    parser.add_argument("--upstream", dest="upstreams", type=_checked(parse_upstream), action="extend", nargs="+",
                        required=True, metavar="IP[:PORT]",
                        help="DNS server for every other query, repeatable (IPv6 with a port: [IP]:PORT); "
                             "tried in order, each for --timeout")
    parser.add_argument("--timeout", type=_timeout, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help=f"how long to wait for each upstream before trying the next (default "
                             f"{DEFAULT_TIMEOUT_S})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = Config(
        port=args.port, mark=args.mark, action=args.action, patterns=tuple(dict.fromkeys(args.patterns)),
        upstreams=tuple(args.upstreams), timeout_s=args.timeout,
    )
    if (LISTEN_ADDRESS, config.port) in config.upstreams:
        print(f"error: upstream {LISTEN_ADDRESS}:{config.port} is the responder itself", file=sys.stderr)
        return 2
    # Without the mark, forwarded queries would come back through the REDIRECT: refuse to start.
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, SO_MARK, config.mark)
    except OSError as error:
        print(f"error: cannot set the firewall mark (SO_MARK needs CAP_NET_ADMIN): {error}", file=sys.stderr)
        return 1
    try:
        counters = asyncio.run(serve(config))
    except OSError as error:
        print(f"error: cannot serve on {LISTEN_ADDRESS}:{config.port}: {error}", file=sys.stderr)
        return 1
    try:
        print(json.dumps(counters), flush=True)
    except OSError:
        pass  # whoever started us is gone: nobody to tell
    return 0


if __name__ == "__main__":
    sys.exit(main())
