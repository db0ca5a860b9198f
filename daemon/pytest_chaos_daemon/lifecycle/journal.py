"""The daemon's journal: every injection, and how to undo it, on disk before it is applied.

One JSON file per injection under ``STATE_DIR/injections/``, written to a
temporary file, fsynced and renamed over the old one (then the directory
fsynced), so a crash leaves either the old record or the new, never half of
one. Several daemons may share a state directory (the plugin's own daemons,
one per test run or xdist worker, and a node's DaemonSet daemon): each record
names the daemon that owns it, and a daemon takes over only the records of
daemons that are gone (``injections.py`` replays them), one daemon at a time
(``adoption``). Each write has a temporary file of its own, and only an old
temporary counts as a write that never finished, so daemons writing at once
never remove or overwrite each other's.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ..server.logs import log

DEFAULT_STATE_DIR = "/var/lib/pytest-chaos/daemon"
# How long ended injections stay listed (and journaled) before they are pruned.
KEEP_ENDED_S = 3600.0
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\.json")
# A temporary file this old was left by a write that never finished; a younger one may be a write in progress.
STALE_TEMPORARY_S = 60.0
_ADOPTION_LOCK = ".adoption.lock"
_libc = ctypes.CDLL(None, use_errno=True)

APPLYING, ACTIVE, ONE_SHOT, RECOVERED, EXPIRED, FAILED = "applying", "active", "one_shot", "recovered", "expired", "failed"
LIVE = frozenset({APPLYING, ACTIVE})


@dataclasses.dataclass
class Record:
    """One injection as the journal keeps it."""

    id: str
    kind: str
    container_id: str
    pid: int
    start_ticks: int  # with pid and boot_id: the target's identity
    boot_id: str
    owner: str
    params: dict[str, Any]
    plan: dict[str, Any]  # what recovery needs; written before anything changes
    mechanism: str
    state: str
    applied_at: float  # wall clock: it must mean the same after a restart
    lease_expires_at: float | None
    duration_expires_at: float | None
    ended_at: float | None = None
    detail: str = ""
    daemon: str = ""  # the daemon that owns it (procfs.instance_key); others adopt it once that one is gone

    @property
    def expires_at(self) -> float | None:
        times = [t for t in (self.lease_expires_at, self.duration_expires_at) if t is not None]
        return min(times) if times else None

    @property
    def live(self) -> bool:
        return self.state in LIVE

    def end(self, state: str, detail: str) -> None:
        self.state, self.detail, self.ended_at = state, detail, time.time()


class Journal:
    def __init__(self, state_dir: str = DEFAULT_STATE_DIR) -> None:
        self.directory = os.path.join(state_dir, "injections")
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        os.chmod(state_dir, 0o700)

    def write(self, record: Record) -> None:
        self.write_all([record])

    def write_all(self, records: Sequence[Record]) -> None:
        """Each record written as one: a temporary file, synced, renamed over the old, the directory synced.
        Several at once share the syncs (the filesystem synced once, syncfs, then the directory once): a
        restarted daemon claims a journal of thousands of records in two syncs, not two per record, and serves
        within seconds."""
        if not records:
            return
        written: list[tuple[str, str]] = []  # (temporary, final path)
        try:
            for record in records:
                fd, temporary = tempfile.mkstemp(prefix=f".{record.id}.", suffix=".tmp", dir=self.directory)  # 0600
                written.append((temporary, os.path.join(self.directory, f"{record.id}.json")))
                with os.fdopen(fd, "w") as f:
                    json.dump(dataclasses.asdict(record), f)
                    f.flush()
                    if len(records) == 1:
                        os.fsync(f.fileno())
            if len(records) > 1:
                self._sync_filesystem()
            for temporary, path in written:
                os.replace(temporary, path)
        except BaseException:
            for temporary, _ in written:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
            raise
        self._sync_directory()

    @contextlib.contextmanager
    def adoption(self) -> Iterator[bool]:
        """Whether this daemon may take over records now: True while no other daemon does (an
        exclusive lock on the directory, released when the block ends or the daemon dies)."""
        fd = os.open(os.path.join(self.directory, _ADOPTION_LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def remove(self, *injection_ids: str) -> None:
        removed = False
        for injection_id in injection_ids:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, f"{injection_id}.json"))
                removed = True
        if removed:
            self._sync_directory()

    def load(self) -> list[Record]:
        records = []
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            if name.endswith(".tmp"):
                # A write that never finished (its record is the previous one), unless one in progress.
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - os.lstat(path).st_mtime > STALE_TEMPORARY_S:
                        os.unlink(path)
                continue
            if not _FILE.fullmatch(name):
                continue
            try:
                with open(path) as f:
                    records.append(Record(**json.load(f)))
            except FileNotFoundError:
                continue  # removed since listed: its owner pruned it
            except (OSError, ValueError, TypeError) as err:
                log(logging.ERROR, "unreadable journal entry set aside", path=path, error=str(err))
                with contextlib.suppress(FileNotFoundError):
                    os.replace(path, f"{path}.unreadable")
        return records

    def _sync_filesystem(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _libc.syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs {self.directory}: {os.strerror(err)}")
        finally:
            os.close(fd)

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
