"""Start, find and stop the long-running processes of the cluster.

Each process is started in its own session (it outlives the CLI), with stdout
and stderr going to ``<state>/logs/<name>.log`` and its PID in
``<state>/run/<name>.pid``. A PID file is trusted only while ``/proc/<pid>/exe``
still is the binary that was started, so a recycled PID is never signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from .util import log


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


class ManagedProcess:
    """One named process with a PID file and a log file."""

    def __init__(self, name: str, binary: Path | str, run_dir: Path, log_dir: Path) -> None:
        self.name = name
        self.binary = str(binary)
        self.pidfile = run_dir / f"{name}.pid"
        self.logfile = log_dir / f"{name}.log"

    def pid(self) -> int | None:
        """PID of the running process, or None (stale PID files are ignored)."""
        try:
            text = self.pidfile.read_text().split()
            pid, exe = int(text[0]), text[1] if len(text) > 1 else self.binary
        except (OSError, ValueError, IndexError):
            return None
        cur = _exe(pid)
        if cur is None or _is_zombie(pid):
            return None
        if os.path.realpath(cur.removesuffix(" (deleted)")) != os.path.realpath(exe):
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, args: list[str], env: dict[str, str] | None = None) -> int:
        """Start the process (no-op if it already runs); returns its PID."""
        pid = self.pid()
        if pid is not None:
            return pid
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        with self.logfile.open("ab") as lf:
            lf.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: "
                     f"{self.binary} {' '.join(args)}\n".encode())
            lf.flush()
            proc = subprocess.Popen([self.binary, *args], stdout=lf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    env=env, close_fds=True)
        self.pidfile.write_text(f"{proc.pid} {os.path.realpath(self.binary)}\n")
        return proc.pid

    def exited_early(self) -> bool:
        """True if a PID file exists but its process is gone."""
        return self.pidfile.exists() and not self.running()

    def stop(self, timeout: float = 20.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout``; returns True if it was running."""
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid() == pid:
            time.sleep(0.1)
        if self.pid() == pid:
            log(f"{self.name}: did not stop within {timeout:.0f}s, killing")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while self.pid() == pid:
                time.sleep(0.1)
        self.pidfile.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def pids_with_exe_under(dirs: list[Path]) -> list[int]:
    """PIDs of processes whose executable lies in one of ``dirs`` (our cached binaries)."""
    roots = [os.path.realpath(d) + os.sep for d in dirs]
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            exe = _exe(int(entry))
            if exe and any(exe.startswith(r) for r in roots) and not _is_zombie(int(entry)):
                out.append(int(entry))
    return out


def shim_pids(namespace: str, address: str, ids: set[str] | None = None) -> list[int]:
    """PIDs of containerd-shim-runc-v2 processes of containerd ``address``, ``namespace``.

    With ``ids``, only shims whose ``-id`` is one of them.
    """
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and b"-namespace" in argv:
            i = argv.index(b"-namespace")
            j = argv.index(b"-address") if b"-address" in argv else -1
            k = argv.index(b"-id") if b"-id" in argv else -1
            shim_id = argv[k + 1].decode(errors="replace") if 0 <= k < len(argv) - 1 else ""
            if (i + 1 < len(argv) and argv[i + 1] == namespace.encode()
                    and (j < 0 or j + 1 >= len(argv) or argv[j + 1] == address.encode())
                    and (ids is None or shim_id in ids)):
                out.append(int(entry))
    return out


def kill_pids(pids: list[int], what: str) -> None:
    """SIGKILL the given PIDs (reporting them) and wait until they are gone."""
    for pid in pids:
        log(f"killing leftover {what} process {pid}")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_exe(p) and not _is_zombie(p) for p in pids):
        time.sleep(0.1)
