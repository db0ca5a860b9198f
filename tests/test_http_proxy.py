"""The HTTP kinds' proxy program on its own: a real stdlib HTTP server behind it, real clients in front of it.

The proxy runs as its program runs it (transparent_proxy's listener, the HTTP handler), in-process on the
loopback, with the upstream server standing in for the original destination a REDIRECT would give
(tests/test_http_faults.py has the REDIRECT, the daemon and the program as a process). What a client
gets is checked from outside: the server echoes what reached it, the client reads what came back. The rule's
pure helpers (glob, merge patch, request target) are checked against the facts they implement.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import http.server
import json
import logging
import os
import random
import re
import socket
import threading
import time
import unittest.mock
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest_chaos_daemon.programs import http_proxy as hp
from pytest_chaos_daemon.programs import transparent_proxy as tp

from pytest_chaos.api.http_rule import RuleError, check_rule, glob_matches, merge_patch
from tests.support.targets import require

# The proxy runs as the daemon runs it: its upstream socket is marked (SO_MARK needs CAP_NET_ADMIN).
pytestmark = pytest.mark.needs_root

FUZZ = settings(max_examples=300, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class Echo(http.server.BaseHTTPRequestHandler):
    """Answers every request with JSON saying what reached it; /big answers 2 MiB; /text answers plain text."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/big"):
            payload = b"{" + b" " * (2 << 20) + b"}"
        elif self.path.startswith("/text"):
            payload = b"plain text, not JSON"
        else:
            payload = json.dumps({"method": self.command, "target": self.path, "body": body.decode("latin-1"),
                                  "headers": [[k, v] for k, v in self.headers.items()]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_port
    httpd.shutdown()
    httpd.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


MARK = 0x2000


class Proxy:
    """The program's proxy (transparent_proxy's listener and bounds, the HTTP handler) on the loopback, in an event
    loop of its own; ``upstream`` stands in for the original destination a REDIRECT would give."""

    def __init__(self, rule: dict[str, Any]) -> None:
        self.proxy = tp.Proxy(tp.ProxyConfig(port=1, mark=MARK), hp.HttpHandler(check_rule(rule)))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def listen() -> asyncio.Server:
            return await asyncio.start_server(self.proxy._accept, "127.0.0.1", 0, limit=tp.READ_LIMIT)

        self.server = asyncio.run_coroutine_threadsafe(listen(), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    def client(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)

    def stop(self) -> dict[str, int]:
        """Stopped as on SIGTERM; its counters."""
        async def stop() -> None:
            self.server.close()
            tasks = list(self.proxy._open)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
        return dict(self.proxy.counters)


@pytest.fixture
def proxy(server: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # The connection on to the destination carries the fault's firewall mark, as in a target's namespace.
    require(os.geteuid() == 0, "root (SO_MARK needs CAP_NET_ADMIN)")
    started: list[Proxy] = []
    upstream = {"port": server}
    monkeypatch.setattr(tp, "original_destination", lambda sock: ("127.0.0.1", upstream["port"]))

    def start(upstream_port: int = server, **rule: Any) -> Proxy:
        upstream["port"] = upstream_port
        started.append(Proxy({"port": 80, **rule}))
        return started[-1]

    yield start
    for each in started:
        each.stop()


def exchange(connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def echoed(body: bytes) -> dict[str, Any]:
    return json.loads(body)


def test_a_response_rule_replaces_code_headers_and_body_of_matching_paths_and_methods_only(proxy):
    running = proxy(target="Response", path="/api/*", method="GET",
                    replace={"code": 503, "headers": [["Content-Type", "text/plain"]],
                             "body": base64.b64encode(b"down for chaos").decode()})
    client = running.client()
    assert exchange(client, "GET", "/api/orders?id=1")[::2] == (503, b"down for chaos")
    status, headers, body = exchange(client, "GET", "/api/orders")
    assert headers["Content-Type"] == "text/plain" and headers["Content-Length"] == str(len(b"down for chaos"))
    # The same connection (keep-alive) goes on; another path and another method pass untouched.
    status, _, body = exchange(client, "GET", "/health")
    assert status == 200 and echoed(body)["target"] == "/health"
    status, _, body = exchange(client, "POST", "/api/orders", b"x")
    assert status == 200 and echoed(body)["method"] == "POST"
    counters = running.stop()
    assert counters["requests"] == 4 and counters["selected"] == 2 and counters["replaced"] == 2
    assert counters["accepted"] == 1 and counters["errors"] == 0


def test_a_request_rule_replaces_then_patches_what_reaches_the_server(proxy):
    running = proxy(target="Request", path="/v1/*",
                    replace={"path": "/v2/items", "method": "PUT", "queries": [["page", "9"], ["new", "a b"]],
                             "headers": [["X-Mode", "replaced"]]},
                    patch={"queries": [["extra", "1"]], "headers": [["X-Mode", "patched"], ["X-Add", "yes"]],
                           "body": {"type": "JSON", "value": '{"drop": null, "added": {"n": 1}}'}})
    status, _, body = exchange(running.client(), "POST", "/v1/things?page=1&keep=k&page=2",
                               b'{"drop": 1, "keep": true}', {"X-Mode": "original", "Content-Type": "application/json"})
    seen = echoed(body)
    assert status == 200
    assert seen["method"] == "PUT"
    # Replaced keys keep their place (each of their values replaced), a missing key is added, then patch appends.
    assert seen["target"] == "/v2/items?page=9&keep=k&page=9&new=a+b&extra=1"
    assert json.loads(seen["body"]) == {"keep": True, "added": {"n": 1}}
    modes = [v for k, v in seen["headers"] if k.lower() == "x-mode"]
    assert modes == ["replaced", "patched"] and ["X-Add", "yes"] in seen["headers"]
    assert [v for k, v in seen["headers"] if k.lower() == "content-length"] == [str(len(seen["body"]))]


def test_request_headers_select_and_a_response_patch_merges_into_the_json_body(proxy):
    running = proxy(target="Response", request_headers=[["X-Tenant", "blue"]], code=200,
                    response_headers=[["Content-Type", "application/json"]],
                    patch={"headers": [["Set-Cookie", "a=1"], ["Set-Cookie", "b=2"]],
                           "body": {"type": "JSON", "value": '{"method": null, "chaos": true}'}})
    client = running.client()
    client.request("GET", "/x", headers={"X-Tenant": "blue"})
    response = client.getresponse()
    patched = json.loads(response.read())
    assert patched["chaos"] is True and "method" not in patched and patched["target"] == "/x"
    assert response.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    status, _, body = exchange(client, "GET", "/x", headers={"X-Tenant": "red"})
    assert status == 200 and "chaos" not in echoed(body)


def test_abort_closes_the_connection_without_a_response_and_only_for_matching_requests(proxy):
    running = proxy(target="Request", method="DELETE", abort=True)
    client = running.client()
    assert exchange(client, "GET", "/a")[0] == 200
    with pytest.raises(http.client.RemoteDisconnected):
        exchange(client, "DELETE", "/a")
    assert exchange(running.client(), "GET", "/b")[0] == 200
    counters = running.stop()
    assert counters["aborted"] == 1


def test_a_response_abort_reaches_the_server_and_drops_its_answer(proxy, server):
    running = proxy(target="Response", path="/gone", abort=True)
    with pytest.raises(http.client.RemoteDisconnected):
        exchange(running.client(), "GET", "/gone")
    assert exchange(running.client(), "GET", "/kept")[0] == 200


@pytest.mark.parametrize("target", ["Request", "Response"])
def test_delay_holds_matching_exchanges_for_the_delay_and_others_not_at_all(proxy, target):
    running = proxy(target=target, path="/slow", delay_s=0.5)
    client = running.client()
    exchange(client, "GET", "/fast")  # connected, warm
    took = {}
    for path in ("/slow", "/fast"):
        start = time.monotonic()
        assert exchange(client, "GET", path)[0] == 200
        took[path] = time.monotonic() - start
    # Bounds that fail only when the rule is broken, however busy the machine: never less than asked, not held
    # twice; an unmatched exchange is not held (it would take the whole delay). Precision: benchmarks.
    assert 0.49 <= took["/slow"] < 1.0 + took["/fast"], took
    assert took["/fast"] < 0.5, took


def test_pipelined_requests_are_answered_in_order_each_by_the_rule(proxy):
    running = proxy(target="Response", path="/odd*", replace={"code": 418})
    with socket.create_connection(("127.0.0.1", running.port), timeout=15) as sock:
        sock.sendall(b"".join(f"GET /{name} HTTP/1.1\r\nHost: h\r\n\r\n".encode()
                              for name in ("odd1", "even", "odd3")))
        data = b""
        while data.count(b"HTTP/1.1 ") < 3 or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]  # a body runs into the next head
    assert statuses == [418, 200, 418]


@pytest.mark.parametrize("rule", [
    {"target": "Request", "patch": {"body": {"type": "JSON", "value": '{"added": 1}'}}},  # the proxy reads the body
    {"target": "Request", "path": "/elsewhere", "abort": True},  # the server says 100 Continue itself
])
def test_a_client_expecting_100_continue_is_told_to_send_its_body(proxy, rule):
    running = proxy(**rule)
    with socket.create_connection(("127.0.0.1", running.port), timeout=15) as sock:
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 ")
        sock.sendall(b'{"a":"b"}')
        data = b""
        while not data.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")
    seen = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert json.loads(seen["body"]) == ({"a": "b", "added": 1} if "patch" in rule else {"a": "b"})


def test_stopping_with_a_connection_open_reports_no_error(proxy, caplog):
    running = proxy(target="Request", path="/never", abort=True)
    client = running.client()
    assert exchange(client, "GET", "/a")[0] == 200  # kept alive: its handler waits for the next request
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        counters = running.stop()
    assert counters["errors"] == 0
    assert not [record.getMessage() for record in caplog.records if record.name == "asyncio"]


def test_a_malformed_request_gets_400_and_the_proxy_serves_on(proxy):
    running = proxy(target="Request", abort=True, path="/never")
    with socket.create_connection(("127.0.0.1", running.port), timeout=15) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\x00\x01\r\n\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert exchange(running.client(), "GET", "/ok")[0] == 200
    counters = running.stop()
    assert counters["malformed"] == 1 and counters["errors"] == 0


def test_a_body_too_large_to_patch_or_one_that_is_not_json_passes_unchanged(proxy):
    running = proxy(target="Response", patch={"body": {"type": "JSON", "value": '{"x": 1}'}})
    client = running.client()
    status, _, body = exchange(client, "GET", "/big")
    assert status == 200 and len(body) == (2 << 20) + 2 and body.startswith(b"{ ")
    assert exchange(client, "GET", "/text")[2] == b"plain text, not JSON"
    assert json.loads(exchange(client, "GET", "/small")[2])["x"] == 1
    counters = running.stop()
    assert (counters["body_too_large"], counters["patch_not_json"], counters["patched"]) == (1, 1, 3)


def test_replacing_the_code_of_a_head_response_sends_no_body(proxy):
    running = proxy(target="Response", replace={"code": 500, "body": base64.b64encode(b"nope").decode()})
    client = running.client()
    status, _, body = exchange(client, "HEAD", "/x")
    assert (status, body) == (500, b"")
    assert exchange(client, "GET", "/x")[::2] == (500, b"nope")  # and the connection goes on


def test_an_upstream_that_refuses_counts_and_the_client_is_closed(proxy):
    running = proxy(upstream_port=free_port(), target="Request", abort=True)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        exchange(running.client(), "GET", "/")
    counters = running.stop()
    assert counters["upstream_failed"] == 1 and counters["errors"] == 0


# --- the rule's helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize("pattern, path, matches", [
    ("/api", "/api", True), ("/api", "/api/", False), ("/api/*", "/api/v1/x", True), ("/api/*", "/api", False),
    ("*", "/", True), ("/a?c", "/abc", True), ("/a?c", "/ac", False), ("*/x/*", "/p/x/q", True),
    ("/src?", "/src/", True), ("src", "/src/", False), ("/**", "/", True), ("/a*b*c", "/aXbYbZc", True),
    ("/a*b*c", "/aXbYbZ", False),
])
def test_path_globs_match_as_wildmatch_does(pattern, path, matches):
    assert glob_matches(pattern, path) is matches


def test_a_hostile_glob_takes_linear_time():
    start = time.monotonic()
    assert not glob_matches("*a" * 50 + "b", "a" * 8000)
    assert time.monotonic() - start < 5  # a backtracking matcher would not finish


@pytest.mark.parametrize("target, patch, result", [  # RFC 7396, appendix A
    ({"a": "b"}, {"a": "c"}, {"a": "c"}), ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}), ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}), ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}), ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]), ({"a": "b"}, ["c"], ["c"]), ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"), ({"e": None}, {"a": 1}, {"e": None, "a": 1}), ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
])
def test_merge_patch_follows_rfc_7396(target, patch, result):
    assert merge_patch(target, patch) == result


