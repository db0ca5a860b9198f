"""Reading what a target's filesystem holds, which the target controls.

A target's author decides what sits at ``/etc/resolv.conf`` or ``/etc/passwd``:
a FIFO whose reader waits for ever, a device, a socket, a symlink to a node
file, a file on a FUSE mount that never answers, or gigabytes. Every such read
goes through ``read_file``:

- the path is resolved with ``openat2(RESOLVE_IN_ROOT)`` below the target's
  root, so no symlink or ``..`` leaves it, and first opened ``O_PATH``, which
  has no effect on what it names (a FIFO, a device, a tape);
- only a regular file is then opened for reading, ``O_NONBLOCK``, through that
  descriptor, and at most a size cap is read;
- the work runs in a small pool of its own (``run``), never on the event loop
  nor in the default executor, within a time bound: a read that hangs costs one
  pool thread until it returns, and never the daemon; a full pool refuses at
  once rather than queue behind hung reads.

Reading a target's /proc (``proc_listing.py``) goes through the same pool.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..errors import DeadlineExceeded, FailedPrecondition, ResourceExhausted

_SYS_OPENAT2 = 437  # the same number on every architecture (asm-generic)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
MAX_FILE_BYTES = 1 << 20
READ_TIMEOUT_S = 5.0
POOL_SIZE = 4
_T = TypeVar("_T")
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory", stat.S_IFLNK: "a symlink"}


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_pool = ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="target-files")
_busy = threading.BoundedSemaphore(POOL_SIZE)


def open_in_root(root_fd: int, path: str, flags: int) -> int:
    """Open ``path`` as if ``root_fd`` were ``/``: no symlink or ``..`` leaves it."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(_SYS_OPENAT2, root_fd, path.encode(), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def read_file(root_fd: int, path: str, where: str, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """Up to ``limit`` bytes of the regular file ``path`` below ``root_fd``; None when there is none.
    Anything else at ``path`` (a FIFO, a socket, a device, a directory) is refused, naming it; ``where``
    says whose file it is ("target containerd://..."). Blocking: call it through ``run``."""
    try:
        handle = open_in_root(root_fd, path, os.O_PATH)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise FailedPrecondition(f"cannot open {path} of {where} ({err.strerror})") from None
    try:
        mode = os.fstat(handle).st_mode
        if not stat.S_ISREG(mode):
            kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
            raise FailedPrecondition(f"{path} of {where} is {kind}, not a regular file: refused (the daemon reads "
                                     "only regular files of a target's)")
        # Reopened through the O_PATH descriptor: the very inode just checked, whatever the path names now.
        fd = os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    finally:
        os.close(handle)
    try:
        return os.read(fd, limit)
    except OSError as err:
        raise FailedPrecondition(f"cannot read {path} of {where} ({err.strerror})") from None
    finally:
        os.close(fd)


async def run(work: Callable[[], _T], what: str, timeout_s: float = READ_TIMEOUT_S) -> _T:
    """``work()`` in the target-files pool, within ``timeout_s``; ``what`` names it in errors."""
    if not _busy.acquire(blocking=False):
        raise ResourceExhausted(f"{what}: every reader of targets' files is busy (reads that do not return, as "
                                "from a FUSE file that never answers?); retry later")

    def bounded() -> _T:
        try:
            return work()
        finally:
            _busy.release()

    future = asyncio.get_running_loop().run_in_executor(_pool, bounded)
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout_s)
    except TimeoutError:
        raise DeadlineExceeded(f"{what} did not finish within {timeout_s:g} s; the daemon went on without it") from None
