"""Journals as a daemon that died leaves them, written from outside: for a restarted daemon to take over."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

from pytest_chaos_daemon.confinement import procfs
from pytest_chaos_daemon.faults.container_pause import SIGSTOP as PAUSE_BY_SIGNAL
from pytest_chaos_daemon.lifecycle.journal import ACTIVE, Journal, Record


def gone_process() -> tuple[int, int]:
    """(pid, start time) of a process that ran and exited: a daemon or a target that is gone."""
    process = subprocess.Popen(["sleep", "60"])
    start_ticks = procfs.read_stat(process.pid).start_ticks
    process.kill()
    process.wait()
    return process.pid, start_ticks


def orphaned_pauses(state_dir: str, count: int, container_ids: list[str] | None = None) -> list[str]:
    """Journal ``count`` live container-pause records (a SIGSTOP) of a daemon that is gone, on targets that are
    gone (a pid that exited, or ``container_ids`` in turn), their leases run out: a daemon started on
    ``state_dir`` recovers each ("its time ran out while no daemon watched it"). Their injection ids."""
    journal = Journal(state_dir)
    daemon_pid, daemon_start = gone_process()
    owner = f"{os.stat('/proc/self/ns/pid').st_ino}-{daemon_pid}-{daemon_start}"  # as procfs.instance_key names it
    pid, start_ticks = gone_process()
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot_id = f.read().strip()
    now = time.time()
    records = [Record(
        id=f"orphan-{n}-{uuid.uuid4().hex[:8]}", kind="container-pause",
        container_id=container_ids[n % len(container_ids)] if container_ids else f"pid://{pid}", pid=pid,
        start_ticks=start_ticks, boot_id=boot_id, owner="a test run that is gone",
        params={}, plan={"processes": [[pid, start_ticks]]}, mechanism=PAUSE_BY_SIGNAL, state=ACTIVE,
        applied_at=now - 60, lease_expires_at=now - 1, duration_expires_at=None, daemon=owner) for n in range(count)]
    journal.write_all(records)
    return [record.id for record in records]
