"""The daemon the ``local`` backend starts for itself on a private unix socket."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from .errors import ChaosError

START_TIMEOUT_S = 20.0
# The plugin's own daemons journal here, apart from a node daemon's default (/var/lib/pytest-chaos/daemon, the
# DaemonSet's hostPath): one run's daemon takes over what a killed one left, and never a cluster daemon's faults
# (their successor pod must find them).
EMBEDDED_STATE_DIR = "/var/lib/pytest-chaos/embedded"
SERVING_POLL_S = 0.01
SOCKET_NAME = "daemon.sock"
# sun_path holds 108 bytes, the last one a NUL.
MAX_SOCKET_PATH = 107
# Where the socket's directory goes when the temporary directory's path is too long for it.
SHORT_PARENTS = ("/tmp", "/run")
DAEMON_MODULE = "pytest_chaos_daemon"
# Forks the daemon when the caller is not the main thread; its one worker lives as long as the process.
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pytest-chaos-spawner")


def private_directory() -> str:
    """A fresh 0700 ``pytest-chaos-*`` directory whose ``daemon.sock`` path fits a unix socket address."""
    for parent in (None, *SHORT_PARENTS):
        try:
            directory = tempfile.mkdtemp(prefix="pytest-chaos-", dir=parent)
        except OSError:
            continue
        if len(os.fsencode(os.path.join(directory, SOCKET_NAME))) <= MAX_SOCKET_PATH:
            os.chmod(directory, 0o700)
            return directory
        os.rmdir(directory)
    raise ChaosError(
        f"no directory for the local chaos daemon's socket: {tempfile.gettempdir()} is too long a path "
        f"for a unix socket, and none of {', '.join(SHORT_PARENTS)} is usable; set TMPDIR to a shorter one"
    )


class EmbeddedDaemon:
    """Starts ``pytest-chaos-daemon`` when the first chaos test is collected (or first used) and stops it at
    session end."""

    def __init__(self, daemon_args: Sequence[str]) -> None:
        self._daemon_args = list(daemon_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None
        self._serving = False
        self.address = ""

    @property
    def log_path(self) -> str:
        return os.path.join(self._dir, "daemon.log") if self._dir else ""

    def start_soon(self) -> None:
        """Start the daemon without waiting for it: it boots (imports, listens) while pytest collects,
        and the first experiment waits only for what is left. Does nothing if it cannot start here; the
        first use then says why."""
        if self._process is None and os.geteuid() == 0 and daemon_installed():
            with contextlib.suppress(ChaosError):
                self._spawn_process()

    def ensure_started(self) -> str:
        if self._process is not None and self._process.poll() is None:
            if not self._serving:
                self._wait_serving()
            return self.address
        if not daemon_installed():
            raise ChaosError(
                f"the local backend runs the chaos daemon on this machine, and it is not installed (no module "
                f"{DAEMON_MODULE} for {sys.executable}): pip install 'pytest-chaos[local]'; or use "
                "--chaos-backend=kubernetes, or --chaos-daemon=ADDRESS to use a daemon running elsewhere"
            )
        if os.geteuid() != 0:
            raise ChaosError(
                "the local backend's daemon must run as root to enter other processes' namespaces; "
                "run pytest as root or point --chaos-daemon at a running pytest-chaos-daemon"
            )
        self._spawn_process()
        self._wait_serving()
        return self.address

    def _spawn_process(self) -> None:
        self._serving = False
        if self._dir:  # of a daemon that exited at start
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = private_directory()
        self.address = f"unix://{self._dir}/{SOCKET_NAME}"
        # Should pytest die without stopping it (SIGKILL), the daemon stops
        # itself when this process exits and removes the directory.
        argv = [sys.executable, "-m", "pytest_chaos_daemon", "--listen", self.address,
                "--exit-with-parent", str(os.getpid()), "--remove-on-exit", self._dir, *self._daemon_args]
        with open(self.log_path, "wb") as log:
            self._process = _spawn(argv, log)

    def _wait_serving(self) -> None:
        from .transport import DaemonClient  # gRPC: loaded once a daemon is to be talked to

        client = DaemonClient(self.address)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if self._process is None or self._process.poll() is not None:
                    raise ChaosError(f"the local chaos daemon exited at start:\n{self.log_tail()}")
                if os.path.exists(self.address.removeprefix("unix://")) and client.is_serving(timeout_s=1.0):
                    self._serving = True
                    return
                time.sleep(SERVING_POLL_S)
        finally:
            client.close()
        tail = self.log_tail()  # before stop() removes the log
        self.stop()
        raise ChaosError(f"the local chaos daemon did not serve within {START_TIMEOUT_S:g}s:\n{tail}")

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


def daemon_installed() -> bool:
    """Whether this interpreter can run the daemon: the plugin installs without it (the ``local`` extra)."""
    try:
        return importlib.util.find_spec(DAEMON_MODULE) is not None
    except ImportError:  # an import hook that refuses it
        return False


def _spawn(argv: list[str], log: BinaryIO) -> subprocess.Popen[bytes]:
    """Start the daemon from a thread that lives as long as this process.

    The kernel sends the daemon's parent-death signal when the *thread* that
    forked it exits: forked from a short-lived thread (a test's own), the
    daemon would stop under a live pytest.
    """
    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    if threading.current_thread() is threading.main_thread():
        return start()
    return _spawner.submit(start).result()
