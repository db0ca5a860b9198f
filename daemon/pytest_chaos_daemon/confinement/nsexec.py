"""Running programs for faults: inside a target, confined, and tracked until they end.

Every argument vector is built here from validated values: a client never
supplies a string that reaches a shell. A program run inside a target goes
through the confine helper (``confine.py``): it runs in all of the target's
namespaces and cgroups, as the target's user, with at most the target's
capabilities and no_new_privs. Each program gets a tracking cgroup
(``tracking.py``): on timeout, on daemon shutdown, or once it exits,
everything it started is killed. Output is capped. A program a fault leaves
running (``Confiner.start``) keeps a tracking cgroup of its own, made
beforehand and named in the journal, until ``Confiner.stop``; it dies with the
daemon too (the helper's parent-death signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence

from ..errors import DeadlineExceeded, FailedPrecondition
from . import freezer, procfs
from .target import NAMESPACES, Confinement, HeldTarget, cgroups_of, confinement, v2_cgroup
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
# How long a started program may take to be running as its caller wants.
START_TIMEOUT_S = 10.0
STOP_WAIT_S = 5.0


@dataclasses.dataclass(frozen=True)
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    truncated: bool = False  # stdout passed OUTPUT_LIMIT: the program was stopped there


@dataclasses.dataclass
class Started:
    """A program left running: its process, the task draining its output (stdout and stderr), and the task
    watching for it to end before it is stopped."""

    process: asyncio.subprocess.Process
    output: asyncio.Future[tuple[bytes, bool]]
    watch: asyncio.Task[None] | None = None


# Told when a started program ends before ``stop`` asks it to: (its tracking cgroup, its exit status, the tail
# of its output). The fault's injection then stops early (injections.py), rather than report itself in force.
ProgramEnded = Callable[[str, int, str], None]


class ChildProcesses:
    """Runs programs with a timeout and capped output; kills them all at shutdown."""

    def __init__(self, tracker: ProbeTracker | None = None, output_limit: int = OUTPUT_LIMIT) -> None:
        self.tracker = tracker or ProbeTracker()
        self.output_limit = output_limit
        self._running: dict[asyncio.subprocess.Process, Probe | None] = {}
        self._started: dict[str, Started] = {}  # by tracking cgroup path
        self.on_program_ended: ProgramEnded | None = None
        self._closing = False

    async def run(
        self, argv: Sequence[str], timeout_s: float, pass_fds: Sequence[int] = (), probe: Probe | None = None,
        stdin: str | None = None,
    ) -> Completed:
        """Run ``argv`` (fed ``stdin``, if given); ``probe`` is the tracking cgroup the program joins (the
        confine helper does)."""
        # A session of its own: without a tracking cgroup, the process group
        # is what a timeout kills.
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            env=CHILD_ENV,
            pass_fds=tuple(pass_fds),
        )
        self._running[process] = probe
        if self._closing:  # kill_all ran while this one was being spawned, before it was known
            self._kill(process, probe)
        try:
            if stdin is not None:
                assert process.stdin is not None
                process.stdin.write(stdin.encode())
                await asyncio.wait_for(process.stdin.drain(), timeout_s)
                process.stdin.close()
            (stdout, truncated), (stderr, _) = await asyncio.wait_for(
                asyncio.gather(
                    self._read(process.stdout, self.output_limit, process, probe),
                    self._read(process.stderr, STDERR_LIMIT, None, None),
                ),
                timeout_s,
            )
            await process.wait()
        except TimeoutError:
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

    async def start(
        self, argv: Sequence[str], pass_fds: Sequence[int], cgroup: str, env: Mapping[str, str] | None = None
    ) -> Started:
        """Start ``argv`` and leave it running; ``cgroup`` is the tracking cgroup it joins and names it to ``stop``."""
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            env={**CHILD_ENV, **(env or {})},
            pass_fds=tuple(pass_fds),
        )
        # Drained for as long as it runs: a full pipe would stall the program.
        output = asyncio.ensure_future(self._read(process.stdout, STDERR_LIMIT, None, None))
        # Kept referenced: an asyncio subprocess transport that is collected kills its process.
        started = self._started[cgroup] = Started(process, output)
        started.watch = asyncio.ensure_future(self._supervise(cgroup, started))
        if self._closing:  # kill_all ran while this one was being spawned, before it was known
            kill_cgroup(self.tracker.real(cgroup))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        return started

    async def _supervise(self, cgroup: str, started: Started) -> None:
        """Tell ``on_program_ended`` when the program ends by itself (``stop`` forgets it first)."""
        returncode = await started.process.wait()
        if self._started.get(cgroup) is not started or self._closing:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(started.output), STOP_WAIT_S)
        tail = started.output.result()[0].decode(errors="replace").strip()[-500:] if started.output.done() else ""
        if self._started.get(cgroup) is started and not self._closing and self.on_program_ended is not None:
            self.on_program_ended(cgroup, returncode, tail)

    async def stop(self, cgroup: str) -> int:
        """End a started program (SIGTERM, then SIGKILL to everything in its tracking cgroup ``cgroup``) and
        remove the cgroup; how many processes it held when stopping began."""
        real = self.tracker.real(cgroup)
        members = len(_members(real))
        started = self._started.pop(cgroup, None)
        if started is not None:
            _terminate(started.process.pid, real)
            deadline = time.monotonic() + STOP_WAIT_S
            while _program_of(started.process.pid, real) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        killed = self.tracker.discard(cgroup, wait_s=0)
        # The killed leave their cgroup a moment later (longer on a loaded machine): wait here, without blocking
        # the daemon, and kill again what is still there, until the cgroup is gone.
        deadline = time.monotonic() + STOP_WAIT_S
        while os.path.isdir(real) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            killed += self.tracker.discard(cgroup, wait_s=0)
        if started is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(started.process.pid, signal.SIGKILL)
            # Bounded: a process outside the cgroup holding the output pipe must not hang recovery.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(started.process.wait(), started.output), STOP_WAIT_S)
        return max(members, killed)

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
            kill_cgroup(probe.real)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def kill_all(self) -> None:
        self._closing = True  # what ends now ends because the daemon stops, not by itself
        for process, probe in list(self._running.items()):
            self._kill(process, probe)
        started_in = {self.tracker.real(cgroup): started for cgroup, started in self._started.items()}
        for real, started in started_in.items():
            _terminate(started.process.pid, real)
        deadline = time.monotonic() + STOP_WAIT_S
        while any(_program_of(s.process.pid, c) for c, s in started_in.items()) and time.monotonic() < deadline:
            time.sleep(0.01)
        for real, started in started_in.items():
            kill_cgroup(real)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(started.process.pid, signal.SIGKILL)


class Confiner:
    """Runs a program inside a held target, as the target would run it."""

    def __init__(self, children: ChildProcesses, helper: str) -> None:
        self.children = children
        self.helper = helper
        self._skip = frozenset({HIERARCHY})

    async def run(self, target: HeldTarget, program: Sequence[str], timeout_s: float) -> Completed:
        probe = self._new_probe(target)
        try:
            inputs = confinement(target, procfs.cgroup_mounts(), self._skip, skip_v2=self._replaces_v2(probe))
            try:
                track = ["--track-fd", str(probe.dir_fd)] if probe else []
                argv = [self.helper, *track, *inputs.args, "--", *program]
                fds = [*inputs.fds, *([probe.dir_fd] if probe else [])]
                return await self.children.run(argv, timeout_s, pass_fds=fds, probe=probe)
            finally:
                inputs.close()
        finally:
            if probe is not None:
                self.children.tracker.release(probe)

    def new_cgroup(self, target: HeldTarget | None = None) -> str:
        """A tracking cgroup for a program to ``start`` later, kept until ``stop``: its path goes in the
        journal before anything runs. ``target``: the program will run inside it (``start``); without one, it
        is one of the daemon's own (``start_in_netns``)."""
        probe = self._new_probe(target)
        if probe is None:
            raise FailedPrecondition(
                "this fault leaves programs running, and the daemon cannot track them: it has no tracking cgroup "
                "(see the daemon's log at start)"
            )
        return probe.path

    def _new_probe(self, target: HeldTarget | None) -> Probe | None:
        """A probe for a program run inside ``target`` (in its cgroup v2, where probes are children of it) or,
        without a target, for one of the daemon's own."""
        tracker = self.children.tracker
        parent = v2_cgroup(target) if target is not None and tracker.replaces_v2_membership else None
        try:
            return tracker.new_probe(parent)
        except (OSError, ValueError) as err:
            where = f"in the cgroup {parent} of target {target.description}" if target and parent else ""
            raise FailedPrecondition(f"cannot make a tracking cgroup {where}: {err}") from None

    def _replaces_v2(self, probe: Probe | None) -> bool:
        return probe is not None and self.children.tracker.replaces_v2_membership

    async def start(
        self, target: HeldTarget, program: Sequence[str], cgroup: str, ready: Callable[[], bool], *,
        namespaces: Sequence[str] = NAMESPACES, user: tuple[int, int] | None = None,
        env: Mapping[str, str] | None = None, timeout_s: float = START_TIMEOUT_S,
    ) -> str:
        """Start ``program`` confined (see ``confinement`` for ``namespaces`` and ``user``) in the tracking
        cgroup ``cgroup`` (from ``new_cgroup``) and leave it running until ``stop``. Returns ``cgroup`` once
        ``ready()`` holds; raises FailedPrecondition with the program's output if it exits first or is not
        ready within ``timeout_s`` (the caller stops ``cgroup`` then)."""
        replaces_v2 = self.children.tracker.replaces_v2_membership
        if replaces_v2 and not cgroup.startswith(f"{(v2_cgroup(target) or '').rstrip('/')}/"):
            raise FailedPrecondition(f"the tracking cgroup {cgroup} is not in target {target.description}'s "
                                     "cgroup: a program run inside a target is held to its limits")
        inputs = confinement(target, procfs.cgroup_mounts(), self._skip, namespaces, user, skip_v2=replaces_v2)
        try:
            return await self._start(inputs.args, inputs.fds, program, cgroup, ready, env, timeout_s,
                                     target.description)
        finally:
            inputs.close()

    async def start_in_netns(
        self, netns_fd: int, program: Sequence[str], cgroup: str, ready: Callable[[], bool], where: str,
        target: HeldTarget | None = None, env: Mapping[str, str] | None = None, timeout_s: float = START_TIMEOUT_S,
    ) -> str:
        """Start one of the daemon's own programs as root, with the daemon's capabilities, in the network
        namespace ``netns_fd`` and in no other namespace of a target's (a network fault's packet queue or DNS
        responder); in ``target``'s cgroups, when given, so that the target pays for its memory and CPU
        (``cgroup`` then comes from ``new_cgroup(target)``); otherwise as ``start``."""
        own = procfs.read_status(os.getpid())
        args = ["--ns-fd", f"net:{netns_fd}", "--uid", "0", "--gid", "0",
                "--cap-bnd", f"{own.cap_bnd:x}", "--cap-eff", f"{own.cap_eff & own.cap_prm:x}", "--cap-inh", "0"]
        inputs = (cgroups_of(target, procfs.cgroup_mounts(), self._skip, self.children.tracker.replaces_v2_membership)
                  if target is not None else Confinement([], []))
        try:
            return await self._start([*inputs.args, *args], [*inputs.fds, netns_fd], program, cgroup, ready, env,
                                     timeout_s, where)
        finally:
            inputs.close()

    async def _start(
        self, confine_args: Sequence[str], fds: Sequence[int], program: Sequence[str], cgroup: str,
        ready: Callable[[], bool], env: Mapping[str, str] | None, timeout_s: float, where: str,
    ) -> str:
        try:
            real = self.children.tracker.real(cgroup)
        except ValueError as err:  # a journaled path that is not a tracking cgroup
            raise FailedPrecondition(str(err)) from None
        try:
            track = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise FailedPrecondition(f"the tracking cgroup {cgroup} is gone: {err.strerror}") from None
        argv = [self.helper, "--track-fd", str(track), *confine_args, "--", *program]
        try:
            started = await self.children.start(argv, [*fds, track], cgroup, env)
        finally:
            os.close(track)
        exited = asyncio.ensure_future(started.process.wait())
        deadline = time.monotonic() + timeout_s
        try:
            while not ready():
                if time.monotonic() > deadline:
                    raise FailedPrecondition(f"{program[0]} did not start within {timeout_s:g}s in target "
                                             f"{where}")
                done, _ = await asyncio.wait({exited}, timeout=0.02)
                if done:
                    output, _ = await started.output
                    raise _start_failure(Completed(argv, exited.result(), output.decode(errors="replace"), ""),
                                         where)
        finally:
            exited.cancel()
        return cgroup

    def members(self, cgroup: str) -> set[int]:
        """The processes in the tracking cgroup named ``cgroup`` (none once it is gone)."""
        try:
            return _members(self.children.tracker.real(cgroup))
        except ValueError:
            return set()

    def exists(self, cgroup: str) -> bool:
        """Whether the tracking cgroup named ``cgroup`` is still there."""
        try:
            return os.path.isdir(self.children.tracker.real(cgroup))
        except ValueError:
            return False

    async def stop(self, cgroup: str) -> int:
        """Kill everything ``start`` left running in ``cgroup`` (or a daemon that is gone did) and remove the
        cgroup; how many processes it held. Programs of a target paused meanwhile are frozen with it: they are
        taken out of a v1 freezer first, or they would die only when it thaws."""
        freezer.release_from_v1_freezer(self.members(cgroup))
        try:
            return await self.children.stop(cgroup)
        except ValueError as err:  # a journaled path that is not a tracking cgroup: touch nothing
            raise FailedPrecondition(str(err)) from None


