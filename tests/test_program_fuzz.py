"""Property tests of the parsers of the two programs the daemon runs in a target's network namespace.

The packet queue and the DNS responder read what a target sends: any bytes at all (a raw socket with
IP_HDRINCL, a crafted query, a TCP stream cut anywhere). Each parser may refuse its input only with its
program's own error (``MalformedPacket``, ``MalformedMessage``), which the program counts and survives;
anything else raised would end the fault. Inputs: arbitrary bytes, and valid packets and messages
mutated (bits flipped, bytes changed, cut short, lengthened), and packets whose lengths agree with a
header cut short. Runs are bounded, 500 examples each, derandomized (the same examples every run, so CI
cannot turn red on an unchanged tree) and without an example database: the module takes seconds.
"""

from __future__ import annotations

import random
import socket
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest_chaos_daemon.programs import dns_responder as dns
from pytest_chaos_daemon.programs import packet_queue as pq

FUZZ = settings(max_examples=500, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


# --- mutation ---------------------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid input changed a few times over: bits flipped, bytes set, cut short (anywhere, or by its last few
    bytes, where a field is cut in two), bytes inserted."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(0, 4))):
        how = draw(st.sampled_from(["flip", "set", "cut", "trim", "insert"]))
        if how == "cut":
            del data[draw(st.integers(0, len(data))):]
        elif how == "trim":
            del data[max(0, len(data) - draw(st.integers(1, 8))):]
        elif how == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            at = draw(st.integers(0, len(data) - 1))
            if how == "flip":
                data[at] ^= 1 << draw(st.integers(0, 7))
            else:
                data[at] = draw(st.integers(0, 255))
    return bytes(data)


# --- the DNS responder ------------------------------------------------------------------------------

LABEL = st.binary(min_size=1, max_size=63)
NAME = st.lists(LABEL, max_size=6).filter(lambda labels: sum(len(label) + 1 for label in labels) < 255)


@st.composite
def dns_queries(draw: st.DrawFn) -> bytes:
    """A well-formed query (or another opcode, a response, several questions) with a possibly compressed name."""
    labels = draw(NAME)
    flags = draw(st.sampled_from([0x0100, 0x0000, 0x0110, 0x2800, 0x8180]))
    qdcount = draw(st.sampled_from([1, 1, 1, 0, 2]))
    qtype = draw(st.sampled_from([dns.TYPE_A, dns.TYPE_AAAA, 16, dns.TYPE_AXFR, dns.TYPE_IXFR, 255]))
    qclass = draw(st.sampled_from([dns.CLASS_IN, 3, 255]))
    name = dns.encode_name(labels)
    if draw(st.booleans()):  # compressed: the name ends in a pointer, backwards or not
        name = name[:-1] + struct.pack("!H", 0xC000 | draw(st.integers(0, 12 + len(name))))
    question = name + struct.pack("!HH", qtype, qclass)
    extra = draw(st.binary(max_size=40))  # additional records, an OPT record, or trailing bytes
    return struct.pack("!6H", draw(st.integers(0, 0xFFFF)), flags, qdcount, 0, 0, draw(st.integers(0, 2))) \
        + question + extra


DNS_INPUT = st.one_of(st.binary(max_size=600), mutated(dns_queries()))


def _responder(action: str, patterns: tuple[str, ...]) -> dns.Responder:
    config = dns.Config(port=5353, mark=0x2000, action=action, patterns=patterns, upstreams=(("192.0.2.1", 53),))
    return dns.Responder(config, random.Random(0))


RESPONDERS = [_responder("error", ()), _responder("random", ()), _responder("error", ("a*", "?.example.*"))]


@FUZZ
@given(DNS_INPUT)
def test_dns_message_parsers_raise_only_malformed_message(message: bytes) -> None:
    for parse in (dns.Header.decode, dns.decode_question, lambda m: dns.decode_name(m, dns.Header.SIZE)):
        try:
            parse(message)
        except dns.MalformedMessage:
            pass


