"""pytest-chaos, the operator's command: what is in force on this machine's daemons, and recovering it."""

from __future__ import annotations

import subprocess
import sys

from tests.support.targets import wait_for

RUNNER_TEST = """
import time
import pytest

@pytest.mark.chaos("container-pause", selector={{"pids": [{pid}]}})
def test_app(chaos):
    print("APPLIED", chaos.experiments[0].targets[0].injection_id, flush=True)
    time.sleep(600)
"""


def pytest_chaos(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_chaos.cli", *args], capture_output=True, text=True,
                          timeout=120)


def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_status_finds_a_running_sessions_embedded_daemon_and_recover_ends_the_fault(pytester, targets):
    pid = targets.process("sleep", "4801")
    pytester.makepyfile(test_user=RUNNER_TEST.format(pid=pid))
    output = pytester.path / "pytest.out"
    with open(output, "wb") as out:
        runner = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "chaos", "-s", "test_user.py"],
                                  cwd=pytester.path, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        line = wait_for(lambda: next((line for line in output.read_text().splitlines() if "APPLIED " in line), None)
                        or runner.poll() is not None, "the fault to apply", 60)
        assert isinstance(line, str), output.read_text()
        injection_id = line.split("APPLIED ", 1)[1].split()[0]
        assert state(pid) == "T"
        listed = pytest_chaos("status")
        assert listed.returncode == 0, listed.stderr
        [row] = [r for r in listed.stdout.splitlines() if injection_id in r]
        assert "container-pause" in row and f"pid://{pid}" in row and " active " in row
        assert "test_user.py::test_app" in row  # which test run applied it
        assert pytest_chaos("status", "--expect-none").returncode == 1
        recovered = pytest_chaos("recover", injection_id)
        assert recovered.returncode == 0, recovered.stderr
        assert f"{injection_id} container-pause pid://{pid}: recovered" in recovered.stdout
        assert state(pid) != "T"
        assert injection_id not in [r.split()[1] for r in pytest_chaos("status").stdout.splitlines()[1:-1]
                                    if " active " in r]
    finally:
        runner.kill()
        runner.wait()


def test_recover_says_what_it_could_not_do():
    missing = pytest_chaos("recover", "no-such-injection")
    assert missing.returncode == 1
    assert "no-such-injection: no daemon holds it in force" in missing.stderr
    nothing = pytest_chaos("recover")
    assert nothing.returncode == 2
    assert "name the injections to recover" in nothing.stderr
    tcp = pytest_chaos("status", "--daemon", "127.0.0.1:31767")
    assert tcp.returncode == 2 and "TCP means mutual TLS" in tcp.stderr
