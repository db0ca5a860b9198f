"""Netem's loss, delay, reorder, duplicate and corrupt, for kernels without netem.

The daemon runs this program inside a target's network namespace (as root, with
CAP_NET_ADMIN) and adds an iptables rule that sends the traffic to its queue::

    iptables -t mangle -A POSTROUTING -o eth0 -m mark ! --mark 0x10000/0x10000 \\
        -j NFQUEUE --queue-num 7 --queue-bypass
    python3 -m pytest_chaos_daemon.programs.packet_queue --queue 7 --mark-bit 0x10000 --delay-ms 100

It binds the queue over nfnetlink_queue (an AF_NETLINK socket, NETLINK_NETFILTER)
and gives every packet its verdict: NF_DROP for a lost packet, otherwise
NF_REPEAT with the mark bit OR-ed in, once the packet's delay is over. The
repeat runs the hook's table again: the rule above skips the packet (its bit is
set) while the rules of other injections in the same chain, each with a bit of
its own, still see it; that is how two faults on the same traffic compose.

Lines on stdout: ``ready`` once the queue is bound and configured; on SIGTERM
(or SIGINT) every held packet gets its verdict at once, the queue is unbound
and one JSON line of counters follows, then exit status 0. Errors go to stderr
with exit status 1 (2 for bad options). While it stops, the queue's length is
0: new packets pass it by fail-open (NF_ACCEPT, which skips the chain's later
rules) instead of waiting in a queue about to be destroyed.

Faults, in netem's order: loss first (a lost packet is neither duplicated nor
delayed); a duplicate is a copy of the packet as it came, sent through a raw
socket when the original is let through, so it is delayed alike; corrupt flips
one bit past the IP header; reorder lets a packet through at once instead of
holding it. Randomness is independent per packet (no correlation, no gap).

What the kernel gives: without NFQA_CFG_F_GSO it segments GSO packets before
queueing them, so TCP segments come at most one MTU long; with a packet copy it
also completes CHECKSUM_PARTIAL checksums first, so a flipped bit leaves a
checksum the receiver rejects. A packet longer than the copy range (65531
bytes; only with such an MTU, e.g. on lo) arrives truncated: it is delayed or
dropped like any other, but neither duplicated nor corrupted nor resent.

Hooks: ``egress`` (mangle POSTROUTING or OUTPUT) and ``ingress`` (mangle
PREROUTING); every fault works on both, for IPv4 and IPv6. On ingress a
duplicate's destination is a local address: it is delivered through ``lo``
(its source stays the peer's; rules matching ``-i eth0`` do not see it). On
egress a held packet stays charged to the socket that sent it (netem orphans
it; a queue cannot): TCP small queues throttle a delayed TCP sender to a few
Mbit/s, and a program that falls behind stalls senders instead of failing
open. ``--resend`` avoids both: the original is dropped at once and an exact
copy is sent through a raw socket when due. On ingress neither happens.

If the program dies, the kernel drops the packets it held and later packets
pass the rule untouched (``--queue-bypass``); when the program cannot keep up,
NFQA_CFG_F_FAIL_OPEN accepts what does not fit in the queue or the socket.

Malformed packets. A target with CAP_NET_RAW can send any bytes as an IP
packet (IP_HDRINCL), so no packet is trusted to be what it claims. Every whole
copy is read by ``parse_packet``: its IP version against the hook's family, the
IPv4 header (options included) against the total length, or the IPv6 payload
length and extension headers, then a TCP or UDP header against what is left.
One that does not read is counted (``malformed``; the first is described on
stderr) and lost or delayed like any other, held by its verdict, but never
resent, duplicated nor corrupted: where a copy would go is not known. Copies
of metadata only (loss, delay and reorder without ``--resend``) are never read.
Should handling a packet fail all the same, that packet is let through and
counted in ``errors``: no packet ends the program, which would end the fault.

Bounds. The kernel keeps at most QUEUE_MAXLEN (16384) packets waiting for a
verdict; fail-open accepts the rest. The program holds at most
MAX_HELD_PACKETS (16384) packets and MAX_HELD_BYTES (16 MiB) of their bytes
(resent packets, changed ones, duplicates): a packet that would exceed either
is dropped and counted (``overflowed``), as a full netem queue drops. netem's
default limit, 1000 packets, would cap a TCP stream at 1000 segments per delay
(580 Mbit/s at 20 ms), below what the queue moves holding packets by their
verdicts; the bound is one of memory instead: as many packets as the kernel
keeps for a verdict, and 16 MiB, a 1 Gbit/s stream held for 134 ms. Measured
(``python3 -m benchmarks.program_memory``, 2 cores): 100,000 UDP packets of
1428 bytes from the target, each to be held 600 s through ``--resend``: peak
RSS 35.9 MB from 17.0 MB idle, 11,748 held (16 MiB) and 88,252 dropped at the
bound; without it, all were held: 169.9 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import gc
import heapq
import json
import math
import os
import random
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence

__all__ = ["HOOKS", "bound_queues", "main", "queue_argv"]

HOOKS = ("egress", "ingress")

# include/uapi/linux/netlink.h, netfilter/nfnetlink.h, netfilter/nfnetlink_queue.h
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33
SO_MARK = 36
SO_SNDBUFFORCE = 32
SIOCGIFMTU = 0x8921
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
NFNETLINK_V0 = 0
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = NFNL_SUBSYS_QUEUE << 8 | 0
NFQNL_MSG_VERDICT = NFNL_SUBSYS_QUEUE << 8 | 1
NFQNL_MSG_CONFIG = NFNL_SUBSYS_QUEUE << 8 | 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_META = 1
NFQNL_COPY_PACKET = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 0x1
NFPROTO_IPV4 = 2  # nfgen_family of a packet message: the netfilter family of the hook that queued it
NFPROTO_IPV6 = 10
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_MARK = 3
NFQA_IFINDEX_OUTDEV = 6
NFQA_PAYLOAD = 10
NFQA_CAP_LEN = 13
NF_DROP = 0
NF_REPEAT = 4
# Hooks (NF_INET_*) that belong to each --hook; FORWARD packets may be queued from either side.
HOOK_NUMBERS = {"ingress": {0, 1, 2}, "egress": {2, 3, 4}}

COPY_RANGE = 65535  # the kernel caps it at 65531 (0xffff less an attribute header)
QUEUE_MAXLEN = 16384
RCVBUF = 16 << 20  # packets queued while we are busy wait here, not in fail-open
RAW_SNDBUF = 4 << 20  # copies released together wait here for the device
RECV_SIZE = 1 << 17  # one packet message: up to 64 KiB of packet plus attributes
RECV_BURST = 64  # packets read (and their verdicts gathered) before sending verdicts
SEND_CHUNK = 32 << 10  # verdicts sent together in one datagram, up to this size
ACK_TIMEOUT_S = 5.0
# What the program holds itself (see "Bounds" above): packets waiting for their release, and the bytes it keeps
# of them (resent packets, changed packets, duplicates). Beyond either, a packet to hold is dropped.
MAX_HELD_PACKETS = QUEUE_MAXLEN
MAX_HELD_BYTES = 16 << 20
MAX_EXTENSION_HEADERS = 16  # IPv6 extension headers walked to find the transport header; more is malformed
MALFORMED_REPORTED = 1  # malformed packets described on stderr (all are counted)

IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_AH, IPPROTO_DSTOPTS = 0, 43, 44, 51, 60
IPPROTO_TCP, IPPROTO_UDP = 6, 17

_NLMSGHDR = struct.Struct("=IHHII")  # host order, as every netlink header
_NLATTR = struct.Struct("=HH")
_NFGENMSG = struct.Struct("!BBH")  # res_id (the queue number) in network order
_BE32 = struct.Struct("!I")
_PACKET_HDR = struct.Struct("!IHB")  # packet_id, hw_protocol, hook
_VERDICT = struct.Struct("!II4sI")  # verdict, id, the mark attribute's header, mark
_IFREQ_MTU = struct.Struct("16si20x")  # struct ifreq: name, then ifr_mtu in the union
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")


class QueueError(Exception):
    """Binding or configuring the queue failed."""


class MalformedPacket(ValueError):
    """A packet, or the kernel's message carrying it, that the program cannot read as what it claims to be."""