@FUZZ
@given(DNS_INPUT, st.sampled_from(range(len(RESPONDERS))))
def test_decide_answers_drops_or_forwards_any_message(message: bytes, which: int) -> None:
    responder = RESPONDERS[which]
    before = dict(responder.counters)
    verdict = responder.decide(message)
    assert verdict is None or verdict is dns.FORWARD or isinstance(verdict, bytes)
    assert responder.counters["queries"] == before["queries"] + 1
    if isinstance(verdict, bytes):
        # An answer of its own: a response to this query's id, never longer than a TCP frame can carry.
        header = dns.Header.decode(verdict)
        assert header.is_response and header.id == struct.unpack_from("!H", message)[0]
        assert len(verdict) <= 0xFFFF and dns.frame(verdict)
    if verdict is None:
        assert responder.counters["malformed"] == before["malformed"] + 1


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=8), st.data())
def test_tcp_framing_gives_back_exactly_the_messages_however_the_stream_is_cut(messages: list[bytes],
                                                                             data: st.DataObject) -> None:
    stream = b"".join(dns.frame(message) for message in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    frames = dns.FrameBuffer()
    got: list[bytes] = []
    error = None
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        frames.feed(stream[start:end])
        try:
            while (message := frames.next_message()) is not None:
                got.append(message)
        except dns.MalformedMessage as raised:
            error = raised
            break
    expected = messages[:messages.index(b"")] if b"" in messages else messages
    assert got == expected  # up to the first empty message, which ends the framing
    assert (error is not None) == (b"" in messages)
    if error is None:
        assert len(frames) == 0


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=10))
def test_tcp_framing_of_arbitrary_bytes_raises_only_malformed_message(chunks: list[bytes]) -> None:
    frames = dns.FrameBuffer()
    fed = 0
    taken = 0
    try:
        for chunk in chunks:
            frames.feed(chunk)
            fed += len(chunk)
            while (message := frames.next_message()) is not None:
                taken += len(message) + 2
    except dns.MalformedMessage:
        return
    assert taken + len(frames) == fed  # nothing lost, nothing made up
    assert len(frames) < 2 + 0xFFFF  # what waits is at most one message being received


# --- the packet queue -------------------------------------------------------------------------------

V4_A, V4_B = socket.inet_aton("10.250.0.1"), socket.inet_aton("10.250.0.2")
V6_A, V6_B = socket.inet_pton(socket.AF_INET6, "fd50::1"), socket.inet_pton(socket.AF_INET6, "fd50::2")


