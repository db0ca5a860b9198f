"""Nothing outlives its owner: the embedded daemon dies with pytest, and a daemon never takes over a live socket.

Real processes on real sockets: pytest and daemons are killed with SIGKILL
and the tests wait, bounded, for what must follow.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pytest_chaos_daemon.lifecycle.journal import DEFAULT_STATE_DIR

from pytest_chaos.embedded import EMBEDDED_STATE_DIR, MAX_SOCKET_PATH, SHORT_PARENTS
from pytest_chaos.transport import DaemonClient
from tests.support.targets import wait_for

pytestmark = pytest.mark.usefixtures("_root_only")

DEADLINE_S = 20.0


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (a zombie's is empty)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(entry))
    return found


def is_serving(address: str) -> bool:
    client = DaemonClient(address)
    try:
        return client.is_serving(timeout_s=1.0)
    finally:
        client.close()


def daemon_argv(listen: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "pytest_chaos_daemon", "--listen", listen, "--log-level", "debug", *args]


def private_dir(parent: Path) -> str:
    """A directory ``--remove-on-exit`` accepts: named pytest-chaos-*, ours, 0700 (mkdtemp's mode)."""
    return tempfile.mkdtemp(prefix="pytest-chaos-", dir=parent)


class Reaper:
    """Kills, after the test, every process handed to it: children directly, others through a pidfd."""

    def __init__(self) -> None:
        self._children: list[subprocess.Popen[bytes]] = []
        self._pidfds: list[int] = []

    def child(self, process: subprocess.Popen) -> subprocess.Popen:
        self._children.append(process)
        return process

    def pid(self, pid: int) -> int:
        # A pidfd names this very process: a recycled PID cannot be killed by mistake.
        with contextlib.suppress(ProcessLookupError):
            self._pidfds.append(os.pidfd_open(pid))
        return pid

    def close(self) -> None:
        for process in self._children:
            process.kill()
            process.wait()
        for pidfd in self._pidfds:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    reaper = Reaper()
    yield reaper
    reaper.close()


@pytest.fixture
def isolated_pid(targets, reaper: Reaper) -> Callable[[str], int]:
    """An isolated ``sleep ARG`` target. ``unshare --fork`` leaves its child behind when killed: kill it too."""
    return lambda arg: reaper.pid(targets.process("sleep", arg))


def printed(lines: list[str], key: str) -> str | None:
    """The word after ``key`` that the user test printed (pytest's progress may precede it on its line)."""
    for line in lines:
        if f"{key} " in line:
            return line.split(f"{key} ", 1)[1].split()[0]
    return None


def printed_socket(output: Path, process: subprocess.Popen) -> str | None:
    """The daemon address the user test printed, once it has; fails if pytest ended first."""
    text = output.read_text(errors="replace")
    address = printed(text.splitlines(), "SOCKET")
    if address:
        return address
    if process.poll() is not None:
        raise AssertionError(f"pytest exited ({process.returncode}) before printing the socket:\n{text}")
    return None


def test_sigkill_of_pytest_mid_test_leaves_no_daemon_and_no_socket_directory(pytester, isolated_pid, reaper):
    pid = isolated_pid("9601")
    pytester.makepyfile(test_user=f"""
        import time
        import pytest

        @pytest.mark.chaos("helloworld", selector={{"pids": [{pid}]}})
        def test_app(chaos):
            print("SOCKET", chaos.experiments[0].targets[0].daemon, flush=True)
            time.sleep(600)
    """)
    output = pytester.path / "pytest.out"
    with open(output, "wb") as out:
        pytest_process = reaper.child(subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "chaos", "-p", "no:cacheprovider", "-s", "test_user.py"],
            cwd=pytester.path, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        ))
    address = wait_for(lambda: printed_socket(output, pytest_process), "the test to print its daemon", 60)
    socket_path = address.removeprefix("unix://")
    directory = os.path.dirname(socket_path)
    [daemon_pid] = processes_mentioning(socket_path)
    reaper.pid(daemon_pid)
    assert os.path.isdir(directory)

    pytest_process.kill()
    pytest_process.wait()

    wait_for(lambda: not processes_mentioning(socket_path), f"the daemon (pid {daemon_pid}) to exit", DEADLINE_S)
    wait_for(lambda: not os.path.exists(directory), f"{directory} to be removed", DEADLINE_S)


# The parent blocks SIGTERM and the daemon inherits the blocked mask, so the
# parent-death signal stays pending: only the pidfd watchdog can stop it.
PARENT_BLOCKING_SIGTERM = """
import os, signal, subprocess, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
log = open(sys.argv[1], "wb")
daemon = subprocess.Popen([*sys.argv[2:], "--exit-with-parent", str(os.getpid())], stdout=log, stderr=log)
print(daemon.pid, flush=True)
signal.pause()
"""