@pytest.mark.parametrize("rule, field", [
    ({"target": "Request", "port": 80}, "abort"),
    ({"target": "Request", "port": 0, "abort": True}, "port"),
    ({"target": "Request", "port": 80, "abort": True, "code": 500}, "code"),
    ({"target": "Response", "port": 80, "replace": {"path": "/x"}}, "replace.path"),
    ({"target": "Request", "port": 80, "replace": {"path": "no-slash"}}, "replace.path"),
    ({"target": "Request", "port": 80, "replace": {"headers": [["Bad Name", "v"]]}}, "replace.headers[0]"),
    ({"target": "Request", "port": 80, "patch": {"headers": [["X", "a\r\nInjected: 1"]]}}, "patch.headers[0]"),
    ({"target": "Request", "port": 80, "patch": {"headers": [["Transfer-Encoding", "chunked"]]}}, "patch.headers[0]"),
    ({"target": "Request", "port": 80, "replace": {"body": "not base64!"}}, "replace.body"),
    ({"target": "Request", "port": 80, "patch": {"body": {"type": "JSON", "value": "[" * 100 + "]" * 100}}},
     "patch.body.value"),
    ({"target": "Request", "port": 80, "delay_s": float("nan")}, "delay"),
    ({"target": "Request", "port": 80, "abort": True, "method": "G E T"}, "method"),
    ({"target": "Request", "port": 80, "abort": True, "extra": 1}, "extra"),
])
def test_a_bad_rule_is_refused_naming_its_field(rule, field):
    with pytest.raises(RuleError) as info:
        check_rule(rule)
    assert info.value.field == field