@st.composite
def transports(draw: st.DrawFn) -> tuple[int, bytes]:
    """(protocol, transport header and payload): TCP with options, UDP, ICMP, or anything."""
    payload = draw(st.binary(max_size=64))
    kind = draw(st.sampled_from(["tcp", "udp", "other"]))
    if kind == "tcp":
        options = draw(st.binary(max_size=40))
        options += b"\x01" * (-len(options) % 4)
        header = struct.pack("!HHIIBBHHH", 1234, 80, 1, 0, (5 + len(options) // 4) << 4, 0x18, 65535, 0, 0)
        return pq.IPPROTO_TCP, header + options + payload
    if kind == "udp":
        return pq.IPPROTO_UDP, struct.pack("!HHHH", 1234, 53, 8 + len(payload), 0) + payload
    return draw(st.sampled_from([1, 58, 132, 59])), payload


@st.composite
def short(draw: st.DrawFn, data: bytes) -> bytes:
    """``data``, or now and then a prefix of it: a header cut short inside lengths that agree with it."""
    return data[:draw(st.integers(0, len(data)))] if draw(st.integers(0, 3)) == 0 else data


@st.composite
def ipv4_packets(draw: st.DrawFn) -> bytes:
    protocol, rest = draw(transports())
    rest = draw(short(rest))
    options = draw(st.binary(max_size=40))
    options += b"\x00" * (-len(options) % 4)
    header_length = 20 + len(options)
    fragment = draw(st.sampled_from([0, 0x4000, 0x2000, 0x0010]))  # none, DF, MF (first), a later fragment
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | header_length // 4, 0, header_length + len(rest), 7, fragment, 64,
                         protocol, 0, V4_A, V4_B)
    return header + options + rest


@st.composite
def ipv6_packets(draw: st.DrawFn) -> bytes:
    protocol, rest = draw(transports())
    # Extension headers before the transport, innermost last: hop-by-hop, destination options, routing,
    # fragment (first or later), AH.
    for kind in reversed(draw(st.lists(st.sampled_from([0, 60, 43, 44, 51]), max_size=4))):
        if kind == 44:
            rest = struct.pack("!BBHI", protocol, 0, draw(st.sampled_from([0, 1, 8])), 1) + rest
        elif kind == 51:
            rest = struct.pack("!BB", protocol, 1) + bytes(10) + rest  # (1 + 2) * 4 = 12 bytes
        else:
            rest = struct.pack("!BB", protocol, 0) + bytes(6) + rest
        protocol = kind
    rest = draw(short(rest))
    return struct.pack("!IHBB16s16s", 6 << 28, len(rest), protocol, 64, V6_A, V6_B) + rest


PACKETS = st.one_of(ipv4_packets(), ipv6_packets())
PACKET_INPUT = st.one_of(st.binary(max_size=120), mutated(PACKETS))
FAMILIES = st.sampled_from([0, pq.NFPROTO_IPV4, pq.NFPROTO_IPV6, 7])


@FUZZ
@given(st.one_of(ipv4_packets(), ipv6_packets()))
def test_packets_parse_with_their_destination_or_say_what_is_cut(packet: bytes) -> None:
    try:
        info = pq.parse_packet(packet, pq.NFPROTO_IPV4 if packet[0] >> 4 == 4 else pq.NFPROTO_IPV6)
    except pq.MalformedPacket as error:
        assert "past the packet" in str(error) or "left" in str(error), error  # only what short() cut
        return
    assert info.destination in ("10.250.0.2", "fd50::2")
    assert 20 <= info.transport <= len(packet)


@FUZZ
@given(PACKET_INPUT, FAMILIES, st.integers(0, 2**32 - 1))
def test_packet_parsing_and_corrupting_raise_only_malformed_packet(packet: bytes, family: int, seed: int) -> None:
    try:
        info = pq.parse_packet(packet, family)
    except pq.MalformedPacket:
        return
    assert info.family == (socket.AF_INET if packet[0] >> 4 == 4 else socket.AF_INET6)
    assert socket.inet_pton(info.family, info.destination)
    changed = pq.flip_bit(packet, info.transport, random.Random(seed))
    if changed is not None:  # one bit, past the headers the queue reads
        differences = [i for i, (a, b) in enumerate(zip(packet, changed, strict=True)) if a != b]
        assert len(differences) == 1 and differences[0] >= info.transport
        assert bin(packet[differences[0]] ^ changed[differences[0]]).count("1") == 1


@st.composite
def packet_messages(draw: st.DrawFn) -> tuple[int, bytes]:
    """(packet id, the body of an NFQNL_MSG_PACKET message) carrying a valid, mutated or arbitrary packet;
    now and then an attribute is missing, short or cut."""
    packet_id = draw(st.integers(0, 2**32 - 1))
    packet = draw(st.one_of(PACKETS, PACKET_INPUT))
    hook = draw(st.sampled_from([0, 1, 3, 4, 7]))
    attrs = pq._attr(pq.NFQA_PACKET_HDR, struct.pack("!IHB", packet_id, 0x0800, hook))
    if draw(st.booleans()):
        attrs += pq._attr(pq.NFQA_MARK, struct.pack("!I", draw(st.integers(0, 2**32 - 1))))
    attrs += pq._attr(pq.NFQA_IFINDEX_OUTDEV, struct.pack("!I", 1))  # lo
    attrs += pq._attr(pq.NFQA_PAYLOAD, packet)
    if draw(st.booleans()):  # the copy was cut short
        attrs += pq._attr(pq.NFQA_CAP_LEN, struct.pack("!I", len(packet) + draw(st.integers(0, 100))))
    body = struct.pack("!BBH", draw(FAMILIES), 0, 1) + attrs
    if draw(st.integers(0, 9)) == 0:
        body = draw(mutated(st.just(body)))
    return packet_id, body


class _Options:
    """The program's options (parse_args's namespace) for the handling fuzz."""

    def __init__(self, **values: Any) -> None:
        defaults = {"queue": 1, "mark_bit": 0x10000, "hook": "egress", "loss": 0.0, "delay_ms": 0.0, "jitter_ms": 0.0,
                    "reorder": 0.0, "duplicate": 0.0, "corrupt": 0.0, "resend": False, "seed": 1}
        self.__dict__.update(defaults | values)


class _RecordingQueue(pq.PacketQueue):
    """A queue that sends nothing: verdicts, raw packets and error reports are recorded, so fuzzed packets
    never leave. Its netlink socket is opened (MTUs are read through it) but never bound to a queue."""

    def __init__(self, options: Any) -> None:
        super().__init__(options)
        self.verdicts: list[tuple[int, int]] = []
        self.sent: list[tuple[bytes, str]] = []
        self.reported: list[str] = []

    def _verdict(self, packet_id: int, verdict: int, mark: int, payload: bytes | None) -> None:
        self.verdicts.append((packet_id, verdict))

    def _send_raw(self, packet: bytes, mark: int, info: pq.PacketInfo) -> bool:
        self.sent.append((packet, info.destination))
        return True

    def _error(self, message: str) -> None:
        self.reported.append(message)


OPTION_SETS = [
    {"duplicate": 50.0, "corrupt": 50.0},
    {"delay_ms": 1e6, "resend": True, "duplicate": 30.0, "corrupt": 30.0},
    {"loss": 30.0, "delay_ms": 1e6, "jitter_ms": 10.0, "reorder": 30.0, "corrupt": 100.0},
]


@pytest.mark.parametrize("values", OPTION_SETS, ids=["duplicate-corrupt", "resend", "loss-delay-reorder"])
def test_every_packet_message_gets_exactly_one_verdict(values: dict[str, Any]) -> None:
    """The invariant that keeps traffic flowing: each packet the kernel queues gets one verdict, now or
    when it is released; a message without a packet id is the only one that can get none."""
    queue = _RecordingQueue(_Options(**values))

    @FUZZ
    @given(packet_messages())
    def handle(message: tuple[int, bytes]) -> None:
        packet_id, body = message
        queue.verdicts.clear()
        queue.held.clear()  # delays are long: nothing is released during the run
        queue.held_bytes = 0
        try:
            readable = pq.parse_queued(memoryview(body)).packet_id
        except pq.MalformedPacket:
            readable = None
        queue._handle(pq.NFQNL_MSG_PACKET, 0, memoryview(body))
        assert not [m for m in queue.reported if m.startswith("handling packet")], queue.reported
        ids = [verdict_id for verdict_id, _ in queue.verdicts] + [h.packet_id for h in queue.held if h.packet_id is not None]
        resent = [h for h in queue.held if h.packet_id is None]
        if readable is None:
            assert ids == [] and resent == []
        else:
            # Given now (passed, dropped, or dropped with its copy held for --resend), or held for later.
            assert ids == [readable], (ids, resent)
            assert len(resent) <= 1 and (not resent or queue.verdicts == [(readable, pq.NF_DROP)])

    try:
        handle()
    finally:
        queue.close()
    assert queue.counters["seen"] > 0 and queue.counters["malformed"] > 0
    if values.get("resend"):
        assert queue.counters["resent"] > 0
