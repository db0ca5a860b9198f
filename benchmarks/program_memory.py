"""The in-namespace programs' memory under floods: packet queue (--resend) and DNS responder, peak RSS from /proc.

Each program runs as the daemon runs it, as root in a target's network
namespace on the tests' network bed (tests/support/network_bed.py); the
floods come from that target, as a hostile or runaway workload would send
them, and the program's VmRSS (idle, before the flood) and VmHWM (its peak,
read from /proc/PID/status after the flood) are read from outside:

- packet queue, ``--delay-ms 600000 --resend`` (the daemon's egress delay):
  100,000 UDP packets of 1428 bytes (30,000 with --quick) to a peer, all to
  be held; its counters say how many it held and how many it dropped at its
  bound (MAX_HELD_PACKETS, MAX_HELD_BYTES);
- DNS responder, upstream a peer that never answers (2 s per query): 3.1 MB
  of queries pipelined on one TCP connection; then 300 connections
  pipelining at once (MAX_TCP_CONNECTIONS is 256); then a zone transfer the
  upstream sends without end (up to 256 MiB) to a client that reads nothing.

Figures are reported, not judged: a row has a goal where the program states a
bound. Run it against another tree's programs with PYTHONPATH (the programs
are imported from there; the floods from here).

    python3 -m benchmarks.program_memory [--quick]
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from pytest_chaos_daemon.programs import dns_responder, packet_queue

from benchmarks.report import Row, run_main
from tests.support import programs
from tests.support.network_bed import NetTarget, NetworkBed, udp_send
from tests.support.programs import memory_kb, start_program, stop_program

PACKETS, QUICK_PACKETS = 100_000, 30_000
PACKET_PAYLOAD = 1400  # 1428-byte IPv4 packets
BURST = 4000
PIPELINED_BYTES = 3_100_000
CONNECTIONS = 300
FLOOD_S, QUICK_FLOOD_S = 5.0, 3.0
TRANSFER_LIMIT = 256 << 20
UNREAD_S = 15.0  # past the responder's WRITE_TIMEOUT_S (10 s)
MARK_BIT = 0x10000
DNS_MARK = 0x2000
FLOOD_NAME = "www.example.net"


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f} MB"


@contextlib.contextmanager
def measured(process: Any) -> Iterator[dict[str, Any]]:
    """Idle RSS before the block, peak (VmHWM) after it, then the program stopped and its counters read."""
    figures: dict[str, Any] = {"idle": memory_kb(process.pid)["VmRSS"]}
    try:
        yield figures
        figures["peak"] = memory_kb(process.pid)["VmHWM"]
    finally:
        if process.poll() is None:
            figures["counters"], _ = stop_program(process)
        else:
            figures["counters"] = {"exited": process.returncode}


def packet_queue_flood(bed: NetworkBed, count: int) -> dict[str, Any]:
    target, peer = bed.process(name="queue-target"), bed.process(name="queue-peer")
    target.run("iptables", "-w", "-t", "mangle", "-A", "POSTROUTING", "-o", "eth0", "-d", peer.ip, "-m", "mark", "!",
               "--mark", f"{MARK_BIT:#x}/{MARK_BIT:#x}", "-j", "NFQUEUE", "--queue-num", "1", "--queue-bypass",
               check=True)
    program = start_program(target, "packet_queue", "--queue", "1", "--mark-bit", hex(MARK_BIT), "--delay-ms",
                            "600000", "--resend")
    with measured(program) as figures:
        # In bursts the queue's socket buffer takes whole: fail-open would let the rest pass, never held.
        figures["sent"] = sum(udp_send(target, peer.ip, 7011, count=BURST, interval_s=0, size=PACKET_PAYLOAD)
                              for _ in range(count // BURST))
        time.sleep(1)  # what the kernel still holds for the queue is read
    return figures


def responder(bed: NetTarget, upstream: NetTarget) -> tuple[Any, int]:
    port = random.randrange(20000, 60000)
    argv = dns_responder.responder_argv(port, DNS_MARK, "error", ["fault.example.com"], [upstream.ip])
    return start_program(bed, "dns_responder", *argv, "--timeout", "2"), port


def dns_flood(bed: NetworkBed, upstream_script: str, upstream_args: tuple[Any, ...],
              flood: Callable[[NetTarget, int], dict[str, Any]]) -> dict[str, Any]:
    target, upstream = bed.process(name="dns-target"), bed.process(name="dns-upstream")
    server = programs.background(upstream, upstream_script, upstream.ip, *upstream_args)
    try:
        process, port = responder(target, upstream)
        with measured(process) as figures:
            figures["flood"] = flood(target, port)
    finally:
        seen = programs.finish(server)
    return {**figures, "upstream": seen}


def summary(figures: dict[str, Any], *keys: str) -> str:
    counters = figures["counters"]
    return ", ".join(f"{key} {counters[key]}" for key in keys if key in counters) or str(counters)


def rows(quick: bool) -> list[Row]:
    count = QUICK_PACKETS if quick else PACKETS
    seconds = QUICK_FLOOD_S if quick else FLOOD_S
    held_bytes = getattr(packet_queue, "MAX_HELD_BYTES", None)
    held_packets = getattr(packet_queue, "MAX_HELD_PACKETS", None)
    with NetworkBed() as bed:
        queue = packet_queue_flood(bed, count)
        pipelined = dns_flood(bed, programs.SILENT_UPSTREAM, (), lambda target, port: programs.tool(
            target, programs.DNS_TCP_FLOOD, port, FLOOD_NAME, PIPELINED_BYTES, seconds))
        connections = dns_flood(bed, programs.SILENT_UPSTREAM, (), lambda target, port: programs.tool(
            target, programs.DNS_TCP_CONNECTIONS, port, FLOOD_NAME, CONNECTIONS, seconds))
        transfer = dns_flood(bed, programs.ENDLESS_TRANSFER, (TRANSFER_LIMIT,), lambda target, port: programs.tool(
            target, programs.UNREAD_TRANSFER, port, "example.com", UNREAD_S))
    queue_goal = ""
    if held_bytes is not None and held_packets is not None:
        queue_goal = f"<= idle + {mb((held_bytes + held_packets * 1024) / 1024)}"
    result = [
        Row(f"packet_queue --resend: peak RSS, {queue['sent']} UDP packets of {PACKET_PAYLOAD + 28} B to hold",
            mb(queue["peak"]), f"idle {mb(queue['idle'])}", queue["peak"] / queue["idle"], queue_goal,
            queue["peak"] - queue["idle"] <= (held_bytes + held_packets * 1024) / 1024 if queue_goal else None),
        Row("  its counters", summary(queue, "seen", "delayed", "resent", "overflowed", "errors", "exited")),
    ]
    for name, figures, detail in (
            (f"{PIPELINED_BYTES / 1e6:.1f} MB pipelined on one connection for {seconds:g} s", pipelined,
             lambda f: f"client wrote {f['flood']['sent']} B; at the upstream at most {f['upstream']['most_at_once']}"
                       " queries at once"),
            (f"{CONNECTIONS} connections pipelining for {seconds:g} s", connections,
             lambda f: f"{f['flood']['closed_by_responder']} closed by the responder; at the upstream at most "
                       f"{f['upstream']['most_at_once']} queries at once"),
            (f"a zone transfer (up to {TRANSFER_LIMIT >> 20} MiB) to a client reading nothing for {UNREAD_S:g} s",
             transfer, lambda f: f"upstream got out {sum(f['upstream']['sent']) / 2**20:.1f} MiB; client cut off: "
                                 f"{f['flood']['closed_by_responder']}")):
        result += [
            Row(f"dns_responder: peak RSS, {name}", mb(figures["peak"]), f"idle {mb(figures['idle'])}",
                figures["peak"] / figures["idle"]),
            Row(f"  {detail(figures)}", summary(figures, "queries", "overloaded", "connections_refused",
                                                "slow_readers", "errors", "exited")),
        ]
    return result


def main() -> int:
    return run_main(__doc__, "In-namespace programs' memory: peak RSS (VmHWM) under floods from a target", rows,
                    f"{QUICK_PACKETS} packets instead of {PACKETS}, floods of {QUICK_FLOOD_S:g} s instead of {FLOOD_S:g}")


if __name__ == "__main__":
    sys.exit(main())
