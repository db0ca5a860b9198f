"""Running fault commands: fixed argument vectors, timeouts that kill the whole process group."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from pytest_chaos_daemon.errors import DeadlineExceeded
from pytest_chaos_daemon.nsexec import CHILD_ENV, ChildProcesses, build_argv


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return open(f"/proc/{pid}/stat").read().split()[2] != "Z"


def test_argv_is_built_from_values_not_shell_strings():
    argv = build_argv(1234, ("mnt", "pid"), ("sh", "-c", "ps aux"))
    nsenter_at = next(i for i, a in enumerate(argv) if a.endswith("nsenter"))
    assert argv[nsenter_at:] == [argv[nsenter_at], "-t", "1234", "-m", "-p", "--", "sh", "-c", "ps aux"]
    assert argv[:4] == [argv[0], "--pdeathsig", "KILL", "--"] and argv[0].endswith("setpriv")


def test_bad_pid_is_refused():
    with pytest.raises(ValueError):
        build_argv(0, ("mnt",), ("true",))


def test_timeout_kills_the_command_and_what_it_started(tmp_path):
    pidfile = tmp_path / "pids"
    # The shell records its pid and its background child's, then waits forever.
    argv = ["sh", "-c", f"echo $$ > {pidfile}; sleep 300 & echo $! >> {pidfile}; wait"]
    with pytest.raises(DeadlineExceeded):
        asyncio.run(ChildProcesses().run(argv, timeout_s=1.0))
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids)


def test_kill_all_ends_running_commands(tmp_path):
    pidfile = tmp_path / "pid"

    async def scenario() -> None:
        children = ChildProcesses()
        task = asyncio.ensure_future(children.run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 300"], 60))
        while not pidfile.exists() or not pidfile.read_text().strip():
            await asyncio.sleep(0.02)
        children.kill_all()
        result = await task
        assert result.returncode != 0

    asyncio.run(scenario())
    pid = int(pidfile.read_text())
    assert not alive(pid)


def test_commands_get_a_clean_environment():
    os.environ["PYTEST_CHAOS_SECRET"] = "leak"
    try:
        result = asyncio.run(ChildProcesses().run(["env"], timeout_s=10))
    finally:
        del os.environ["PYTEST_CHAOS_SECRET"]
    assert dict(line.split("=", 1) for line in result.stdout.splitlines()) == CHILD_ENV
