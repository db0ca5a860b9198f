"""HTTPChaos without a sidecar: a transparent HTTP/1.1 proxy that applies one rule.

The daemon runs this program as root in the target's network namespace, next
to an iptables nat REDIRECT of the target's TCP port to ``--port``
(``faults/redirect_proxy.py``). What every such proxy shares, the listener,
the connection bound, the connection on to the original destination
(``SO_ORIGINAL_DST``) from a socket carrying ``--mark``, the command line and
the counters, is ``transparent_proxy.py``; this module is the HTTP handler.

HTTP/1.1 is parsed on both sides by h11 (strict; keep-alive and pipelined
requests are taken one exchange at a time). For each exchange the rule
(``pytest_chaos_daemon.api.http_rule``, passed as JSON in ``--rule``) selects
the request by ``path`` (glob), ``method`` and ``request_headers`` and, for
target Response, the response by ``code`` and ``response_headers`` too, as
Chaos Mesh's chaos-tproxy does; then, in Chaos Mesh's order: ``abort`` (the
client's connection is closed, no response), ``delay``, ``replace`` (path,
method, queries, headers, body; code for a response), ``patch`` (queries and
headers appended, the body JSON-merge-patched).

Where this differs from chaos-tproxy (documented in docs/kinds/http.md):
``replace.queries`` replaces each given key's values in place and appends the
keys the query lacks, keeping the other pairs and their order (chaos-tproxy
re-encodes the query from a map, losing repeated keys and order); a body to
replace or patch is read into memory up to BODY_LIMIT (1 MiB): a longer one
passes unchanged, as does a body a JSON patch cannot parse (chaos-tproxy drops
the connection), both counted (``body_too_large``, ``patch_not_json``); a body
of a response to HEAD or of a 204/304 is never added.

Malformed input. A request h11 refuses is answered 400 and its connection
closed; an upstream response h11 refuses, 502. Counted (``malformed``,
``upstream_malformed``). Nothing a client or a server sends ends the program,
which would end the fault: an unexpected error is counted (``errors``) and
reported on stderr, and only that connection closes.

Bounds. transparent_proxy's (256 connections; reads written on before the
next, so a slow reader holds back its writer through TCP); a message head of
at most MAX_HEAD (64 KiB); a body held for replace or patch
at most BODY_LIMIT, and all such bodies together at most BUFFER_BUDGET (32
MiB, each counted until it has been sent on, in READ_SIZE slices), past which
a body passes unchanged. Measured on the network bed: 200 clients at once
each posting a 900 KB JSON body to patch, peak RSS 118-132 MB from 23 MB
idle (before bodies were counted until sent, and sent in slices: 261 MB). A
client idle for IDLE_TIMEOUT_S
between requests, or a peer that has read nothing for WRITE_TIMEOUT_S, is cut
off.

Run as ``python3 -m pytest_chaos_daemon.programs.http_proxy --help``. It prints
``ready`` once it listens and, on SIGTERM, one JSON line of counters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http
import json
import sys
import urllib.parse
from collections.abc import Sequence
from typing import Any

import h11

from ..api.http_rule import RuleError, check_rule, glob_matches, merge_patch, replace_body
from . import transparent_proxy
from .transparent_proxy import Connection, Counters

__all__ = ["HttpHandler", "main", "rule_argv"]

MAX_HEAD = 64 << 10  # h11's limit on a message head (request line and headers) being received
READ_SIZE = transparent_proxy.READ_SIZE
BODY_LIMIT = 1 << 20
BUFFER_BUDGET = 32 << 20
IDLE_TIMEOUT_S = 60.0
WRITE_TIMEOUT_S = 30.0
FRAMING = (b"content-length", b"transfer-encoding")


class Switched(Exception):
    """Both sides left HTTP (101 Switching Protocols): the connection is relayed unchanged from here."""


class Closed(Exception):
    """The exchange ends here and the client's connection with it (abort, a peer gone, a protocol error)."""


def rule_argv(rule: dict[str, Any]) -> list[str]:
    """The program's own option after transparent_proxy's (``--port``, ``--mark``): the rule, as JSON;
    RuleError on a bad rule, so the daemon refuses a request before it changes anything."""
    return [f"--rule={json.dumps(check_rule(rule), separators=(',', ':'))}"]


