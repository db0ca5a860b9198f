"""The daemon the ``local`` backend starts for itself on a private unix socket."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from .errors import ChaosError
from .transport import DaemonClient

START_TIMEOUT_S = 20.0


class EmbeddedDaemon:
    """Starts ``pytest-chaos-daemon`` on first use and stops it at session end."""

    def __init__(self, daemon_args: Sequence[str]) -> None:
        self._daemon_args = list(daemon_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None
        self.address = ""

    @property
    def log_path(self) -> str:
        return os.path.join(self._dir, "daemon.log") if self._dir else ""

    def ensure_started(self) -> str:
        if self._process is not None and self._process.poll() is None:
            return self.address
        if os.geteuid() != 0:
            raise ChaosError(
                "the local backend's daemon must run as root to enter other processes' namespaces; "
                "run pytest as root or point --chaos-daemon at a running pytest-chaos-daemon"
            )
        self._dir = tempfile.mkdtemp(prefix="pytest-chaos-")
        os.chmod(self._dir, 0o700)
        self.address = f"unix://{self._dir}/daemon.sock"
        argv = [sys.executable, "-m", "pytest_chaos_daemon", "--listen", self.address, *self._daemon_args]
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self._wait_serving()
        return self.address

    def _wait_serving(self) -> None:
        client = DaemonClient(self.address)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise ChaosError(f"the local chaos daemon exited at start:\n{self.log_tail()}")
                if os.path.exists(self.address.removeprefix("unix://")) and client.is_serving(timeout_s=1.0):
                    return
                time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise ChaosError(f"the local chaos daemon did not serve within {START_TIMEOUT_S:g}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no daemon log)"

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
