"""process-kill: a signal to the processes inside the target that match a name or a pattern.

As chaosd's process attack, within the target's pid namespace. The processes
come from the target's own /proc (``proc_listing.TargetProc``, opened safely
below its root), and each is signalled through a directory fd of its
``/proc/<pid>`` there: that fd pins the process as a pidfd does, and its stat
is checked against the listing, so a PID reused in between is never
signalled. A process matches when its command name (the basename of argv[0],
or comm for a process without a command line) equals ``process``, or when
``process``, as a regular expression, is found in its command line.

Patterns are RE2's (google-re2), not Python's ``re``: a target chooses its
command lines and a test author its pattern, and with ``re`` either can make
matching take minutes while it holds the GIL and so the whole daemon
(``.*.*.*.*.*.*\x01`` over a few command lines, or ``python.*server`` over a
1 MiB one). RE2 matches in time linear in the text whatever the pattern; it
has no backreferences or lookarounds, which are refused, naming them. Each
command line is matched on its first ``proc_listing.CMDLINE_LIMIT`` bytes,
and the listing and matching run in ``target_files``' pool, off the event
loop.

A target in the daemon's own pid namespace (a ``pid://`` process that has no
namespace of its own) sees every process of the node: the node's init, the
daemon and its ancestors, and kernel threads are never signalled. One-shot.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import time
from typing import Any

from ..api.contract import MAX_PROCESS_LEN, RE2_REFUSES, process_pattern
from ..api.v1 import chaos_daemon_pb2 as pb
from ..confinement import procfs, target_files
from ..confinement.target import HeldTarget
from ..errors import FailedPrecondition, InvalidArgument, PermissionDenied
from .base import FaultContext, OneShot, Plan
from .proc_listing import ProcEntry, TargetProc, read_at
from .process_list import ProcessRow

MAX_SIGNAL = 64
# Short-lived matches (a loop's `sleep 0.05` on a busy node) come and go: when none is running, or
# every match ended before it was signalled, match again this often, for at most this long.
MATCH_WINDOW_S = 2.0
REMATCH_PAUSE_S = 0.01
# How much of the target's process list a no-match error shows.
LISTED_IN_ERRORS = 30
COMMAND_IN_ERRORS = 80


class ProcessKill(OneShot):
    kind = "process-kill"
    field = "process_kill"

    def check(self, request: pb.ApplyRequest) -> dict[str, Any]:
        message = request.process_kill
        process = message.process
        if not 1 <= len(process) <= MAX_PROCESS_LEN:
            raise InvalidArgument(
                f"process_kill.process must be 1 to {MAX_PROCESS_LEN} characters: a command name, "
                "or a regular expression searched in each command line"
            )
        compile_pattern(process)
        if not 0 <= message.signal <= MAX_SIGNAL:
            raise InvalidArgument(f"process_kill.signal must be 1 to {MAX_SIGNAL} (0 means SIGKILL); got {message.signal}")
        return {"process": process, "signal": message.signal or int(signal.SIGKILL)}

    async def plan(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any]) -> Plan:
        matched = await _matching_within(target, params["process"])
        # The identities (pid, start time) are what apply signals, and what the journal shows.
        undo = {"processes": [[e.pid, e.stat.start_ticks, e.user, e.command] for e in matched]}
        return Plan(undo, f"{signal_name(params['signal'])} to the matching processes (pidfd)")

    async def mechanisms(self, ctx: FaultContext) -> list[str]:
        return ["the signal asked for (SIGKILL by default) to the matching processes (pidfd)"]

    async def apply(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any], plan: Plan) -> list[ProcessRow]:
        signalled = await target_files.run(lambda: _signal_each(target, plan.undo["processes"], params["signal"]),
                                           f"signalling the processes of target {target.description}")
        deadline = time.monotonic() + MATCH_WINDOW_S
        while not signalled and time.monotonic() < deadline:
            # Every match ended while the plan was journaled: match again and signal at once, as pkill
            # would have. One-shot: nothing to recover either way.
            try:
                again = await _matching_within(target, params["process"], deadline)
            except FailedPrecondition:
                break
            processes = [[e.pid, e.stat.start_ticks, e.user, e.command] for e in again]
            signalled = await target_files.run(functools.partial(_signal_each, target, processes, params["signal"]),
                                               f"signalling the processes of target {target.description}")
        if not signalled:
            raise FailedPrecondition(
                f"every process of target {target.description} matching {params['process']!r} "
                f"exited before it could be signalled (matched again for {MATCH_WINDOW_S:g} s)"
            )
        return signalled


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def compile_pattern(process: str) -> Any:
    """``process`` as an RE2 regular expression; InvalidArgument, saying what RE2 lacks, when it is not one."""
    try:
        return process_pattern(process)
    except ValueError as err:
        raise InvalidArgument(
            f"process_kill.process {process!r} is not a regular expression RE2 accepts ({err}); give a command "
            f"name or {RE2_REFUSES}: matching takes time linear in the command line, whatever the pattern"
        ) from None


def matches(entry: ProcEntry, pattern: str, compiled: Any) -> bool:
    """The command name equals ``pattern``, or ``compiled`` (``pattern``) is found in the command line."""
    return entry.name == pattern or compiled.search(entry.command) is not None


async def _matching_within(target: HeldTarget, pattern: str, deadline: float | None = None) -> list[ProcEntry]:
    """The matching processes, waiting up to ``MATCH_WINDOW_S`` (or until ``deadline``) for one to run."""
    deadline = deadline if deadline is not None else time.monotonic() + MATCH_WINDOW_S
    compiled = compile_pattern(pattern)
    while True:
        try:
            return await target_files.run(lambda: _matching(target, pattern, compiled),
                                          f"matching {pattern!r} in the processes of target {target.description}")
        except FailedPrecondition as err:
            if time.monotonic() >= deadline:
                raise FailedPrecondition(f"{err} (matched for {MATCH_WINDOW_S:g} s)") from None
        await asyncio.sleep(REMATCH_PAUSE_S)


def _matching(target: HeldTarget, pattern: str, compiled: Any) -> list[ProcEntry]:
    protected = _protected(target)
    with TargetProc(target, "process-kill") as proc:
        listed = [e for e in proc.processes() if not e.stat.kernel_thread and e.pid not in protected]
    target.check_alive()
    matched = [e for e in listed if matches(e, pattern, compiled)]
    if not matched:
        shown = ", ".join(f"{e.pid} {e.command[:COMMAND_IN_ERRORS]}" for e in listed[:LISTED_IN_ERRORS])
        more = f", and {len(listed) - LISTED_IN_ERRORS} more" if len(listed) > LISTED_IN_ERRORS else ""
        raise FailedPrecondition(
            f"target {target.description} has no process matching {pattern!r} (as a command name or a "
            f"regular expression in the command line); its processes: {shown or 'none'}{more}"
        )
    return matched


def _protected(target: HeldTarget) -> set[int]:
    """PIDs never signalled: in the daemon's own pid namespace, its init, the daemon and its ancestors."""
    try:
        theirs, ours = os.stat(f"/proc/{target.pid}/ns/pid"), os.stat("/proc/self/ns/pid")
    except FileNotFoundError:
        target.check_alive()
        raise
    except PermissionError:
        raise PermissionDenied(f"the daemon may not inspect target {target.description} (host pid {target.pid})") from None
    if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
        return set()  # a namespace below the daemon's holds none of these
    return {1} | procfs.ancestors(os.getpid())


def _signal_each(target: HeldTarget, processes: list[list[Any]], signum: int) -> list[ProcessRow]:
    signalled = []
    with TargetProc(target, "process-kill") as proc:
        for pid, start_ticks, user, command in processes:
            try:
                fd = proc.open_process(pid)
            except OSError:
                continue  # exited since it was listed
            try:
                stat = read_at(fd, "stat")
                if stat is None or procfs.parse_stat(stat).start_ticks != start_ticks:
                    continue  # exited, and its PID went to another process
                signal.pidfd_send_signal(fd, signum)
            except ProcessLookupError:
                continue
            except PermissionError:
                raise PermissionDenied(f"the daemon may not signal process {pid} ({command[:COMMAND_IN_ERRORS]}) "
                                       f"of target {target.description}") from None
            finally:
                os.close(fd)
            signalled.append(ProcessRow(pid=pid, user=user, command=command))
    return signalled