def _members(cgroup: str) -> set[int]:
    try:
        with open(os.path.join(cgroup, "cgroup.procs")) as f:
            return {int(pid) for pid in f.read().split()}
    except OSError:
        return set()


def _program_of(helper: int, cgroup: str) -> list[int]:
    """The program the confine helper ``helper`` runs in ``cgroup``, while it runs (the helper's child).
    Checked against the cgroup: once the helper is reaped, its PID may be another process's."""
    try:
        with open(f"/proc/{helper}/task/{helper}/children") as f:
            children = [int(pid) for pid in f.read().split()]
    except OSError:
        return []
    members = _members(cgroup)
    return [pid for pid in children if pid in members]


def _terminate(helper: int, cgroup: str) -> None:
    """SIGTERM to the program the helper runs, so it ends its own children and the helper reaps it:
    killed all at once, its children would be left to the target's init, which may never reap them."""
    for pid in _program_of(helper, cgroup):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _start_failure(result: Completed, target: str) -> FailedPrecondition:
    """Why a started program ended at once; its stdout holds stderr too."""
    if result.returncode == EXIT_HELPER and result.stdout.startswith("confine:"):
        return explain_failure(dataclasses.replace(result, stderr=result.stdout), target, "")
    program = result.argv[result.argv.index("--") + 1]
    return FailedPrecondition(f"{program} ended as it started in target {target} (exit {result.returncode}): "
                              f"{result.stdout.strip()[-2000:]}")


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