@pytest.mark.needs_root
def test_watchdog_alone_stops_the_daemon_and_removes_its_directory_when_its_parent_is_killed(tmp_path, reaper):
    directory = private_dir(tmp_path)
    address = f"unix://{directory}/daemon.sock"
    log = tmp_path / "daemon.log"  # outside the directory, to read after it is gone
    parent = reaper.child(subprocess.Popen(
        [sys.executable, "-c", PARENT_BLOCKING_SIGTERM, str(log), *daemon_argv(address, "--remove-on-exit", directory)],
        stdout=subprocess.PIPE,
    ))
    daemon_pid = reaper.pid(int(parent.stdout.readline()))
    wait_for(lambda: is_serving(address), "the daemon to serve", DEADLINE_S)
    blocked = int(next(line for line in open(f"/proc/{daemon_pid}/status") if line.startswith("SigBlk:")).split()[1], 16)
    assert blocked & (1 << (signal.SIGTERM - 1)), "the daemon should have SIGTERM blocked"

    parent.kill()
    parent.wait()

    wait_for(lambda: not processes_mentioning(address), f"the daemon (pid {daemon_pid}) to exit", DEADLINE_S)
    assert not os.path.exists(directory)
    text = log.read_text()
    assert '"the parent process is gone; shutting down"' in text and '"how": "exited"' in text, text


