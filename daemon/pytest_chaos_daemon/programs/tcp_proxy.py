"""Toxiproxy's toxics, in a transparent proxy: the program behind the ``tcp-*`` kinds.

The daemon runs it in the target's network namespace and redirects the
target's traffic on one port to it (``faults/tcp_toxic.py``); what proxies
share (listening, ``SO_ORIGINAL_DST``, the connection bound, the upstream
connection) is ``transparent_proxy.py``. Each connection gets the toxic
with probability ``--toxicity`` (drawn once per connection, as Toxiproxy)
on one direction, ``--stream``: ``downstream`` (server to client, the
default) or ``upstream``. The other direction, and a connection the draw
spares, is copied unchanged.

Toxics, with Toxiproxy's names and units: ``latency`` (``--latency`` ms,
``--jitter`` ms: each chunk is held latency +/- jitter after it was read),
``bandwidth`` (``--rate`` KB/s, 1 KB = 1000 bytes), ``slow_close``
(``--delay`` ms before the end of the stream is passed on), ``timeout``
(``--timeout`` ms: nothing passes, then the connection closes; 0: held
until the fault ends), ``reset_peer`` (``--timeout`` ms, then both ends are
reset), ``slicer`` (``--average-size``, ``--size-variation`` bytes,
``--delay`` microseconds between slices), ``limit_data`` (``--bytes``: the
connection closes once that many have passed).

Bounds: those of ``transparent_proxy.py``, and a latency toxic holds at most
LATENCY_BUFFER bytes of one direction in flight (its reader waits past
that), so throughput under latency L is at most LATENCY_BUFFER / L.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

from . import transparent_proxy as proxy

TOXICS = ("latency", "bandwidth", "slow_close", "timeout", "reset_peer", "slicer", "limit_data")
STREAMS = ("downstream", "upstream")
LATENCY_BUFFER = 256 << 10
BANDWIDTH_SLICE_S = 0.1  # a slow rate is written in pieces of 100 ms' worth, as Toxiproxy


@dataclasses.dataclass(frozen=True)
class Toxic:
    name: str
    stream: str = "downstream"
    toxicity: float = 1.0
    latency: int = 0
    jitter: int = 0
    rate: int = 0
    delay: int = 0  # slow_close: ms; slicer: microseconds
    timeout: int = 0
    average_size: int = 0
    size_variation: int = 0
    bytes: int = 0


Flow = Callable[[asyncio.StreamReader, asyncio.StreamWriter, proxy.Connection, Toxic, str], Awaitable[None]]


class Closed(Exception):
    """The toxic ends the whole connection (gracefully unless ``reset``)."""

    def __init__(self, reset: bool = False) -> None:
        super().__init__("reset" if reset else "closed")
        self.reset = reset


def _count(connection: proxy.Connection, counter: str, size: int) -> None:
    connection.counters[counter] = connection.counters.get(counter, 0) + size


def _end(writer: asyncio.StreamWriter) -> None:
    if writer.can_write_eof() and not writer.is_closing():
        with contextlib.suppress(OSError):
            writer.write_eof()


async def latency(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: proxy.Connection,
                  toxic: Toxic, counter: str) -> None:
    """Each chunk leaves latency +/- jitter ms after it arrived (never before the chunk ahead of it)."""
    held: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()  # None: the source failed
    room = asyncio.Semaphore(LATENCY_BUFFER // proxy.READ_SIZE)  # chunks read and not yet written

    async def read() -> None:
        while True:
            await room.acquire()
            try:
                data = await reader.read(proxy.READ_SIZE)
            except OSError:
                await held.put((0.0, None))
                return
            jitter = connection.rng.uniform(-toxic.jitter, toxic.jitter) if toxic.jitter else 0.0
            await held.put((time.monotonic() + max(0.0, toxic.latency + jitter) / 1000, data))
            if not data:
                return

    reading = asyncio.ensure_future(read())
    try:
        while True:
            due, data = await held.get()
            if data is None:
                raise ConnectionResetError("the sending peer's connection failed")
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                _end(writer)
                return
            _count(connection, counter, len(data))
            writer.write(data)
            await writer.drain()
            room.release()
    finally:
        reading.cancel()


async def bandwidth(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: proxy.Connection,
                    toxic: Toxic, counter: str) -> None:
    """At most ``rate`` KB (1000 bytes) a second, written in slices of 100 ms' worth."""
    per_s = toxic.rate * 1000
    piece = max(1, int(per_s * BANDWIDTH_SLICE_S))
    due = time.monotonic()
    while data := await reader.read(proxy.READ_SIZE):
        for start in range(0, len(data), piece):
            part = data[start:start + piece]
            due = max(due, time.monotonic()) + len(part) / per_s
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            _count(connection, counter, len(part))
            writer.write(part)
            await writer.drain()
    _end(writer)


async def slow_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: proxy.Connection,
                     toxic: Toxic, counter: str) -> None:
    """Data passes; the end of the stream is passed on ``delay`` ms late."""
    await proxy.pipe(reader, _NoEof(writer), connection.counters, counter)  # type: ignore[arg-type]
    await asyncio.sleep(toxic.delay / 1000)
    raise Closed()


