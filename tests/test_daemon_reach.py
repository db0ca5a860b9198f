"""How the plugin reaches a node's daemon pod: at its pod IP where that is routed from here (the kubernetes
backend's probe), else through the API server's port-forward (pytest_chaos/portforward.py, whose byte pump runs
here on socket pairs)."""

from __future__ import annotations

import socket
import threading
import time

from pytest_chaos.backends.kubernetes import _reachable
from pytest_chaos.portforward import _pump


def test_an_address_that_refuses_until_its_daemon_listens_is_reached_directly():
    """A daemon pod just started (one replaced mid-session) has its IP before its daemon listens: refused, not
    unrouted. Seen in the kind soak: the backend chose the port-forward for such pods, for their lifetime."""
    with socket.socket() as placeholder:  # a free port, nothing listening on it
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    listening = threading.Event()

    def listen_later() -> None:
        time.sleep(0.5)
        with socket.create_server(("127.0.0.1", port)) as server:
            listening.set()
            server.settimeout(10)
            server.accept()[0].close()

    listener = threading.Thread(target=listen_later)
    listener.start()
    try:
        assert _reachable("127.0.0.1", port, starting_s=10)
    finally:
        listener.join(15)
    assert listening.is_set()


def test_an_address_where_nothing_listens_is_given_up_after_its_time():
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    assert not _reachable("127.0.0.1", port, starting_s=0.3)


def test_bytes_cross_both_ways_until_one_side_closes():
    client, relay_local = socket.socketpair()
    relay_remote, pod = socket.socketpair()
    pump = threading.Thread(target=_pump, args=(relay_local, relay_remote, threading.Event()))
    pump.start()
    client.sendall(b"request")
    assert pod.recv(100) == b"request"
    pod.sendall(b"response")
    assert client.recv(100) == b"response"
    pod.close()
    pump.join(5)
    assert not pump.is_alive()


def test_a_relay_whose_other_side_is_gone_ends_without_an_error():
    """Seen in the kind soak: a daemon pod deleted under a relayed connection raised BrokenPipeError in the
    relay's thread, printed as an unhandled exception on the user's terminal."""
    client, relay_local = socket.socketpair()
    relay_remote, pod = socket.socketpair()
    pod.close()  # the daemon pod is gone
    client.sendall(b"a call on its way")
    errors = []
    threading.excepthook = lambda args: errors.append(args.exc_value)  # restored below
    try:
        pump = threading.Thread(target=_pump, args=(relay_local, relay_remote, threading.Event()))
        pump.start()
        pump.join(5)
    finally:
        threading.excepthook = threading.__excepthook__
    assert not pump.is_alive() and errors == []