# --- never crash on what a client or a server sends --------------------------------------------------

METHODS = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"G\x00T", b""])
HEADER = st.tuples(st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding", b"Expect", b"Connection",
                                    b"X-A", b"Bad Name"]),
                   st.sampled_from([b"h", b"5", b"chunked", b"100-continue", b"close", b"-1", b"\xff", b""]))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One or more HTTP/1.1 requests in a stream, mostly well-formed, then mutated."""
    stream = b""
    for _ in range(draw(st.integers(1, 3))):
        head = draw(METHODS) + b" " + draw(st.sampled_from([b"/", b"/api/x?a=1", b"*", b"http://h/", b"/\x7f"])) \
            + b" " + draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"XTTP/1.1"])) + b"\r\n"
        head += b"".join(name + b": " + value + b"\r\n" for name, value in draw(st.lists(HEADER, max_size=4)))
        stream += head + b"\r\n" + draw(st.sampled_from([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"0\r\n"]))
    data = bytearray(stream)
    for _ in range(draw(st.integers(0, 3))):
        if data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
    return bytes(data[:draw(st.integers(0, len(data)))]) if draw(st.booleans()) else bytes(data)


RULES = [check_rule(rule) for rule in (
    {"target": "Request", "port": 80, "path": "/api/*", "replace": {"path": "/x", "queries": [["a", "2"]],
                                                                    "body": "eA=="}},
    {"target": "Response", "port": 80, "replace": {"code": 204}, "patch": {"body": {"type": "JSON", "value": "{}"}}},
    {"target": "Request", "port": 80, "patch": {"body": {"type": "JSON", "value": '{"a": 1}'},
                                                "headers": [["X", "y"]]}},
)]


async def _serve_canned(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: bytes) -> None:
    with __import__("contextlib").suppress(Exception):
        await reader.read(65536)
        writer.write(answer)
        await writer.drain()
    writer.close()


async def _drive(rule: dict[str, Any], stream: bytes, answer: bytes) -> tuple[dict[str, int], bytes]:
    require(os.geteuid() == 0, "root (SO_MARK needs CAP_NET_ADMIN)")  # the proxy marks its upstream connection
    upstream = await asyncio.start_server(lambda r, w: _serve_canned(r, w, answer), "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    proxy = tp.Proxy(tp.ProxyConfig(port=1, mark=MARK), hp.HttpHandler(rule))
    with unittest.mock.patch.object(tp, "original_destination", lambda sock: ("127.0.0.1", port)):
        front = await asyncio.start_server(proxy._accept, "127.0.0.1", 0, limit=tp.READ_LIMIT)
        reader, writer = await asyncio.open_connection("127.0.0.1", front.sockets[0].getsockname()[1])
        writer.write(stream)
        await writer.drain()
        writer.write_eof()
        try:
            received = await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:
            received = b""
        writer.close()
        for task in list(proxy._open):
            await asyncio.wait_for(task, 10)
    front.close()
    upstream.close()
    return proxy.counters, received


ANSWERS = st.sampled_from([
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", b"garbage\r\n\r\n", b"",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nraw",
])


@FUZZ
@given(requests(), ANSWERS, st.sampled_from(range(len(RULES))))
def test_no_request_or_response_makes_the_proxy_raise(stream: bytes, answer: bytes, which: int) -> None:
    counters, _ = asyncio.run(_drive(RULES[which], stream, answer))
    assert counters["errors"] == 0, counters


def test_random_bytes_in_both_directions_never_raise() -> None:
    rng = random.Random(18)
    for _ in range(100):
        counters, _ = asyncio.run(_drive(RULES[rng.randrange(len(RULES))], rng.randbytes(rng.randrange(300)),
                                         rng.randbytes(rng.randrange(300))))
        assert counters["errors"] == 0, counters


def test_after_a_protocol_switch_bytes_pass_unchanged_both_ways() -> None:
    upgrade = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nclient bytes"
    answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nserver bytes"
    counters, received = asyncio.run(_drive(RULES[2], upgrade, answer))
    assert received.startswith(b"HTTP/1.1 101 ") and received.endswith(b"\r\n\r\nserver bytes")
    assert counters["errors"] == 0