@pytest.mark.needs_root
def test_daemon_whose_given_parent_is_not_its_parent_exits_at_once_and_removes_its_directory(tmp_path):
    directory = private_dir(tmp_path)
    # As if the parent had died before the daemon set its parent-death signal.
    result = subprocess.run(
        daemon_argv(f"unix://{directory}/daemon.sock", "--exit-with-parent", "1", "--remove-on-exit", directory),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "is not the parent" in result.stderr
    assert not os.path.exists(directory)


@pytest.mark.needs_root
def test_daemon_stopped_by_sigterm_removes_its_directory(tmp_path, reaper):
    directory = private_dir(tmp_path)
    address = f"unix://{directory}/daemon.sock"
    daemon = reaper.child(subprocess.Popen(daemon_argv(address, "--remove-on-exit", directory),
                                           stderr=subprocess.DEVNULL))
    wait_for(lambda: is_serving(address), "the daemon to serve", DEADLINE_S)
    daemon.terminate()
    assert daemon.wait(timeout=DEADLINE_S) == 0
    assert not os.path.exists(directory)


@pytest.mark.needs_root
def test_directory_that_no_longer_passes_the_rules_at_exit_is_left_alone(tmp_path, reaper):
    directory = private_dir(tmp_path)
    address = f"unix://{directory}/daemon.sock"
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        daemon = reaper.child(subprocess.Popen(daemon_argv(address, "--remove-on-exit", directory), stderr=out))
    wait_for(lambda: is_serving(address), "the daemon to serve", DEADLINE_S)
    os.chmod(directory, 0o755)
    daemon.terminate()
    assert daemon.wait(timeout=DEADLINE_S) == 0
    assert os.path.isdir(directory)
    assert '"not removing the directory"' in log.read_text()


def test_long_tmpdir_falls_back_to_a_short_socket_directory(pytester, isolated_pid, monkeypatch):
    pid = isolated_pid("9602")
    long_tmpdir = pytester.path / ("t" * max(10, 150 - len(str(pytester.path)) - 1))
    long_tmpdir.mkdir()
    assert len(str(long_tmpdir)) >= 150
    monkeypatch.setenv("TMPDIR", str(long_tmpdir))
    pytester.makepyfile(test_user=f"""
        import tempfile
        import pytest

        @pytest.mark.chaos("helloworld", selector={{"pids": [{pid}]}})
        def test_app(chaos):
            [target] = chaos.experiments[0].targets
            assert [p.command for p in target.processes] == ["sleep 9602"]
            print("TMPDIR", tempfile.gettempdir())
            print("SOCKET", target.daemon)
    """)
    result = pytester.runpytest_subprocess("-p", "chaos", "-s")
    result.assert_outcomes(passed=1)
    assert printed(result.outlines, "TMPDIR") == str(long_tmpdir)
    socket_path = printed(result.outlines, "SOCKET").removeprefix("unix://")
    assert len(socket_path.encode()) <= MAX_SOCKET_PATH
    assert os.path.dirname(os.path.dirname(socket_path)) in SHORT_PARENTS
    assert not os.path.exists(os.path.dirname(socket_path))


def test_the_plugins_daemon_journals_apart_from_a_node_daemons_journal(pytester, isolated_pid):
    # Else it would take over what a replaced DaemonSet pod on the same machine left for its successor.
    pid = isolated_pid("9603")
    pytester.makepyfile(test_user=f"""
        import os
        import pytest

        @pytest.mark.chaos("container-pause", selector={{"pids": [{pid}]}}, mode="all")
        def test_app(chaos):
            record = chaos.experiments[0].targets[0].injection_id + ".json"
            assert os.path.exists(os.path.join({EMBEDDED_STATE_DIR!r}, "injections", record))
            assert not os.path.exists(os.path.join({DEFAULT_STATE_DIR!r}, "injections", record))
    """)
    pytester.runpytest_subprocess("-p", "chaos").assert_outcomes(passed=1)


def test_daemon_started_from_a_short_lived_thread_outlives_that_thread(pytester, isolated_pid):
    pid = isolated_pid("9603")
    result = pytester.runpytest_subprocess("-p", "chaos", pytester.makepyfile(test_user=f"""
        import os
        import threading
        import time

        def test_app(chaos):
            daemons = []

            def first_use():
                with chaos.apply("helloworld", selector={{"pids": [{pid}]}}) as experiment:
                    daemons.append(experiment.targets[0].daemon)
            thread = threading.Thread(target=first_use)
            thread.start()
            thread.join()
            # The thread that started the daemon is gone; the daemon must not
            # be (a stopped one would be restarted on another socket).
            time.sleep(1)
            assert os.path.exists(daemons[0].removeprefix("unix://"))
            with chaos.apply("helloworld", selector={{"pids": [{pid}]}}) as experiment:
                assert experiment.targets[0].daemon == daemons[0]
                assert [p.command for p in experiment.targets[0].processes] == ["sleep 9603"]
    """))
    result.assert_outcomes(passed=1)


@pytest.mark.needs_root
def test_second_daemon_on_a_live_daemons_socket_refuses_and_the_first_keeps_serving(tmp_path, reaper):
    path = tmp_path / "daemon.sock"
    address = f"unix://{path}"
    reaper.child(subprocess.Popen(daemon_argv(address), stderr=subprocess.DEVNULL))
    wait_for(lambda: is_serving(address), "the first daemon to serve", DEADLINE_S)

    second = subprocess.run(daemon_argv(address), capture_output=True, text=True, timeout=60)

    assert second.returncode != 0
    assert f"another process is serving {path}; stop it or choose another --listen" in second.stderr
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert is_serving(address)


@pytest.mark.needs_root
def test_stale_socket_file_is_replaced(tmp_path, reaper):
    path = tmp_path / "daemon.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # bound, never listening, closed: connecting is refused
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    address = f"unix://{path}"
    reaper.child(subprocess.Popen(daemon_argv(address), stderr=subprocess.DEVNULL))
    wait_for(lambda: is_serving(address), "the daemon to serve on the stale socket's path", DEADLINE_S)


@pytest.mark.needs_root
def test_file_that_is_not_a_socket_is_not_replaced(tmp_path):
    path = tmp_path / "daemon.sock"
    path.write_text("keep me")
    result = subprocess.run(daemon_argv(f"unix://{path}"), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "exists and is not a socket" in result.stderr
    assert path.read_text() == "keep me"


def _wrong_name(tmp: Path) -> tuple[str, str]:
    return tempfile.mkdtemp(prefix="other-", dir=tmp), "its name must start with 'pytest-chaos-'"


def _open_mode(tmp: Path) -> tuple[str, str]:
    directory = private_dir(tmp)
    os.chmod(directory, 0o755)
    return directory, "has mode 0755, not 0700"


def _other_owner(tmp: Path) -> tuple[str, str]:
    directory = private_dir(tmp)
    os.chown(directory, 65534, 65534)
    return directory, "is owned by uid 65534"


def _symlink(tmp: Path) -> tuple[str, str]:
    link = tmp / "pytest-chaos-link"
    link.symlink_to(private_dir(tmp))
    return str(link), "is not a directory (a symlink is refused)"


def _regular_file(tmp: Path) -> tuple[str, str]:
    path = tmp / "pytest-chaos-file"
    path.write_text("keep me")
    return str(path), "is not a directory"


def _relative(tmp: Path) -> tuple[str, str]:
    return os.path.relpath(private_dir(tmp)), "must be an absolute path"


def _dot_dot(tmp: Path) -> tuple[str, str]:
    return f"{private_dir(tmp)}/../{os.path.basename(private_dir(tmp))}", "without '.' or '..' components"


def _missing(tmp: Path) -> tuple[str, str]:
    return str(tmp / "pytest-chaos-missing"), "No such file or directory"


@pytest.mark.parametrize("make", [_wrong_name, _open_mode, _other_owner, _symlink, _regular_file, _relative,
                                  _dot_dot, _missing])
@pytest.mark.needs_root
def test_remove_on_exit_refuses_a_directory_that_breaks_the_rules(tmp_path, make):
    path, reason = make(tmp_path)
    existed = os.path.lexists(path)
    result = subprocess.run(daemon_argv(f"unix://{tmp_path}/daemon.sock", "--remove-on-exit", path),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"--remove-on-exit {path}: " in result.stderr and reason in result.stderr, result.stderr
    assert os.path.lexists(path) == existed
    assert not os.path.exists(tmp_path / "daemon.sock")