# --- selecting and changing messages ---------------------------------------------------------------


def _header_values(headers: Sequence[tuple[bytes, bytes]], name: str) -> list[bytes]:
    key = name.lower().encode()
    return [value for field, value in headers if field.lower() == key]


def _headers_match(headers: Sequence[tuple[bytes, bytes]], wanted: Sequence[Sequence[str]]) -> bool:
    """Each wanted (name, value) is one of the header's values, exactly, as chaos-tproxy matches."""
    return all(value.encode() in _header_values(headers, name) for name, value in wanted)


def request_selected(rule: dict[str, Any], method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]]) \
        -> bool:
    path = target.split(b"?", 1)[0].decode("latin-1")
    return ((rule["path"] is None or glob_matches(rule["path"], path))
            and (rule["method"] is None or rule["method"].encode() == method)
            and _headers_match(headers, rule["request_headers"]))


def response_selected(rule: dict[str, Any], status: int, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    return (rule["code"] is None or rule["code"] == status) and _headers_match(headers, rule["response_headers"])


def _set_headers(headers: list[tuple[bytes, bytes]], pairs: Sequence[Sequence[str]], replace: bool) \
        -> list[tuple[bytes, bytes]]:
    for name, value in pairs:
        key = name.lower().encode()
        if replace:
            headers = [(field, old) for field, old in headers if field.lower() != key]
        headers.append((name.encode(), value.encode()))
    return headers


def change_target(target: bytes, replace: dict[str, Any] | None, patch: dict[str, Any] | None) -> bytes:
    """The request target after replace's path and queries, then patch's queries."""
    path, question, query = target.decode("latin-1").partition("?")
    if replace and replace["path"] is not None:
        path = replace["path"]
    if replace and replace["queries"]:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        for key, value in replace["queries"]:
            if any(k == key for k, _ in pairs):
                pairs = [(k, value if k == key else v) for k, v in pairs]
            else:
                pairs.append((key, value))
        query, question = urllib.parse.urlencode(pairs), "?"
    if patch and patch["queries"]:
        extra = urllib.parse.urlencode([tuple(pair) for pair in patch["queries"]])
        query, question = f"{query}&{extra}" if query else extra, "?"
    return (path + (question + query if query else "")).encode("latin-1")


def change_body(body: bytes, replace: dict[str, Any] | None, patch: dict[str, Any] | None, rule: dict[str, Any]) \
        -> bytes | None:
    """The new body, or None when a JSON patch cannot read the body (it then passes unchanged)."""
    replaced = replace_body(rule) if replace else None
    new = body if replaced is None else replaced
    if patch and patch["body"] is not None:
        try:
            document = json.loads(new)
        except (ValueError, RecursionError):
            return None
        new = json.dumps(merge_patch(document, json.loads(patch["body"]["value"])),
                         separators=(",", ":")).encode()
    return new


def _wants_body(actions: dict[str, Any]) -> bool:
    return bool((actions["replace"] and actions["replace"]["body"] is not None)
                or (actions["patch"] and actions["patch"]["body"] is not None))


# --- the proxy -------------------------------------------------------------------------------------


class _Peer:
    """One side of a proxied connection: its stream and h11's view of it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, role: Any) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(role, max_incomplete_event_size=MAX_HEAD)
        # The start of a body read to be changed that turned out too long: sent on as it was, counted in the
        # proxy's budget until it has been.
        self.held: list[bytes] = []
        self.held_size = 0

    async def next_event(self, timeout: float | None = None) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            read = self.reader.read(READ_SIZE)
            data = await (asyncio.wait_for(read, timeout) if timeout else read)
            self.h11.receive_data(data)

    async def send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), WRITE_TIMEOUT_S)

    def close(self) -> None:
        self.writer.close()


COUNTERS = ("requests", "selected", "aborted", "delayed", "replaced", "patched", "body_too_large", "patch_not_json",
            "malformed", "upstream_malformed")


class _Counts:
    """The HTTP counters, kept in the proxy's shared counters (printed on SIGTERM)."""

    def __init__(self, counters: Counters) -> None:
        for name in COUNTERS:
            counters.setdefault(name, 0)
        self.shared = counters

    def __getitem__(self, name: str) -> int:
        return self.shared[name]

    def __setitem__(self, name: str, value: int) -> None:
        self.shared[name] = value


class HttpHandler:
    """transparent_proxy's handler: each exchange of one redirected connection, by the rule."""

    def __init__(self, rule: dict[str, Any]) -> None:
        self.rule = rule
        self.buffered = 0  # bytes of bodies held, over every connection

    async def __call__(self, connection: Connection) -> None:
        await _Exchanges(self, connection).run()


class _Exchanges:
    """One connection's exchanges, in turn (keep-alive, pipelining): a new upstream connection whenever the last
    cannot carry another request."""

    def __init__(self, handler: HttpHandler, connection: Connection) -> None:
        self.handler = handler
        self.rule = handler.rule
        self.connection = connection
        self.counters = _Counts(connection.counters)

    @property
    def buffered(self) -> int:
        return self.handler.buffered

    @buffered.setter
    def buffered(self, value: int) -> None:
        self.handler.buffered = value

    async def run(self) -> None:
        client = _Peer(self.connection.reader, self.connection.writer, h11.SERVER)
        upstream: _Peer | None = None
        try:
            while True:
                if upstream is None or upstream.h11.our_state is not h11.IDLE:
                    if upstream is not None:
                        upstream.close()
                    upstream = _Peer(*await self.connection.connect_upstream(), h11.CLIENT)
                try:
                    if not await self._exchange(client, upstream):
                        break
                except Switched:
                    await _relay(client, upstream)
                    break
                if client.h11.our_state is h11.DONE and client.h11.their_state is h11.DONE:
                    client.h11.start_next_cycle()
                else:
                    break
                if upstream.h11.our_state is h11.DONE and upstream.h11.their_state is h11.DONE:
                    upstream.h11.start_next_cycle()
        except (Closed, asyncio.IncompleteReadError, h11.ProtocolError):
            pass  # the exchange ended the connection (abort, a peer's protocol error): closed by the caller
        except asyncio.CancelledError:
            pass  # the proxy stops (SIGTERM): on Python 3.11 a cancelled stream handler is reported as an error
        finally:
            self._release(client)
            if upstream is not None:
                self._release(upstream)
                upstream.close()

    async def _exchange(self, client: _Peer, upstream: _Peer) -> bool:
        """One request and its response; False when the client closed its connection between requests."""
        try:
            request = await client.next_event(IDLE_TIMEOUT_S)
        except h11.RemoteProtocolError:
            self.counters["malformed"] += 1
            await self._refuse(client, 400)
            raise Closed from None
        if isinstance(request, h11.ConnectionClosed):
            return False
        self.counters["requests"] += 1
        rule = self.rule
        headers = list(request.headers.raw_items())
        selected = request_selected(rule, request.method, request.target, headers)
        if selected and rule["target"] == "Request":
            self.counters["selected"] += 1
            request, headers, body = await self._act_on_request(client, request, headers)
        else:
            body = None
        await upstream.send(h11.Request(method=request.method, target=request.target, headers=headers,
                                        http_version=request.http_version))
        # The request's body goes up while the response comes down: a server may answer 100 Continue first.
        pump = asyncio.create_task(self._send_body(client, upstream, body))
        respond = asyncio.create_task(
            self._respond(client, upstream, request.method, selected and rule["target"] == "Response"))
        try:
            await asyncio.wait((pump, respond), return_when=asyncio.FIRST_EXCEPTION)
            if pump.done() and pump.exception() is not None:
                raise Closed  # the client went away in the middle of its request
            await respond
            if not pump.done():  # answered before the request's body ended: the connection cannot go on
                raise Closed
        finally:
            for task in (pump, respond):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        return True

    async def _act_on_request(self, client: _Peer, request: Any, headers: list[tuple[bytes, bytes]]) \
            -> tuple[Any, list[tuple[bytes, bytes]], bytes | None]:
        rule = self.rule
        if rule["abort"]:
            self.counters["aborted"] += 1
            raise Closed
        if rule["delay_s"]:
            self.counters["delayed"] += 1
            await asyncio.sleep(rule["delay_s"])
        replace, patch = rule["replace"], rule["patch"]
        method, target = request.method, request.target
        if replace:
            self.counters["replaced"] += 1
            if replace["method"] is not None:
                method = replace["method"].encode()
            headers = _set_headers(headers, replace["headers"], replace=True)
        if patch:
            self.counters["patched"] += 1
            headers = _set_headers(headers, patch["headers"], replace=False)
        target = change_target(target, replace, patch)
        body = None
        if _wants_body(rule):
            if client.h11.client_is_waiting_for_100_continue:
                # The body is read here, before the server sees the request: the client is told to send it, and
                # the server is not asked to say so again.
                await client.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue"))
                headers = [(k, v) for k, v in headers if k.lower() != b"expect"]
            original = await self._read_body(client)
            body = None if original is None else change_body(original, replace, patch, rule)
            if original is not None and body is None:
                self.counters["patch_not_json"] += 1
                body = original
            if body is not None:
                headers = [(k, v) for k, v in headers if k.lower() not in FRAMING]
                headers.append((b"Content-Length", str(len(body)).encode()))
        changed = h11.Request(method=method, target=target, headers=headers, http_version=request.http_version)
        return changed, headers, body

    async def _read_body(self, peer: _Peer) -> bytes | None:
        """The whole body of the message being received, or None when it is longer than the proxy may hold (its
        own BODY_LIMIT, or the BUFFER_BUDGET of all connections): then what was read waits in ``peer.held`` and
        the rest streams on unchanged after it. Either way what was read stays counted in the budget until it has
        been sent on (``_release``)."""
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                event = await peer.next_event()
                if isinstance(event, h11.EndOfMessage):
                    peer.held_size, size = size, 0  # still counted until sent on (``_release``)
                    return b"".join(chunks)
                if not isinstance(event, h11.Data):
                    raise Closed
                chunks.append(event.data)
                size += len(event.data)
                self.buffered += len(event.data)
                if size > BODY_LIMIT or self.buffered > BUFFER_BUDGET:
                    self.counters["body_too_large"] += 1
                    peer.held, peer.held_size = chunks, size
                    size = 0  # released once sent (``_release``)
                    return None
        finally:
            self.buffered -= size

    def _release(self, peer: _Peer) -> None:
        self.buffered -= peer.held_size
        peer.held, peer.held_size = [], 0

    async def _send_body(self, source: _Peer, sink: _Peer, body: bytes | None) -> None:
        """The request's body, from ``body`` (read and changed) or streamed from the client."""
        if body is not None:
            try:
                await _send_in_slices(sink, body)
            finally:
                self._release(source)
            await sink.send(h11.EndOfMessage())
            return
        try:
            for chunk in source.held:
                await sink.send(h11.Data(data=chunk))
        finally:
            self._release(source)
        while True:
            event = await source.next_event()
            if isinstance(event, h11.EndOfMessage):
                await sink.send(event)
                return
            if not isinstance(event, h11.Data):
                raise Closed
            await sink.send(event)

    async def _respond(self, client: _Peer, upstream: _Peer, method: bytes, request_selected_: bool) -> None:
        try:
            response = await upstream.next_event()
            while isinstance(response, h11.InformationalResponse):  # 100 Continue, 103: passed on as they come
                await client.send(response)
                if response.status_code == 101:  # the protocol switched (a WebSocket): bytes from now on
                    raise Switched
                response = await upstream.next_event()
        except h11.RemoteProtocolError:
            self.counters["upstream_malformed"] += 1
            await self._refuse(client, 502)
            raise Closed from None
        if isinstance(response, h11.ConnectionClosed):
            await self._refuse(client, 502)
            raise Closed
        rule = self.rule
        status, headers, reason = response.status_code, list(response.headers.raw_items()), response.reason
        body: bytes | None = None
        if request_selected_ and response_selected(rule, status, headers):
            self.counters["selected"] += 1
            if rule["abort"]:
                self.counters["aborted"] += 1
                raise Closed
            if rule["delay_s"]:
                self.counters["delayed"] += 1
                await asyncio.sleep(rule["delay_s"])
            replace, patch = rule["replace"], rule["patch"]
            if replace:
                self.counters["replaced"] += 1
                if replace["code"] is not None:
                    status = replace["code"]
                    reason = _reason(status)
                headers = _set_headers(headers, replace["headers"], replace=True)
            if patch:
                self.counters["patched"] += 1
                headers = _set_headers(headers, patch["headers"], replace=False)
            bodiless = method == b"HEAD" or status in (204, 304)
            if bodiless or _wants_body(rule):
                original = await self._read_body(upstream)
                if original is not None:
                    body = b"" if bodiless else change_body(original, replace, patch, rule)
                    if body is None:
                        self.counters["patch_not_json"] += 1
                        body = original
                    headers = [(k, v) for k, v in headers if k.lower() not in FRAMING]
                    if not bodiless:
                        headers.append((b"Content-Length", str(len(body)).encode()))
        try:
            await client.send(h11.Response(status_code=status, headers=headers, reason=reason,
                                           http_version=response.http_version))
        except h11.LocalProtocolError:
            raise Closed from None  # a changed response this client cannot be sent (a body for HEAD)
        if body is not None:
            await self._send_body_down(client, upstream, body)
        else:
            await self._send_body(upstream, client, None)

    async def _send_body_down(self, client: _Peer, upstream: _Peer, body: bytes) -> None:
        try:
            if client.h11.our_state is h11.SEND_BODY:
                await _send_in_slices(client, body)
        finally:
            self._release(upstream)
        await client.send(h11.EndOfMessage())

    async def _refuse(self, client: _Peer, status: int) -> None:
        """Answer ``status`` and close, if the client may still be answered."""
        if client.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            with contextlib.suppress(h11.LocalProtocolError, ConnectionError, asyncio.TimeoutError):
                await client.send(h11.Response(status_code=status, reason=_reason(status),
                                               headers=[(b"Content-Length", b"0"), (b"Connection", b"close")]))
                await client.send(h11.EndOfMessage())


async def _send_in_slices(sink: _Peer, body: bytes) -> None:
    """A body held whole, sent a read's size at a time, each drained: neither h11 nor the transport copies more."""
    for start in range(0, len(body), READ_SIZE):
        await sink.send(h11.Data(data=body[start:start + READ_SIZE]))


async def _relay(client: _Peer, upstream: _Peer) -> None:
    """After a protocol switch: what each side sent past its last HTTP message, then everything, unchanged."""
    async def pipe(source: _Peer, sink: _Peer) -> None:
        data = source.h11.trailing_data[0]
        while data:
            sink.writer.write(data)
            await asyncio.wait_for(sink.writer.drain(), WRITE_TIMEOUT_S)
            data = await source.reader.read(READ_SIZE)
        with contextlib.suppress(OSError):  # the other side may be gone already
            if sink.writer.can_write_eof():
                sink.writer.write_eof()

    if client.h11.their_state is not h11.SWITCHED_PROTOCOL or upstream.h11.their_state is not h11.SWITCHED_PROTOCOL:
        raise Closed  # a 101 the client had not asked for
    results = await asyncio.gather(pipe(client, upstream), pipe(upstream, client), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, (OSError, asyncio.TimeoutError)):
            raise result


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


# --- command line -------------------------------------------------------------------------------


def _rule(text: str) -> dict[str, Any]:
    try:
        return check_rule(json.loads(text))
    except RuleError as err:
        raise argparse.ArgumentTypeError(f"rule: {err}") from None
    except (ValueError, TypeError, RecursionError) as err:
        raise argparse.ArgumentTypeError(f"rule: not a JSON object: {err}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m pytest_chaos_daemon.programs.http_proxy",
        description="HTTPChaos proxy. Run as root in the target's network namespace, next to an iptables nat "
                    "REDIRECT of the target's port to --port. Proxies each connection to its original "
                    "destination and applies the rule to the HTTP/1.1 exchanges that match it. Prints 'ready' "
                    "once listening; on SIGTERM, one JSON line of counters.")
    transparent_proxy.add_arguments(parser)
    parser.add_argument("--rule", type=_rule, required=True, help="the rule, JSON (pytest_chaos.api.http_rule)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return transparent_proxy.run(transparent_proxy.ProxyConfig(args.port, args.mark, args.seed),
                                 HttpHandler(args.rule))


if __name__ == "__main__":
    sys.exit(main())