async def timeout(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: proxy.Connection,
                  toxic: Toxic, counter: str) -> None:
    """Nothing passes (nothing is read: the sender fills its window); after ``timeout`` ms the connection
    closes; 0: never (until the fault ends)."""
    if toxic.timeout == 0:
        await asyncio.Event().wait()
    await asyncio.sleep(toxic.timeout / 1000)
    raise Closed()


async def reset_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: proxy.Connection,
                     toxic: Toxic, counter: str) -> None:
    """Data passes until ``timeout`` ms after the connection opened; then both ends are reset."""
    async def until_reset() -> None:
        await proxy.pipe(reader, writer, connection.counters, counter)
        await asyncio.Event().wait()  # the stream ended first: the reset is still due

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(until_reset(), toxic.timeout / 1000)
    raise Closed(reset=True)


async def slicer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: proxy.Connection,
                 toxic: Toxic, counter: str) -> None:
    """Each chunk is written in slices of average_size +/- size_variation bytes, ``delay`` microseconds
    apart."""
    while data := await reader.read(proxy.READ_SIZE):
        start = 0
        while start < len(data):
            size = toxic.average_size + (connection.rng.randint(-toxic.size_variation, toxic.size_variation)
                                         if toxic.size_variation else 0)
            part = data[start:start + max(1, size)]
            start += len(part)
            _count(connection, counter, len(part))
            writer.write(part)
            await writer.drain()
            if toxic.delay and start < len(data):
                await asyncio.sleep(toxic.delay / 1e6)
    _end(writer)


async def limit_data(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: proxy.Connection,
                     toxic: Toxic, counter: str) -> None:
    """The first ``bytes`` bytes pass; then the connection closes."""
    left = toxic.bytes
    while left > 0 and (data := await reader.read(min(proxy.READ_SIZE, left))):
        left -= len(data)
        _count(connection, counter, len(data))
        writer.write(data)
        await writer.drain()
    raise Closed()


FLOWS: dict[str, Flow] = {"latency": latency, "bandwidth": bandwidth, "slow_close": slow_close, "timeout": timeout,
                          "reset_peer": reset_peer, "slicer": slicer, "limit_data": limit_data}


class _NoEof:
    """A writer whose end of stream is held back (slow_close passes it on itself)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    def can_write_eof(self) -> bool:
        return False


def handler(toxic: Toxic) -> proxy.Handler:
    """The connection handler for ``toxic``."""
    async def handle(connection: proxy.Connection) -> None:
        up_reader, up_writer = await connection.connect_upstream()
        try:
            toxic_here = connection.rng.random() < toxic.toxicity
            _count(connection, "toxic" if toxic_here else "spared", 1)
            flows: list[Awaitable[None]] = []
            for stream, (source, sink) in {"upstream": (connection.reader, up_writer),
                                           "downstream": (up_reader, connection.writer)}.items():
                counter = f"{stream}_bytes"
                if toxic_here and stream == toxic.stream:
                    flows.append(FLOWS[toxic.name](source, sink, connection, toxic, counter))
                else:
                    flows.append(proxy.pipe(source, sink, connection.counters, counter))
            tasks = [asyncio.ensure_future(flow) for flow in flows]
            try:
                for finished in asyncio.as_completed(tasks):
                    await finished  # Closed (or a peer's error) ends both directions at once
            finally:
                for task in tasks:
                    task.cancel()
        except Closed as closed:
            if closed.reset:
                proxy.reset(up_writer)
                proxy.reset(connection.writer)
                _count(connection, "reset", 1)
            else:
                await proxy.close(connection.writer)
        finally:
            if not up_writer.is_closing():
                await proxy.close(up_writer)

    return handle


def toxic_argv(toxic: Toxic) -> list[str]:
    """The toxic's options, as ``build_parser`` reads them; ValueError on a toxic it does not know."""
    if toxic.name not in TOXICS:
        raise ValueError(f"toxic must be one of {', '.join(TOXICS)}; got {toxic.name!r}")
    argv = ["--toxic", toxic.name, "--stream", toxic.stream, "--toxicity", repr(toxic.toxicity)]
    for field in dataclasses.fields(Toxic):
        if field.name not in ("name", "stream", "toxicity"):
            value = getattr(toxic, field.name)
            if value:
                argv += [f"--{field.name.replace('_', '-')}", str(value)]
    return argv


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more; got {value}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be 0 to 1; got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m pytest_chaos_daemon.programs.tcp_proxy",
        description="A transparent TCP proxy applying one of Toxiproxy's toxics to redirected connections. "
                    "Prints 'ready' once listening; on SIGTERM, one JSON line of counters.")
    proxy.add_arguments(parser)
    parser.add_argument("--toxic", choices=TOXICS, required=True)
    parser.add_argument("--stream", choices=STREAMS, default="downstream")
    parser.add_argument("--toxicity", type=_share, default=1.0)
    for name in ("latency", "jitter", "rate", "delay", "timeout", "average-size", "size-variation", "bytes"):
        parser.add_argument(f"--{name}", type=_non_negative, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    toxic = Toxic(args.toxic, args.stream, args.toxicity, args.latency, args.jitter, args.rate, args.delay,
                  args.timeout, args.average_size, args.size_variation, args.bytes)
    if toxic.name == "bandwidth" and toxic.rate < 1:
        print("--rate must be 1 KB/s or more", file=sys.stderr)
        return 2
    return proxy.run(proxy.ProxyConfig(args.port, args.mark, args.seed), handler(toxic))


if __name__ == "__main__":
    sys.exit(main())
