"""Running programs for faults: inside a target, confined, and tracked until they end.

Every argument vector is built here from validated values: a client never
supplies a string that reaches a shell. A program run inside a target goes
through the confine helper (``confine.py``): it runs in all of the target's
namespaces and cgroups, as the target's user, with at most the target's
capabilities and no_new_privs. Each program gets a tracking cgroup
(``tracking.py``): on timeout, on daemon shutdown, or once it exits,
everything it started is killed. Output is capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import Sequence

from . import procfs
from .errors import DeadlineExceeded, FailedPrecondition
from .target import HeldTarget, confinement
from .tracking import HIERARCHY, Probe, ProbeTracker, kill_cgroup

# The confine helper's exit status when it failed before exec; 126/127 are a
# shell's "cannot execute" and "not found".
EXIT_HELPER = 125
EXIT_NOT_FOUND = (126, 127)
# The environment programs get: nothing of the daemon's own. COLUMNS because
# ps cuts each line to 80 columns when writing to a pipe.
CHILD_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C",
    "COLUMNS": "4096",
}
# Bytes of stdout kept; a program printing more is stopped. With the parsed
# rows beside it, a response stays under gRPC's default 4 MiB message limit.
OUTPUT_LIMIT = 1 << 20
STDERR_LIMIT = 64 << 10
_CHUNK = 64 << 10


@dataclasses.dataclass(frozen=True)
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    truncated: bool = False  # stdout passed OUTPUT_LIMIT: the program was stopped there


class ChildProcesses:
    """Runs programs with a timeout and capped output; kills them all at shutdown."""

    def __init__(self, tracker: ProbeTracker | None = None, output_limit: int = OUTPUT_LIMIT) -> None:
        self.tracker = tracker or ProbeTracker()
        self.output_limit = output_limit
        self._running: dict[asyncio.subprocess.Process, Probe | None] = {}

    async def run(
        self, argv: Sequence[str], timeout_s: float, pass_fds: Sequence[int] = (), probe: Probe | None = None
    ) -> Completed:
        """Run ``argv``; ``probe`` is the tracking cgroup the program joins (the confine helper does)."""
        # A session of its own: without a tracking cgroup, the process group
        # is what a timeout kills.
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            env=CHILD_ENV,
            pass_fds=tuple(pass_fds),
        )
        self._running[process] = probe
        try:
            (stdout, truncated), (stderr, _) = await asyncio.wait_for(
                asyncio.gather(
                    self._read(process.stdout, self.output_limit, process, probe),
                    self._read(process.stderr, STDERR_LIMIT, None, None),
                ),
                timeout_s,
            )
            await process.wait()
        except asyncio.TimeoutError:
            self._kill(process, probe)
            await process.wait()
            raise DeadlineExceeded(f"{list(argv[-3:])} did not finish within {timeout_s:g}s and was killed") from None
        except BaseException:
            self._kill(process, probe)
            raise
        finally:
            self._running.pop(process, None)
        return Completed(list(argv), process.returncode or 0, stdout.decode(errors="replace"),
                         stderr.decode(errors="replace"), truncated)

    async def _read(
        self, stream: asyncio.StreamReader | None, limit: int, process: asyncio.subprocess.Process | None,
        probe: Probe | None,
    ) -> tuple[bytes, bool]:
        """Up to ``limit`` bytes of ``stream``; past it, stop ``process`` (if given) or drop the rest."""
        assert stream is not None
        chunks: list[bytes] = []
        size = 0
        truncated = False
        while chunk := await stream.read(_CHUNK):
            if size < limit:
                chunks.append(chunk[: limit - size])
            size += len(chunk)
            if size > limit and not truncated:
                truncated = True
                if process is not None:
                    self._kill(process, probe)
        return b"".join(chunks), truncated

    def _kill(self, process: asyncio.subprocess.Process, probe: Probe | None) -> None:
        if probe is not None:
            kill_cgroup(probe.path)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def kill_all(self) -> None:
        for process, probe in list(self._running.items()):
            self._kill(process, probe)


class Confiner:
    """Runs a program inside a held target, as the target would run it."""

    def __init__(self, children: ChildProcesses, helper: str) -> None:
        self.children = children
        self.helper = helper
        self._skip = frozenset({HIERARCHY})

    async def run(self, target: HeldTarget, program: Sequence[str], timeout_s: float) -> Completed:
        inputs = confinement(target, procfs.cgroup_mounts(), self._skip)
        probe = self.children.tracker.new_probe()
        try:
            track = ["--track-fd", str(probe.dir_fd)] if probe else []
            argv = [self.helper, *track, *inputs.args, "--", *program]
            fds = [*inputs.fds, *([probe.dir_fd] if probe else [])]
            return await self.children.run(argv, timeout_s, pass_fds=fds, probe=probe)
        finally:
            inputs.close()
            if probe is not None:
                self.children.tracker.release(probe)


def explain_failure(result: Completed, target: str, needs: str) -> FailedPrecondition:
    """Turn a failed run inside a target into an error that says what went wrong."""
    stderr = result.stderr.strip()
    if result.returncode == EXIT_HELPER and stderr.startswith("confine:"):
        return FailedPrecondition(f"cannot run inside target {target}: {stderr.removeprefix('confine:').strip()}")
    if result.returncode in EXIT_NOT_FOUND:
        return FailedPrecondition(
            f"target {target} cannot run this fault: it needs {needs} inside the container "
            f"(distroless images lack them; HelloWorld's source='proc' needs nothing); "
            f"{stderr or f'exit {result.returncode}'}"
        )
    return FailedPrecondition(f"fault command failed in target {target} (exit {result.returncode}): {stderr}")
