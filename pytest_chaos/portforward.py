"""A local TCP port that reaches a pod's port through the API server.

The kubernetes client's port-forward hands back a Python socket, not a TCP
port, and grpcio can only dial addresses. So: listen on 127.0.0.1, and for
each connection gRPC opens, open a port-forward stream to the pod and copy
bytes both ways.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from typing import Any

from kubernetes.stream import portforward

CHUNK = 65536


class PortForwardRelay:
    """127.0.0.1:<port> relayed to ``namespace/pod:remote_port`` via the API server."""

    def __init__(self, core_api: Any, namespace: str, pod: str, remote_port: int) -> None:
        self._core_api = core_api
        self._namespace = namespace
        self._pod = pod
        self._remote_port = remote_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._closed = threading.Event()
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept_loop, name=f"relay {pod}", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                local, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(local,), name=f"relay {self._pod} conn", daemon=True).start()

    def _relay(self, local: socket.socket) -> None:
        try:
            forward = portforward(
                self._core_api.connect_get_namespaced_pod_portforward,
                self._pod, self._namespace, ports=str(self._remote_port),
            )
        except Exception:  # noqa: BLE001 - the gRPC client sees a closed connection and reports it
            local.close()
            return
        remote = forward.socket(self._remote_port)
        remote.setblocking(True)
        try:
            _pump(local, remote, self._closed)
        finally:
            local.close()
            forward.close()


def _pump(a: socket.socket, b: Any, closed: threading.Event) -> None:
    """Copy bytes between ``a`` and ``b`` until either side closes."""
    peers = {a.fileno(): b, b.fileno(): a}
    with selectors.DefaultSelector() as selector:
        selector.register(a, selectors.EVENT_READ)
        selector.register(b.fileno(), selectors.EVENT_READ)
        while not closed.is_set():
            for key, _ in selector.select(timeout=0.5):
                source = a if key.fd == a.fileno() else b
                try:
                    data = source.recv(CHUNK)
                    if not data:
                        return
                    peers[key.fd].sendall(data)
                except OSError:  # either side gone (a daemon pod deleted, a client that hung up): this one ends
                    return
