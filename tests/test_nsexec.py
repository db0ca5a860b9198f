"""Running fault commands: the confine helper's own behaviour, timeouts, shutdown, a clean environment."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import pytest
from pytest_chaos_daemon.confinement import confine
from pytest_chaos_daemon.confinement.nsexec import CHILD_ENV, ChildProcesses
from pytest_chaos_daemon.errors import DeadlineExceeded


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return open(f"/proc/{pid}/stat").read().split()[2] != "Z"


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


def test_a_command_spawned_while_kill_all_runs_is_killed_too():
    # Spawning yields to the loop before the command is known to ChildProcesses: a kill_all (the daemon stopping)
    # in that moment must still end it, not leave it to its timeout.
    async def scenario() -> int:
        children = ChildProcesses()
        children.kill_all()
        return (await children.run(["sleep", "300"], 30)).returncode

    assert asyncio.run(scenario()) == -signal.SIGKILL


def test_commands_get_a_clean_environment():
    os.environ["PYTEST_CHAOS_SECRET"] = "leak"
    try:
        result = asyncio.run(ChildProcesses().run(["env"], timeout_s=10))
    finally:
        del os.environ["PYTEST_CHAOS_SECRET"]
    assert dict(line.split("=", 1) for line in result.stdout.splitlines()) == CHILD_ENV


def confined(*args: str, pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([confine.helper_path(), *args], capture_output=True, text=True, timeout=30,
                          pass_fds=pass_fds, env=CHILD_ENV)


@pytest.mark.needs_root
def test_helper_takes_the_given_user_and_no_capabilities():
    result = confined("--uid", "65534", "--gid", "65534", "--groups", "65534", "--cap-bnd", "0", "--cap-eff", "0",
                      "--", "cat", "/proc/self/status")
    assert result.returncode == 0, result.stderr
    status = dict(line.split(":\t", 1) for line in result.stdout.splitlines() if ":\t" in line)
    assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split() == ["65534"] * 4
    assert status["Groups"].split() == ["65534"]
    assert all(int(status[cap], 16) == 0 for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"))
    assert status["NoNewPrivs"].strip() == "1"


@pytest.mark.needs_root
def test_helper_keeps_at_most_the_given_capabilities_for_root():
    # CAP_CHOWN (0) and CAP_KILL (5): what survives exec for uid 0 is the bounding set cut to these.
    result = confined("--uid", "0", "--gid", "0", "--cap-bnd", "21", "--cap-eff", "21", "--", "cat", "/proc/self/status")
    status = dict(line.split(":\t", 1) for line in result.stdout.splitlines() if ":\t" in line)
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == int(status["CapBnd"], 16) == 0x21


@pytest.mark.needs_root
def test_helper_passes_no_inherited_fd_to_the_program(tmp_path):
    secret = os.open(tmp_path / "daemon-side", os.O_CREAT | os.O_RDWR)
    try:
        result = confined("--uid", "0", "--gid", "0", "--cap-bnd", "0", "--cap-eff", "0", "--",
                          "ls", "/proc/self/fd", pass_fds=(secret,))
    finally:
        os.close(secret)
    assert sorted(int(fd) for fd in result.stdout.split()) == [0, 1, 2, 3]  # 3: ls's own directory


@pytest.mark.needs_root
def test_helper_reports_what_it_could_not_do():
    result = confined("--uid", "0", "--gid", "0", "--ns-fd", "mnt:99", "--", "true")
    assert result.returncode == 125
    assert result.stderr.startswith("confine: cannot enter the target's mnt namespace")
    assert confined("--uid", "0", "--gid", "0", "--bogus", "1", "--", "true").stderr.startswith("confine: unknown option")
    missing = confined("--uid", "0", "--gid", "0", "--", "no-such-program-anywhere")
    assert missing.returncode == 127 and "no-such-program-anywhere" in missing.stderr
