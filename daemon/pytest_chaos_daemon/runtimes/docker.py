"""Docker Engine: container inspect, listing and kill over the engine's unix socket."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from typing import TYPE_CHECKING, Any

from ..api.contract import DOCKER_SOCKET
from ..errors import FailedPrecondition, NotFound, Unavailable
from .base import RunningContainer, check_container_ref

if TYPE_CHECKING:
    from ..confinement.target import HeldTarget

DEFAULT_SOCKET = DOCKER_SOCKET
CALL_TIMEOUT_S = 10.0


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._socket_path)
        self.sock = sock


class DockerRuntime:
    """Resolves ``docker://ID`` (an id, id prefix or name) through the Engine API."""

    prefix = "docker"
    kill_mechanism = "Docker Engine kill (SIGKILL)"

    def __init__(self, socket_path: str = DEFAULT_SOCKET) -> None:
        self.endpoint = socket_path

    def pid_of(self, ref: str) -> int:
        check_container_ref(self.prefix, ref)
        status, body = self._get(f"/containers/{ref}/json")
        if status == 404:
            raise NotFound(f"container docker://{ref} not found by the Docker Engine at {self.endpoint}")
        self._check(status, body)
        state = body.get("State", {})
        pid = int(state.get("Pid") or 0)
        if not state.get("Running") or pid == 0:
            raise FailedPrecondition(
                f"container docker://{ref} is {state.get('Status', 'not running')}, not running"
            )
        return pid

    def kill(self, ref: str, target: HeldTarget) -> None:
        check_container_ref(self.prefix, ref)
        target.check_alive()  # the container the daemon resolved is still the one running
        status, body = self._post(f"/containers/{ref}/kill", {"signal": "KILL"})
        if status == 404:
            raise NotFound(f"container docker://{ref} not found by the Docker Engine at {self.endpoint}")
        if status == 409:  # not running
            message = body.get("message", body) if isinstance(body, dict) else body
            raise FailedPrecondition(f"container docker://{ref} cannot be killed: {message}")
        self._check(status, body, expected=204)

    def list_running(self) -> list[RunningContainer]:
        # The listing holds only running containers by default, with names and labels.
        status, listing = self._get("/containers/json")
        self._check(status, listing)
        return [
            RunningContainer(
                container_id=f"docker://{summary['Id']}",
                name=(summary.get("Names") or [""])[0].lstrip("/"),
                labels=dict(summary.get("Labels") or {}),
            )
            for summary in listing
        ]

    def _get(self, path: str) -> tuple[int, Any]:
        return self._request("GET", urllib.parse.quote(path))

    def _post(self, path: str, query: dict[str, str]) -> tuple[int, Any]:
        return self._request("POST", f"{urllib.parse.quote(path)}?{urllib.parse.urlencode(query)}")

    def _request(self, method: str, url: str) -> tuple[int, Any]:
        connection = _UnixHTTPConnection(self.endpoint, CALL_TIMEOUT_S)
        try:
            connection.request(method, url)
            response = connection.getresponse()
            raw = response.read()
        except OSError as err:
            raise Unavailable(
                f"the Docker Engine is unreachable at {self.endpoint}: {err} "
                "(is dockerd running? set the socket with --docker-socket)"
            ) from None
        finally:
            connection.close()
        try:
            return response.status, json.loads(raw or b"null")
        except json.JSONDecodeError:
            return response.status, {"message": raw.decode(errors="replace")}

    def _check(self, status: int, body: Any, expected: int = 200) -> None:
        if status != expected:
            message = body.get("message", body) if isinstance(body, dict) else body
            raise Unavailable(f"the Docker Engine at {self.endpoint} answered {status}: {message}")
