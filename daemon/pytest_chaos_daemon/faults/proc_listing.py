"""A target's process list read by the daemon from /proc, executing nothing.

The target's own /proc (the procfs mounted in its mount namespace, for its pid
namespace) lists exactly what ``ps aux`` inside it would. It is opened with
``openat2(RESOLVE_IN_ROOT)`` below the target's root, so a symlink planted in
the target's filesystem resolves inside that filesystem and never reaches a
file of the node's; the result must be a procfs whose entry for the target's
own pid is the target. User names come from the target's ``/etc/passwd``,
read through ``target_files`` (a regular file only, capped). Command lines
are read up to ``CMDLINE_LIMIT`` each and ``LISTING_LIMIT`` in all; past that a
process shows as ``[comm]`` and the listing says it was truncated.

``TargetProc`` is that opened /proc, shared by every kind that reads a
target's processes (HelloWorld's ``source="proc"``, process-kill): it yields
each process, and opens a process's directory, which pins that process as a
pidfd does.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import time
from collections.abc import Iterator

from ..confinement import procfs
from ..confinement.target import HeldTarget
from ..confinement.target_files import open_in_root, read_file
from ..errors import FailedPrecondition, NotFound
from .process_list import ProcessRow, parse_ps

PROC_SUPER_MAGIC = 0x9FA0
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
# What is read of one command line, and of all of them together (ps stops at 1 MiB too): a target whose
# processes carry huge command lines costs the daemon this much and no more.
CMDLINE_LIMIT = 64 << 10
LISTING_LIMIT = 1 << 20
HEADER = "USER         PID %CPU %MEM    VSZ   RSS TTY      STAT START   TIME COMMAND"
_libc = ctypes.CDLL(None, use_errno=True)


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_long * 15)]


def _filesystem_type(fd: int) -> int:
    buf = _StatFs()
    if _libc.fstatfs(fd, ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(buf.f_type)


@dataclasses.dataclass(frozen=True)
class ProcEntry:
    """One process of a target's pid namespace, as the target's own /proc shows it."""

    pid: int  # inside the target's pid namespace
    stat: procfs.Stat
    user: str  # as the target names its uid
    argv: tuple[str, ...]

    @property
    def command(self) -> str:
        """The command line as ``ps`` shows it; ``[comm]`` for a process without one (kernel-style)."""
        return " ".join(self.argv) if self.argv else f"[{self.stat.comm}]"

    @property
    def name(self) -> str:
        """The command name: the basename of argv[0], or comm for a process without a command line."""
        return os.path.basename(self.argv[0]) if self.argv else self.stat.comm


class TargetProc:
    """The target's own /proc, opened safely below its root and checked to be its pid namespace's.

    ``purpose`` names the feature in errors; ``hint`` follows the error for a
    /proc of another pid namespace. Close it (or use it as a context manager).
    """

    def __init__(self, target: HeldTarget, purpose: str = "reading a target's /proc", hint: str = "") -> None:
        try:
            self._root = os.open(f"/proc/{target.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"target {target.description} (host pid {target.pid}) has exited") from None
        try:
            self.fd = _open_target_proc(target, self._root, purpose, hint)
            self._uid_map = procfs.read_id_map(target.pid, "uid")
        except BaseException:
            self.close()
            raise
        self._names: dict[int, str] | None = None
        self._where = f"target {target.description}"
        self.truncated = False  # a command line was cut or left out (CMDLINE_LIMIT, LISTING_LIMIT)

    def processes(self) -> Iterator[ProcEntry]:
        """Every process listed, in PID order; those that exit while listed are left out. Command lines are
        cut at ``CMDLINE_LIMIT``, and left out past ``LISTING_LIMIT`` in all (``truncated`` says so)."""
        budget = LISTING_LIMIT
        for pid in sorted(int(name) for name in os.listdir(self.fd) if name.isdigit()):
            stat_text, status_text = read_at(self.fd, f"{pid}/stat"), read_at(self.fd, f"{pid}/status")
            cmdline = read_at(self.fd, f"{pid}/cmdline", min(CMDLINE_LIMIT, budget)) if budget else ""
            if stat_text is None or status_text is None or cmdline is None:
                continue  # exited while listing
            budget -= len(cmdline)
            self.truncated = self.truncated or budget <= 0 or len(cmdline) == CMDLINE_LIMIT
            host_uid = procfs.parse_status(status_text).uid  # as the daemon's user namespace sees it
            argv = tuple(cmdline.rstrip("\0").split("\0")) if cmdline else ()
            yield ProcEntry(pid, procfs.parse_stat(stat_text), self._user(host_uid), argv)

    def open_process(self, pid: int) -> int:
        """A directory fd of ``/proc/<pid>`` in this /proc: it refers to that process even after the
        PID is reused, and ``signal.pidfd_send_signal`` takes it as a pidfd. Raises OSError."""
        return os.open(str(pid), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)

    def _user(self, host_uid: int) -> str:
        if self._names is None:
            self._names = _user_names(self._root, self._where)
        uid = self._uid_map.inside(host_uid)
        return self._names.get(uid, str(uid)) if uid is not None else str(host_uid)

    def close(self) -> None:
        for name in ("fd", "_root"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def __enter__(self) -> TargetProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def list_processes(target: HeldTarget) -> tuple[str, list[ProcessRow], bool]:
    """``ps aux``-style text of the target's pid namespace, its parsed rows, and whether a command line was
    cut. Blocking: run it through ``target_files.run``."""
    with TargetProc(target, "source='proc'", "; use source='ps'") as proc:
        lines = _render(proc.processes())
        truncated = proc.truncated
    target.check_alive()
    output = "\n".join([HEADER, *lines]) + "\n"
    return output, parse_ps(output), truncated


def _open_target_proc(target: HeldTarget, root: int, purpose: str, hint: str) -> int:
    try:
        proc = open_in_root(root, "/proc", os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        if err.errno == errno.ENOSYS:
            raise FailedPrecondition(f"{purpose} needs openat2 (Linux 5.6 or newer)") from None
        raise FailedPrecondition(f"target {target.description} has no /proc to read ({err.strerror})") from None
    try:
        if _filesystem_type(proc) != PROC_SUPER_MAGIC:
            raise FailedPrecondition(f"target {target.description}: its /proc is not a procfs")
        inner_pid = procfs.read_status(target.pid).nspid[-1]
        own_stat = read_at(proc, f"{inner_pid}/stat")
        if own_stat is None or procfs.parse_stat(own_stat).start_ticks != target.stat.start_ticks:
            raise FailedPrecondition(
                f"target {target.description}: its /proc is not mounted for its own pid namespace{hint}"
            )
    except BaseException:
        os.close(proc)
        raise
    return proc


def read_at(directory: int, path: str, limit: int = 1 << 20) -> str | None:
    """The text of ``path`` below the directory fd, without following a final symlink; None if unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=directory)
    except OSError:
        return None
    try:
        return os.read(fd, limit).decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def _user_names(root: int, where: str) -> dict[int, str]:
    """uid -> name from the target's /etc/passwd (uids as the target sees them); a planted FIFO or device
    there is refused (``target_files.read_file``)."""
    raw = read_file(root, "/etc/passwd", where)
    names: dict[int, str] = {}
    for line in (raw or b"").decode(errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            names.setdefault(int(fields[2]), fields[0])
    return names


def _render(processes: Iterator[ProcEntry]) -> list[str]:
    uptime = float(open("/proc/uptime").read().split()[0])
    boot = time.time() - uptime
    mem_total_kb = _mem_total_kb()
    lines = []
    for entry in processes:
        stat = entry.stat
        cpu_s = (stat.utime_ticks + stat.stime_ticks) / _CLK_TCK
        elapsed = max(uptime - stat.start_ticks / _CLK_TCK, 1e-9)
        rss_kb = stat.rss_pages * _PAGE_KB
        lines.append(
            f"{entry.user:<10} {entry.pid:>5} {100 * cpu_s / elapsed:4.1f} "
            f"{100 * rss_kb / mem_total_kb if mem_total_kb else 0:4.1f} {stat.vsize // 1024:>6} {rss_kb:>5} "
            f"{_tty(stat.tty_nr):<8} {stat.state:<4} "
            f"{time.strftime('%H:%M', time.gmtime(boot + stat.start_ticks / _CLK_TCK))} "
            f"{int(cpu_s) // 60:>3}:{int(cpu_s) % 60:02d} {entry.command}"
        )
    return lines


def _tty(tty_nr: int) -> str:
    if tty_nr == 0:
        return "?"
    major, minor = (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    return f"pts/{minor}" if 136 <= major <= 143 else f"tty{minor}"


def _mem_total_kb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return 0
