"""Tying the daemon's life to the process that started it, and cleaning up after it.

``--exit-with-parent PID`` stops the daemon when PID exits, by two means: a
pidfd the event loop watches (readable once the process has exited), and the
kernel's parent-death signal (SIGTERM) as a second line. ``--remove-on-exit
DIR`` names the private directory (socket, log) the daemon removes when it
stops; being root, it removes only a directory that is clearly its own.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import stat
from collections.abc import Callable

from ..server.logs import log

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
REMOVABLE_PREFIX = "pytest-chaos-"


def set_parent_death_signal(signum: int) -> None:
    """Have the kernel send ``signum`` to this process when its parent exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    args = (ctypes.c_ulong(signum), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    if libc.prctl(PR_SET_PDEATHSIG, *args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")


class ParentWatch:
    """Calls ``on_exit`` once when process ``pid``, the daemon's parent, exits (or already has)."""

    def __init__(self, pid: int, loop: asyncio.AbstractEventLoop, on_exit: Callable[[], None]) -> None:
        self.pid = pid
        self._loop = loop
        self._on_exit: Callable[[], None] | None = on_exit
        self._pidfd: int | None = None
        # The signal is a second line only: the kernel sends it when the
        # *thread* that forked the daemon exits, which may be before its process.
        set_parent_death_signal(signal.SIGTERM)
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._exited("had exited at start")
            return
        except OSError as err:  # e.g. ENOSYS on a kernel older than 5.3
            log(logging.WARNING, "cannot watch the parent through a pidfd; only the parent-death signal is left",
                pid=pid, error=str(err))
        # Checked after the signal is set and the pidfd opened, this closes
        # both races: a parent that died before them has left us reparented,
        # and while it lives its PID cannot name another process.
        parent = os.getppid()
        if parent != pid:
            self._exited(f"is not the parent (the parent is now {parent})")
            return
        if self._pidfd is not None:
            loop.add_reader(self._pidfd, self._exited, "exited")

    def _exited(self, how: str) -> None:
        on_exit, self._on_exit = self._on_exit, None
        if on_exit is None:
            return
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
        log(logging.INFO, "the parent process is gone; shutting down", pid=self.pid, how=how)
        on_exit()

    def close(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


class RemovableDirectory:
    """A directory the daemon removes when it stops, if it still is the one checked at start.

    Rules, checked at start and again just before removal: an absolute path
    whose name starts with ``pytest-chaos-``, a directory (not a symlink),
    owned by the daemon's uid, mode 0700. The parent directory stays open, so
    renaming a path component cannot point the removal elsewhere.
    """

    def __init__(self, path: str) -> None:
        if not os.path.isabs(path) or os.path.normpath(path) != path.rstrip("/"):
            raise ValueError("must be an absolute path without '.' or '..' components")
        # shutil.rmtree resists symlink swaps inside the tree only where it can use file descriptors.
        if not shutil.rmtree.avoids_symlink_attacks:
            raise ValueError("this platform cannot remove a directory safely")
        self.path = os.path.normpath(path)
        parent, self._name = os.path.split(self.path)
        if not self._name.startswith(REMOVABLE_PREFIX):
            raise ValueError(f"its name must start with {REMOVABLE_PREFIX!r}")
        try:
            self._parent_fd: int | None = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            st = os.stat(self._name, dir_fd=self._parent_fd, follow_symlinks=False)
        except OSError as err:
            raise ValueError(err.strerror or str(err)) from None
        problem = _problem(st)
        if problem:
            os.close(self._parent_fd)
            raise ValueError(problem)
        self._identity = (st.st_dev, st.st_ino)

    def remove(self) -> None:
        """Remove the directory and everything in it; leave anything that no longer passes the rules."""
        if self._parent_fd is None:
            return
        try:
            try:
                st = os.stat(self._name, dir_fd=self._parent_fd, follow_symlinks=False)
            except FileNotFoundError:
                return  # whoever started the daemon removed it already
            problem = _problem(st) or ((st.st_dev, st.st_ino) != self._identity and "was replaced")
            if problem:
                log(logging.WARNING, "not removing the directory", path=self.path, problem=problem)
                return
            shutil.rmtree(self._name, dir_fd=self._parent_fd)
            log(logging.INFO, "removed", path=self.path)
        except OSError as err:
            log(logging.WARNING, "could not remove the directory", path=self.path, error=str(err))
        finally:
            os.close(self._parent_fd)
            self._parent_fd = None


def _problem(st: os.stat_result) -> str | None:
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory (a symlink is refused)"
    if st.st_uid != os.geteuid():
        return f"is owned by uid {st.st_uid}, not the daemon's uid {os.geteuid()}"
    if stat.S_IMODE(st.st_mode) != 0o700:
        return f"has mode {stat.S_IMODE(st.st_mode):04o}, not 0700"
    return None
