"""What every transparent proxy the daemon runs in a target's network namespace shares.

The daemon redirects a target's TCP traffic on one port (iptables REDIRECT,
see ``faults/redirect_proxy.py``) to a proxy program listening on a port it
picked. A proxy accepts the redirected connection, finds where it was going
(``SO_ORIGINAL_DST``), connects on there from a socket carrying the firewall
mark the redirect skips, and hands both ends to its handler: the TCP toxics
(``tcp_proxy.py``) or HTTP faults. This module is that common part: the
listener, the connection bound, the upstream connection, the counters, the
command line (``--port``, ``--mark``, ``--seed``), ``ready`` on stdout once
listening and one JSON line of counters on SIGTERM.

Bounds. At most MAX_CONNECTIONS connections at once: past it a new one is
reset at once (``refused``). A connection's stream readers hold at most
READ_LIMIT bytes (asyncio pauses reading at twice that) and its writers at
most WRITE_HIGH_WATER before ``drain`` waits: data a peer sends faster than
the other end reads waits in the kernel's buffers, not here. Handlers keep
to those bounds (``pipe``), so memory does not grow with what a peer sends.
Nothing here blocks: every socket is non-blocking and every wait is awaited.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import signal
import socket
import struct
import sys
from collections.abc import Awaitable, Callable

LISTEN_ADDRESS = "0.0.0.0"  # a PREROUTING REDIRECT goes to the incoming interface's address, OUTPUT's to 127.0.0.1
MAX_CONNECTIONS = 256
READ_SIZE = 16 << 10
READ_LIMIT = 32 << 10
WRITE_HIGH_WATER = 32 << 10
CONNECT_TIMEOUT_S = 10.0
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
SO_MARK = getattr(socket, "SO_MARK", 36)

Counters = dict[str, int]


@dataclasses.dataclass
class Connection:
    """One redirected connection: the client's end, where it was going, and the means to go there."""

    number: int  # in the order accepted, from 0
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    destination: tuple[str, int]
    mark: int
    rng: random.Random  # this connection's own draws, from the proxy's seed
    counters: Counters

    async def connect_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the original destination, from a marked socket (the redirect skips it)."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, self.mark)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, self.destination), CONNECT_TIMEOUT_S)
            reader, writer = await asyncio.open_connection(sock=sock, limit=READ_LIMIT)
        except BaseException:
            self.counters["upstream_failed"] += 1
            sock.close()
            raise
        writer.transport.set_write_buffer_limits(WRITE_HIGH_WATER)
        return reader, writer


# What a proxy does with each connection; it returns when the connection is done (both ends are closed after).
Handler = Callable[[Connection], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
    port: int
    mark: int
    seed: int = 0  # 0: unseeded
    max_connections: int = MAX_CONNECTIONS


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where a redirected connection was going (``SO_ORIGINAL_DST``)."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset rather than a FIN (SO_LINGER 0): the peer reads ECONNRESET."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def close(writer: asyncio.StreamWriter) -> None:
    """Close gracefully (a FIN), not waiting on a peer that never reads."""
    writer.close()
    with contextlib.suppress(OSError, asyncio.TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counters: Counters, counter: str) -> None:
    """Copy until end of stream, then half-close ``writer``; waits for the writer to drain (backpressure)."""
    while data := await reader.read(READ_SIZE):
        counters[counter] = counters.get(counter, 0) + len(data)
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        with contextlib.suppress(OSError):
            writer.write_eof()


class Proxy:
    """Accepts redirected connections and runs ``handler`` on each, within the bounds."""

    def __init__(self, config: ProxyConfig, handler: Handler) -> None:
        self.config = config
        self.handler = handler
        self.rng = random.Random(config.seed) if config.seed else random.Random()
        self.counters: Counters = {"accepted": 0, "refused": 0, "direct": 0, "upstream_failed": 0, "errors": 0}
        self._open: set[asyncio.Task[None]] = set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.set_write_buffer_limits(WRITE_HIGH_WATER)
        sock: socket.socket = writer.get_extra_info("socket")
        if len(self._open) >= self.config.max_connections:
            self.counters["refused"] += 1
            reset(writer)
            return
        try:
            destination = original_destination(sock)
        except OSError:
            destination = sock.getsockname()[:2]
        if destination[1] == self.config.port:  # reached directly, not redirected: going on would loop
            self.counters["direct"] += 1
            reset(writer)
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        number = self.counters["accepted"]
        self.counters["accepted"] += 1
        connection = Connection(number, reader, writer, destination, self.config.mark,
                                random.Random(self.rng.getrandbits(64)), self.counters)
        task = asyncio.current_task()
        assert task is not None
        self._open.add(task)
        try:
            await self.handler(connection)
        except OSError:  # a peer went away, or the destination refused (ConnectionError, TimeoutError)
            reset(writer)
        except Exception as err:  # no connection's trouble ends the proxy, which would end the fault
            self.counters["errors"] += 1
            print(f"connection {number}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            reset(writer)
        finally:
            self._open.discard(task)
            if not writer.is_closing():
                await close(writer)

    async def serve(self, ready: Callable[[], None]) -> Counters:
        """Serve until SIGTERM or SIGINT; the counters."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        server = await asyncio.start_server(self._accept, LISTEN_ADDRESS, self.config.port, limit=READ_LIMIT,
                                            reuse_address=True, backlog=128)
        try:
            ready()
            await stop.wait()
        finally:
            server.close()
            for task in list(self._open):
                task.cancel()
        return {key: value for key, value in self.counters.items() if not key.startswith("_")}


def check_port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535; got {port}")
    return port


def check_mark(text: str) -> int:
    mark = int(text, 0)
    if not 0 < mark < 1 << 32:
        raise argparse.ArgumentTypeError(f"a firewall mark is 1 to 2**32-1; got {text}")
    return mark


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every proxy takes."""
    parser.add_argument("--port", type=check_port, required=True, help="the port to listen on (every address)")
    parser.add_argument("--mark", type=check_mark, required=True,
                        help="the firewall mark of the proxy's own connections, which the redirect skips")
    parser.add_argument("--seed", type=int, default=0, help="seeds each connection's random draws; 0: unseeded")


def proxy_argv(port: int, mark: int, seed: int = 0) -> list[str]:
    """The common options, as ``add_arguments`` reads them; ValueError on bad input."""
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1 to 65535; got {port}")
    if not 0 < mark < 1 << 32:
        raise ValueError(f"mark must be 1 to 2**32-1; got {mark}")
    return ["--port", str(port), "--mark", hex(mark), *(["--seed", str(seed)] if seed else [])]


def run(config: ProxyConfig, handler: Handler) -> int:
    """Serve until SIGTERM; print ``ready`` once listening and the counters (one JSON line) at the end."""
    counters = asyncio.run(Proxy(config, handler).serve(lambda: print("ready", flush=True)))
    print(json.dumps(counters), flush=True)
    return 0


__all__ = ["Connection", "Handler", "Proxy", "ProxyConfig", "add_arguments", "close", "original_destination", "pipe",
           "proxy_argv", "reset", "run"]
