"""Running a fixed program inside a target's namespaces with nsenter.

Every argument vector is built here from validated values: a client never
supplies a string that reaches a shell. Children are killed on timeout, get a
parent-death signal (so they die with the daemon), and are killed when the
daemon shuts down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
from collections.abc import Sequence

from .errors import DeadlineExceeded, FailedPrecondition

# Chaos Mesh enters mnt, ipc, net and pid, never uts or user. A fault asks for
# the subset it needs.
NAMESPACE_FLAGS = {"mnt": "-m", "ipc": "-i", "net": "-n", "pid": "-p"}
# nsenter (util-linux) exits 126/127 when it cannot exec the program; a shell
# exits 127 for a command it cannot find.
EXIT_NOT_FOUND = (126, 127)
# The environment fault commands get: nothing of the daemon's own. COLUMNS
# because ps cuts each line to 80 columns when writing to a pipe.
CHILD_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C",
    "COLUMNS": "4096",
}


@dataclasses.dataclass(frozen=True)
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def build_argv(pid: int, namespaces: Sequence[str], program: Sequence[str]) -> list[str]:
    """The full argument vector that runs ``program`` in ``pid``'s namespaces."""
    if pid <= 0:
        raise ValueError(f"bad pid {pid}")
    flags = [NAMESPACE_FLAGS[ns] for ns in namespaces]
    setpriv = shutil.which("setpriv")
    # setpriv sets the parent-death signal, then execs nsenter (it survives exec).
    prefix = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
    return [*prefix, shutil.which("nsenter") or "nsenter", "-t", str(pid), *flags, "--", *program]


class ChildProcesses:
    """Tracks running children so shutdown can kill them all."""

    def __init__(self) -> None:
        self._running: set[asyncio.subprocess.Process] = set()

    async def run(self, argv: list[str], timeout_s: float) -> Completed:
        # A new session makes the child a process-group leader: killing the
        # group also kills what nsenter forked inside the target.
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            env=CHILD_ENV,
        )
        self._running.add(process)
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
        except asyncio.TimeoutError:
            _kill_group(process)
            await process.wait()
            raise DeadlineExceeded(f"{argv[-3:]} did not finish within {timeout_s:g}s and was killed") from None
        except BaseException:
            _kill_group(process)
            raise
        finally:
            self._running.discard(process)
        return Completed(argv, process.returncode or 0, stdout.decode(errors="replace"), stderr.decode(errors="replace"))

    def kill_all(self) -> None:
        for process in list(self._running):
            _kill_group(process)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def explain_failure(result: Completed, target: str, needs: str) -> FailedPrecondition:
    """Turn a failed nsenter run into an error that says what the target lacks."""
    stderr = result.stderr.strip()
    if "No such file or directory" in stderr and "/proc/" in stderr:
        return FailedPrecondition(f"target {target} exited before the fault could enter it: {stderr}")
    if result.returncode in EXIT_NOT_FOUND:
        return FailedPrecondition(
            f"target {target} cannot run this fault: it needs {needs} inside the container "
            f"(distroless images lack them); nsenter said: {stderr or f'exit {result.returncode}'}"
        )
    return FailedPrecondition(f"fault command failed in target {target} (exit {result.returncode}): {stderr}")