# --- options -----------------------------------------------------------------


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _percent(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text} is not a percentage: accepted values are 0 to 100")
    return value


def _milliseconds(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative: accepted values are milliseconds >= 0")
    return value


def _queue_number(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer: accepted values are 0 to 65535") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is out of range: accepted values are 0 to 65535")
    return value


def _mark_bit(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an integer: accepted values are one bit of the 32-bit mark, e.g. 0x10000") from None
    if value <= 0 or value >= 1 << 32 or value & (value - 1):
        raise argparse.ArgumentTypeError(
            f"{text} is not a single bit: accepted values are powers of two from 0x1 to 0x80000000")
    return value


def _seed(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m pytest_chaos_daemon.programs.packet_queue",
        description=(
            "Emulate netem's loss, delay, reorder, duplicate and corrupt on packets an iptables NFQUEUE rule "
            "sends to an nfnetlink queue. Run as root inside the network namespace of the rule. Prints 'ready' "
            "once the queue is bound; on SIGTERM releases every held packet, unbinds and prints a JSON line of "
            "counters."),
        epilog=(
            "The rule must skip packets carrying the mark bit and should bypass the queue when no program is "
            "bound, e.g.: iptables -t mangle -A POSTROUTING -o eth0 -m mark ! --mark 0x10000/0x10000 "
            "-j NFQUEUE --queue-num 7 --queue-bypass"),
    )
    parser.add_argument("--queue", type=_queue_number, required=True, metavar="N",
                        help="the nfnetlink queue number to bind, 0 to 65535 (the rule's --queue-num)")
    parser.add_argument("--mark-bit", type=_mark_bit, required=True, metavar="BIT",
                        help="one bit of the packet mark, e.g. 0x10000. Every packet let through leaves with its "
                             "mark OR-ed with this bit (verdict NF_REPEAT), so the rule that queued it skips it "
                             "and the rules of other injections in the same chain still see it; copies made by "
                             "--duplicate carry it too")
    parser.add_argument("--hook", choices=HOOKS, default="egress",
                        help="where the rule queues packets: egress (mangle POSTROUTING or OUTPUT, the default) or "
                             "ingress (mangle PREROUTING). On ingress a duplicate reaches the local socket "
                             "through lo")
    parser.add_argument("--loss", type=_percent, default=0.0, metavar="PCT",
                        help="drop each packet with this probability, in percent (0 to 100)")
    parser.add_argument("--delay-ms", type=_milliseconds, default=0.0, metavar="MS",
                        help="hold each packet this many milliseconds (>= 0) before letting it through")
    parser.add_argument("--jitter-ms", type=_milliseconds, default=0.0, metavar="MS",
                        help="add a uniform random offset in [-MS, +MS] to each packet's delay, never going "
                             "below 0 (MS >= 0); packets may overtake each other, as with netem")
    parser.add_argument("--reorder", type=_percent, default=0.0, metavar="PCT",
                        help="with --delay-ms: this percent of packets (0 to 100) go through at once, undelayed, "
                             "overtaking held ones (netem's 'reorder PCT' without a gap)")
    parser.add_argument("--duplicate", type=_percent, default=0.0, metavar="PCT",
                        help="with this probability, in percent (0 to 100), also send a copy of the packet, as "
                             "received, through a raw socket when the packet is let through")
    parser.add_argument("--corrupt", type=_percent, default=0.0, metavar="PCT",
                        help="with this probability, in percent (0 to 100), flip one random bit past the IP "
                             "header, so the receiver drops the packet on its checksum")
    parser.add_argument("--resend", action="store_true",
                        help="egress only, with a delay: drop each delayed packet at once and send its copy "
                             "through a raw socket when the delay is over. The sending socket's buffer is freed "
                             "at once, as netem does, so TCP keeps its throughput (held packets otherwise stay "
                             "charged to it and TCP slows to a trickle). Needs CAP_NET_RAW; packets longer than "
                             "the outgoing device's MTU are held as usual")
    parser.add_argument("--seed", type=_seed, default=None, metavar="N",
                        help="seed the random generator, for repeatable runs")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The program's options; exits with status 2 and a message naming the option when one is bad."""
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.reorder and not options.delay_ms:
        parser.error(f"argument --reorder: {options.reorder:g} needs --delay-ms above 0: only delayed packets "
                     "can be overtaken")
    if options.resend and options.hook != "egress":
        parser.error("argument --resend: only with --hook egress (on ingress no sender's buffer is held)")
    if options.resend and not (options.delay_ms or options.jitter_ms):
        parser.error("argument --resend: needs --delay-ms or --jitter-ms above 0: it changes how delayed "
                     "packets leave")
    return options


def _format_number(value: float) -> str:
    text = repr(float(value))
    return text.removesuffix(".0")


def queue_argv(queue: int, mark_bit: int, *, hook: str, loss: float = 0, delay_ms: float = 0,
               jitter_ms: float = 0, reorder: float = 0, duplicate: float = 0, corrupt: float = 0,
               resend: bool = False) -> list[str]:
    """The arguments after ``python3 -m pytest_chaos_daemon.programs.packet_queue`` for these settings.

    Checks them as the program would, raising ValueError, so a bad value fails in
    the caller instead of in a program started inside a target.
    """
    if isinstance(queue, bool) or not isinstance(queue, int):
        raise ValueError(f"--queue: {queue!r} is not an integer: accepted values are 0 to 65535")
    if isinstance(mark_bit, bool) or not isinstance(mark_bit, int):
        raise ValueError(f"--mark-bit: {mark_bit!r} is not an integer: accepted values are one bit, e.g. 0x10000")
    if hook not in HOOKS:
        raise ValueError(f"--hook: {hook!r} is not one of {', '.join(HOOKS)}")
    argv = ["--queue", str(queue), "--mark-bit", hex(mark_bit), "--hook", hook]
    checked: list[tuple[str, str, Callable[[str], float]]] = [
        ("--queue", argv[1], _queue_number), ("--mark-bit", argv[3], _mark_bit)]
    for option, value, check in (("--loss", loss, _percent), ("--delay-ms", delay_ms, _milliseconds),
                                 ("--jitter-ms", jitter_ms, _milliseconds), ("--reorder", reorder, _percent),
                                 ("--duplicate", duplicate, _percent), ("--corrupt", corrupt, _percent)):
        if value:
            text = _format_number(value)
            argv += [option, text]
            checked.append((option, text, check))
    for option, text, validate in checked:
        try:
            validate(text)
        except argparse.ArgumentTypeError as error:
            raise ValueError(f"{option}: {error}") from None
    if reorder and not delay_ms:
        raise ValueError("--reorder: needs --delay-ms above 0")
    if resend:
        if hook != "egress":
            raise ValueError("--resend: only with --hook egress")
        if not (delay_ms or jitter_ms):
            raise ValueError("--resend: needs --delay-ms or --jitter-ms above 0")
        argv.append("--resend")
    return argv


def bound_queues(net_dir: str = "/proc/self/net") -> set[int]:
    """Queue numbers bound in the network namespace ``net_dir`` belongs to.

    Reads ``<net_dir>/netfilter/nfnetlink_queue`` (one line per bound queue, its
    number first); no file means the module is not loaded, so no queue is bound.
    """
    try:
        with open(os.path.join(net_dir, "netfilter", "nfnetlink_queue")) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return set()
    return {int(line.split()[0]) for line in lines if line.strip()}


# --- netlink -----------------------------------------------------------------


def _attr(kind: int, payload: bytes) -> bytes:
    length = _NLATTR.size + len(payload)
    return _NLATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _nfq_message(msg_type: int, flags: int, seq: int, queue: int, attrs: bytes) -> bytes:
    body = _NFGENMSG.pack(socket.AF_UNSPEC, NFNETLINK_V0, queue) + attrs
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def _messages(data: memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """(type, seq, body) of each netlink message in one datagram; a message that runs past the datagram ends it."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, _portid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break
        yield kind, seq, data[offset + _NLMSGHDR.size:offset + length]
        offset += (length + 3) & ~3


def _attrs(data: memoryview) -> dict[int, memoryview]:
    """Netlink attributes by type; an attribute that runs past the data ends them."""
    found = {}
    offset = 0
    while offset + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size or offset + length > len(data):
            break
        found[kind & NLA_TYPE_MASK] = data[offset + _NLATTR.size:offset + length]
        offset += (length + 3) & ~3
    return found


def _error_code(body: memoryview) -> int:
    """The (negative) errno of an NLMSG_ERROR message; 0 is an acknowledgement. A body too short to hold
    one reads as EINVAL: it cannot be an acknowledgement."""
    if len(body) < 4:
        return -22
    code: int = struct.unpack_from("=i", body)[0]
    return code


@dataclasses.dataclass(frozen=True, slots=True)
class Queued:
    """One packet message from the kernel, as far as the program uses it."""

    family: int  # the netfilter family of the hook that queued it (NFPROTO_IPV4, NFPROTO_IPV6)
    packet_id: int
    hook: int
    mark: int
    payload: memoryview | None  # the packet, or its first bytes; None with metadata-only copies
    length: int  # the packet's length: CAP_LEN when the copy was cut short, else the copy's
    outdev: int | None  # the outgoing interface's index

    @property
    def whole(self) -> bool:
        return self.payload is not None and len(self.payload) == self.length


def _be32(attrs: dict[int, memoryview], kind: int) -> int | None:
    value = attrs.get(kind)
    if value is None:
        return None
    if len(value) < 4:
        raise MalformedPacket(f"attribute {kind} of {len(value)} bytes, shorter than 4")
    number: int = _BE32.unpack_from(value)[0]
    return number


def parse_queued(body: memoryview) -> Queued:
    """The packet message's fields (``body``: after the netlink header); MalformedPacket when one it needs is
    missing or short. Only the kernel writes these, but a reader that trusts lengths is one bug away from
    ending the fault."""
    if len(body) < _NFGENMSG.size:
        raise MalformedPacket(f"packet message of {len(body)} bytes, shorter than its nfgenmsg header")
    attrs = _attrs(body[_NFGENMSG.size:])
    header = attrs.get(NFQA_PACKET_HDR)
    if header is None or len(header) < _PACKET_HDR.size:
        raise MalformedPacket("packet message without a whole packet header")
    packet_id, _protocol, hook = _PACKET_HDR.unpack_from(header)
    payload = attrs.get(NFQA_PAYLOAD)
    copied = len(payload) if payload is not None else 0
    # CAP_LEN (the packet's length) comes only with a packet copy shorter than the packet.
    length = _be32(attrs, NFQA_CAP_LEN)
    if length is not None and length < copied:
        raise MalformedPacket(f"packet of {length} bytes with a copy of {copied}")
    return Queued(family=body[0], packet_id=packet_id, hook=hook, mark=_be32(attrs, NFQA_MARK) or 0,
                  payload=payload, length=copied if length is None else length,
                  outdev=_be32(attrs, NFQA_IFINDEX_OUTDEV))


@dataclasses.dataclass(frozen=True, slots=True)
class PacketInfo:
    """What the program reads of a whole IP packet before it sends a copy, resends it or changes it."""

    family: int  # socket.AF_INET or socket.AF_INET6
    transport: int  # offset of the transport header: past IPv4 options and IPv6 extension headers
    protocol: int | None  # the transport protocol; None in a fragment that is not the first
    destination: str


def parse_packet(packet: bytes | memoryview, family: int = 0) -> PacketInfo:
    """Check a whole packet's IP header, IPv6 extension headers and, when the packet holds one, its TCP or UDP
    header, against the packet's length; MalformedPacket says what does not fit.

    ``family``: the netfilter family of the hook that queued it (NFPROTO_IPV4 or NFPROTO_IPV6): its version
    must agree (0: either). A packet sent through a raw socket with IP_HDRINCL may carry any bytes at all.
    """
    data = memoryview(packet)
    if not data:
        raise MalformedPacket("empty packet")
    version = data[0] >> 4
    expected = {NFPROTO_IPV4: 4, NFPROTO_IPV6: 6}.get(family)
    if expected is not None and version != expected:
        raise MalformedPacket(f"IP version {version} in an IPv{expected} hook")
    if version == 4:
        return _parse_ipv4(data)
    if version == 6:
        return _parse_ipv6(data)
    raise MalformedPacket(f"IP version {version}")


def _parse_ipv4(data: memoryview) -> PacketInfo:
    if len(data) < _IPV4.size:
        raise MalformedPacket(f"IPv4 packet of {len(data)} bytes, shorter than an IPv4 header")
    first, _tos, total, _ident, fragment, _ttl, protocol, _checksum, _source, destination = _IPV4.unpack_from(data)
    header = (first & 0x0F) * 4
    if header < _IPV4.size or header > len(data):
        raise MalformedPacket(f"IPv4 header length {header} in a packet of {len(data)} bytes")
    if total != len(data):
        raise MalformedPacket(f"IPv4 total length {total} in a packet of {len(data)} bytes")
    offset, more = fragment & 0x1FFF, bool(fragment & 0x2000)
    address = socket.inet_ntop(socket.AF_INET, destination)
    if offset:  # a later fragment: no transport header
        return PacketInfo(socket.AF_INET, header, None, address)
    _check_transport(data, header, protocol, fragmented=more)
    return PacketInfo(socket.AF_INET, header, protocol, address)


def _parse_ipv6(data: memoryview) -> PacketInfo:
    if len(data) < _IPV6.size:
        raise MalformedPacket(f"IPv6 packet of {len(data)} bytes, shorter than an IPv6 header")
    _first, payload_length, protocol, _hops, _source, destination = _IPV6.unpack_from(data)
    if _IPV6.size + payload_length != len(data):
        raise MalformedPacket(f"IPv6 payload length {payload_length} in a packet of {len(data)} bytes")
    address = socket.inet_ntop(socket.AF_INET6, destination)
    offset = _IPV6.size
    fragmented = False
    for _ in range(MAX_EXTENSION_HEADERS):
        if protocol not in (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_AH, IPPROTO_DSTOPTS):
            _check_transport(data, offset, protocol, fragmented)
            return PacketInfo(socket.AF_INET6, offset, protocol, address)
        if offset + 8 > len(data):  # every extension header is at least 8 bytes
            raise MalformedPacket(f"IPv6 extension header {protocol} runs past the packet")
        following, size = data[offset], data[offset + 1]
        if protocol == IPPROTO_FRAGMENT:
            fragment = struct.unpack_from("!H", data, offset + 2)[0]
            offset += 8
            if fragment & 0xFFF8:  # a later fragment: no transport header
                return PacketInfo(socket.AF_INET6, offset, None, address)
            fragmented = bool(fragment & 1)
        else:
            offset += (size + 2) * 4 if protocol == IPPROTO_AH else (size + 1) * 8
            if offset > len(data):
                raise MalformedPacket(f"IPv6 extension header {protocol} runs past the packet")
        protocol = following
    raise MalformedPacket(f"more than {MAX_EXTENSION_HEADERS} IPv6 extension headers")


def _check_transport(data: memoryview, offset: int, protocol: int, fragmented: bool) -> None:
    """A TCP or UDP header at ``offset`` must fit the packet (its length field too, unless fragmented)."""
    remaining = len(data) - offset
    if protocol == IPPROTO_TCP:
        if remaining < 20:
            raise MalformedPacket(f"TCP header runs past the packet ({remaining} bytes left)")
        header = (data[offset + 12] >> 4) * 4
        if header < 20 or (header > remaining and not fragmented):
            raise MalformedPacket(f"TCP header length {header} with {remaining} bytes left")
    elif protocol == IPPROTO_UDP:
        if remaining < 8:
            raise MalformedPacket(f"UDP header runs past the packet ({remaining} bytes left)")
        length = struct.unpack_from("!H", data, offset + 4)[0]
        if length < 8 or (length > remaining and not fragmented):
            raise MalformedPacket(f"UDP length {length} with {remaining} bytes left")


def flip_bit(packet: bytes | memoryview, start: int, rng: random.Random) -> bytes | None:
    """The packet with one random bit flipped at or past ``start`` (its transport header); None if nothing
    is there."""
    if not 0 <= start < len(packet):
        return None
    changed = bytearray(packet)
    changed[rng.randrange(start, len(changed))] ^= 1 << rng.randrange(8)
    return bytes(changed)


class Held:
    """A packet waiting for its verdict."""

    __slots__ = ("due", "order", "packet_id", "mark", "payload", "copy", "info")

    def __init__(self, due: float, order: int, packet_id: int | None, mark: int, payload: bytes | None,
                 copy: bytes | None, info: PacketInfo | None) -> None:
        self.due = due
        self.order = order  # equal due times keep arrival order
        self.packet_id = packet_id  # None: the original was dropped, the payload is sent when due (--resend)
        self.mark = mark
        self.payload = payload  # modified packet to hand back, the packet to resend, or None
        self.copy = copy  # duplicate to send at release, or None
        self.info = info  # where a resent packet or a duplicate goes; None for a packet that was not read

    @property
    def size(self) -> int:
        """The bytes of it this program holds (a packet held by its verdict stays in the kernel)."""
        return (len(self.payload) if self.payload is not None else 0) + (len(self.copy) if self.copy is not None else 0)

    def __lt__(self, other: Held) -> bool:
        return (self.due, self.order) < (other.due, other.order)


class PacketQueue:
    """One bound queue and the faults applied to its packets."""

    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.queue = options.queue
        self.bit = options.mark_bit
        self.random = random.Random(options.seed)
        whole = options.duplicate or options.corrupt or options.resend
        self.copy_mode = NFQNL_COPY_PACKET if whole else NFQNL_COPY_META
        self.counters = {"seen": 0, "dropped": 0, "delayed": 0, "reordered": 0, "duplicated": 0,
                         "corrupted": 0, "resent": 0,
                         # Beyond netem's counters: packets copied short of their length and the longest
                         # packet (both with packet copies only: metadata-only copies carry no length),
                         # verdicts or duplicates that failed, the most a held packet was released late.
                         "truncated": 0, "largest": 0, "errors": 0, "late_ms": 0.0,
                         # Packets that are not what they claim (only whole copies are read), and packets
                         # dropped because the held ones were at MAX_HELD_PACKETS or MAX_HELD_BYTES.
                         "malformed": 0, "overflowed": 0}
        self.held: list[Held] = []
        self.held_bytes = 0
        self.malformed_reported = 0
        self.order = 0
        self.seq = 0
        self.outgoing: list[bytes] = []
        self.outgoing_size = 0
        self.raw: dict[int, socket.socket] = {}
        self.raw_marks: dict[int, int] = {}
        self.mtus: dict[int, int] = {}  # by interface index
        self.errors_reported = 0
        self.hooks = set(HOOK_NUMBERS[options.hook])  # expected, or already reported
        self.passthrough = False  # when stopping: every packet goes through at once, untouched
        self.buffer = bytearray(RECV_SIZE)
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.bind((0, 0))
            with contextlib.suppress(OSError):  # without CAP_NET_ADMIN the default stays: fail-open covers it
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            # Overruns are handled by fail-open in the kernel; an ENOBUFS error here would tell us nothing.
            self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
            # A verdict without payload is the same bytes but for verdict, id and mark: built once.
            verdict_size = _NLMSGHDR.size + _NFGENMSG.size + _VERDICT.size + _NLATTR.size
            self._verdict_prefix = (
                _NLMSGHDR.pack(verdict_size, NFQNL_MSG_VERDICT, NLM_F_REQUEST, 0, 0)
                + _NFGENMSG.pack(socket.AF_UNSPEC, NFNETLINK_V0, self.queue)
                + _NLATTR.pack(_NLATTR.size + 8, NFQA_VERDICT_HDR))
            self._mark_header = _NLATTR.pack(_NLATTR.size + 4, NFQA_MARK)
        except BaseException:
            self.sock.close()
            raise

    # configuration

    def _config(self, attrs: bytes) -> None:
        """Send one config message and wait for its acknowledgement, handling packets meanwhile."""
        self.seq += 1
        seq = self.seq
        self.sock.setblocking(True)
        self.sock.send(_nfq_message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, self.queue, attrs))
        deadline = time.monotonic() + ACK_TIMEOUT_S
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QueueError(f"queue {self.queue}: no answer from the kernel")
                self.sock.settimeout(remaining)
                size = self.sock.recv_into(self.buffer)
                for kind, reply_seq, body in _messages(memoryview(self.buffer)[:size]):
                    if kind == NLMSG_ERROR and reply_seq == seq:
                        code = _error_code(body)
                        if code:
                            raise QueueError(self._config_error(-code))
                        return
                    self._handle(kind, reply_seq, body)
                self._flush()
        finally:
            self.sock.setblocking(False)

    def _config_error(self, errno: int) -> str:
        reason = os.strerror(errno)
        if errno == 16:  # EBUSY
            return f"queue {self.queue} is already bound by another program in this network namespace"
        if errno == 1:  # EPERM: another socket owns the queue, or we lack the capability
            if self.queue in bound_queues():
                return f"queue {self.queue} is already bound by another program in this network namespace"
            return f"binding queue {self.queue}: {reason} (CAP_NET_ADMIN in this network namespace is needed)"
        return f"configuring queue {self.queue}: {reason}"

    def bind(self) -> None:
        # One message: the queue exists for only microseconds before it has its copy mode and flags
        # (without a copy mode the kernel drops what it queues).
        self._config(
            _attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, socket.AF_UNSPEC))
            + _attr(NFQA_CFG_PARAMS, struct.pack("!IB", COPY_RANGE, self.copy_mode))
            + _attr(NFQA_CFG_QUEUE_MAXLEN, _BE32.pack(QUEUE_MAXLEN))
            + _attr(NFQA_CFG_MASK, _BE32.pack(NFQA_CFG_F_FAIL_OPEN))
            + _attr(NFQA_CFG_FLAGS, _BE32.pack(NFQA_CFG_F_FAIL_OPEN)))

    def unbind(self) -> None:
        self._config(_attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_UNBIND, 0, socket.AF_UNSPEC)))

    # packets

    def _handle(self, kind: int, seq: int, body: memoryview) -> None:
        if kind == NFQNL_MSG_PACKET:
            try:
                queued = parse_queued(body)
            except MalformedPacket as error:  # no packet id: no verdict can be given
                self._error(f"unreadable packet message from the kernel: {error}")
                return
            try:
                self._packet(queued)
            except Exception as error:
                # A bug must cost one packet's fault, never the program: the fault would silently stop.
                self._error(f"handling packet {queued.packet_id}: {type(error).__name__}: {error}; let through")
                self._verdict(queued.packet_id, NF_REPEAT, queued.mark | self.bit, None)
        elif kind == NLMSG_ERROR:
            code = _error_code(body)
            if code:
                self._error(f"the kernel refused a verdict: {os.strerror(-code)}")

    def _read_packet(self, queued: Queued) -> PacketInfo | None:
        """The packet's addresses and layout when it is whole and well formed; None otherwise (counted)."""
        if queued.payload is None:
            return None
        if not queued.whole:
            self.counters["truncated"] += 1
            return None
        try:
            return parse_packet(queued.payload, queued.family)
        except MalformedPacket as error:
            self.counters["malformed"] += 1
            if self.malformed_reported < MALFORMED_REPORTED:
                self.malformed_reported += 1
                print(f"packet_queue: a malformed packet ({error}): lost or delayed like any other, never resent, "
                      "duplicated nor corrupted; further ones are only counted", file=sys.stderr, flush=True)
            return None

    def _packet(self, queued: Queued) -> None:
        packet_id, mark, payload = queued.packet_id, queued.mark, queued.payload
        if queued.hook not in self.hooks:
            # A rule in the wrong chain: the faults still apply, but the daemon should hear of it.
            self.hooks.add(queued.hook)
            self._error(f"packet from netfilter hook {queued.hook}, not on {self.options.hook}: check the rule's chain")
        counters = self.counters
        counters["seen"] += 1
        if queued.length > counters["largest"]:
            counters["largest"] = queued.length
        if self.passthrough:
            self._verdict(packet_id, NF_REPEAT, mark | self.bit, None)
            return
        options = self.options
        draw = self.random.random
        if options.loss and draw() * 100 < options.loss:
            counters["dropped"] += 1
            self._verdict(packet_id, NF_DROP, mark, None)
            return
        # Read only now: a lost packet needs no reading. The draws below come whatever it holds, so a seed
        # repeats the same faults on the same traffic.
        info = self._read_packet(queued)
        copy = None
        if options.duplicate and draw() * 100 < options.duplicate and info is not None and payload is not None:
            copy = bytes(payload)
        changed = None
        if options.corrupt and draw() * 100 < options.corrupt and info is not None and payload is not None:
            changed = flip_bit(payload, info.transport, self.random)
        delay = options.delay_ms
        if options.jitter_ms:
            delay = max(0.0, delay + self.random.uniform(-options.jitter_ms, options.jitter_ms))
        if options.reorder and draw() * 100 < options.reorder:
            counters["reordered"] += 1
            delay = 0.0
        if delay <= 0:
            counters["corrupted"] += changed is not None
            self._release(packet_id, mark, changed, copy, info)
            return
        # Resent: the original goes now, freeing its sender's buffer; a copy leaves when due.
        resend = options.resend and info is not None and payload is not None and self._fits(queued.outdev, queued.length)
        kept = queued.length if resend or changed is not None else 0
        if len(self.held) >= MAX_HELD_PACKETS or self.held_bytes + kept + len(copy or b"") > MAX_HELD_BYTES:
            # As a full netem queue: the packet is dropped (its duplicate too), the held ones keep their time.
            counters["overflowed"] += 1
            self._verdict(packet_id, NF_DROP, mark, None)
            return
        due = time.monotonic() + delay / 1000
        if resend and payload is not None:
            counters["resent"] += 1
            self._verdict(packet_id, NF_DROP, mark, None)
            held = Held(due, self.order + 1, None, mark, changed if changed is not None else bytes(payload), copy, info)
        else:
            held = Held(due, self.order + 1, packet_id, mark, changed, copy, info)
        counters["delayed"] += 1
        counters["corrupted"] += changed is not None
        self.order += 1
        self.held_bytes += held.size
        heapq.heappush(self.held, held)

    def _fits(self, index: int | None, length: int) -> bool:
        """Whether a raw socket can send the packet as it is: no longer than its device's MTU (a longer one
        is fragmented after this hook, which a raw socket refuses to do)."""
        if index is None:
            return False
        mtu = self.mtus.get(index)
        if mtu is None:
            try:
                request = _IFREQ_MTU.pack(socket.if_indextoname(index).encode(), 0)
                mtu = _IFREQ_MTU.unpack(fcntl.ioctl(self.sock.fileno(), SIOCGIFMTU, request))[1]
            except (OSError, ValueError):  # ValueError: an index that is no device's name
                mtu = 0  # a device gone since: hold its packets as usual
            self.mtus[index] = mtu
        return length <= mtu

    def _release(self, packet_id: int | None, mark: int, payload: bytes | None, copy: bytes | None,
                 info: PacketInfo | None) -> None:
        if copy is not None and info is not None and self._send_raw(copy, mark | self.bit, info):
            self.counters["duplicated"] += 1
        if packet_id is None:  # resent: the original was dropped when it came
            if payload is not None and info is not None:  # always so: only a packet read whole is resent
                self._send_raw(payload, mark | self.bit, info)
        else:
            self._verdict(packet_id, NF_REPEAT, mark | self.bit, payload)

    def _verdict(self, packet_id: int, verdict: int, mark: int, payload: bytes | None) -> None:
        if payload is None:
            message = self._verdict_prefix + _VERDICT.pack(verdict, packet_id, self._mark_header, mark)
        else:
            message = _nfq_message(
                NFQNL_MSG_VERDICT, NLM_F_REQUEST, 0, self.queue,
                _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))
                + _attr(NFQA_MARK, _BE32.pack(mark)) + _attr(NFQA_PAYLOAD, payload))
        if self.outgoing_size + len(message) > SEND_CHUNK:
            self._flush()
        self.outgoing.append(message)
        self.outgoing_size += len(message)

    def _flush(self) -> None:
        """Send the verdicts gathered so far, several netlink messages to a datagram."""
        if not self.outgoing:
            return
        data = b"".join(self.outgoing)
        self.outgoing.clear()
        self.outgoing_size = 0
        try:
            self.sock.send(data)
        except BlockingIOError:
            # The kernel handles netlink requests as they are sent; should it ever push back, wait.
            self.sock.setblocking(True)
            try:
                self.sock.send(data)
            finally:
                self.sock.setblocking(False)
        except OSError as error:
            self._error(f"sending verdicts: {error}")

    def _send_raw(self, packet: bytes, mark: int, info: PacketInfo) -> bool:
        """Send a whole IP packet, as it is, through a raw socket with this mark; whether it went. ``info``:
        the packet as ``parse_packet`` read it, before any bit was flipped."""
        family, destination = info.family, (info.destination, 0)
        try:
            raw = self.raw.get(family)
            if raw is None:
                # IPPROTO_RAW: the packet carries its own IP header (IP_HDRINCL implied).
                raw = self.raw[family] = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
                raw.setblocking(False)  # a full device queue must not stall the loop
                with contextlib.suppress(OSError):
                    raw.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, RAW_SNDBUF)
            if self.raw_marks.get(family) != mark:
                raw.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)  # the copy skips our rule
                self.raw_marks[family] = mark
            raw.sendto(packet, destination)
        except OSError as error:
            self._error(f"sending a packet through a raw socket: {error}")
            return False
        return True

    def _error(self, message: str) -> None:
        self.counters["errors"] += 1
        if self.errors_reported < 10:  # a stuck error must not flood the daemon's log
            self.errors_reported += 1
            print(f"packet_queue: {message}", file=sys.stderr, flush=True)

    # the event loop

    def _release_due(self) -> float | None:
        """Give held packets whose time has come their verdict; seconds until the next one is due."""
        held = self.held
        while held:
            now = time.monotonic()
            first = held[0]
            if first.due > now:
                return first.due - now
            heapq.heappop(held)
            self.held_bytes -= first.size
            late = (now - first.due) * 1000
            if late > self.counters["late_ms"]:
                self.counters["late_ms"] = round(late, 3)
            self._release(first.packet_id, first.mark, first.payload, first.copy, first.info)
        return None

    def _read(self) -> bool:
        """Handle the packets waiting on the socket, until a held packet is due or a burst is done; whether
        any were read."""
        view = memoryview(self.buffer)
        held = self.held
        for count in range(RECV_BURST):
            try:
                size = self.sock.recv_into(self.buffer)
            except BlockingIOError:
                return count > 0
            for kind, seq, body in _messages(view[:size]):
                self._handle(kind, seq, body)
            if held and held[0].due <= time.monotonic():
                break
        return True

    def run(self, wakeup: socket.socket) -> None:
        """Serve the queue until a signal arrives on ``wakeup``."""
        self.sock.setblocking(False)
        # select() takes microseconds; epoll rounds its timeout up to whole milliseconds.
        selector = selectors.SelectSelector()
        selector.register(self.sock, selectors.EVENT_READ, "queue")
        selector.register(wakeup, selectors.EVENT_READ, "signal")
        try:
            while True:
                timeout = self._release_due()
                self._flush()
                for key, _events in selector.select(timeout):
                    if key.data == "signal":
                        return
                    self._read()
                    self._flush()
        finally:
            selector.close()

    def stop(self) -> None:
        """Let every packet through at once, then unbind: nothing held is lost."""
        self.passthrough = True
        # A zero-length queue with fail-open accepts new packets without queueing them.
        with contextlib.suppress(QueueError, OSError):
            self._config(_attr(NFQA_CFG_QUEUE_MAXLEN, _BE32.pack(0)))
        while self.held:
            held = heapq.heappop(self.held)
            self.held_bytes -= held.size
            self._release(held.packet_id, held.mark, held.payload, held.copy, held.info)
        self._flush()
        while self._read():  # packets queued before the queue closed
            self._flush()
        self._flush()
        self.unbind()

    def close(self) -> None:
        self.sock.close()
        for raw in self.raw.values():
            raw.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Bind the queue, serve it until SIGTERM or SIGINT, print the counters; the exit status."""
    options = parse_args(argv)
    # Signals only wake the loop; the work happens between packets, never inside a handler.
    wakeup, wakeup_writer = socket.socketpair()
    wakeup.setblocking(False)
    wakeup_writer.setblocking(False)
    signal.set_wakeup_fd(wakeup_writer.fileno(), warn_on_full_buffer=False)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    try:
        queue = PacketQueue(options)
    except OSError as error:
        print(f"packet_queue: cannot open a netfilter netlink socket: {error}", file=sys.stderr)
        return 1
    # Held packets make many long-lived objects; the collector's passes over them would delay releases,
    # and nothing here makes reference cycles.
    gc.disable()
    try:
        queue.bind()
        print("ready", flush=True)
        queue.run(wakeup)
        queue.stop()
    except (QueueError, OSError) as error:
        print(f"packet_queue: {error}", file=sys.stderr)
        return 1
    finally:
        queue.close()
    with contextlib.suppress(BrokenPipeError):
        print(json.dumps(queue.counters), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
