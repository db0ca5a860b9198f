"""time: the clocks a target's processes read are shifted by an offset, as Chaos Mesh's TimeChaos.

As Chaos Mesh does it: the vDSO's ``clock_gettime`` and ``gettimeofday`` of
each process get a jump, at their entry, to replacements in a page mapped into
the process, which make the real system call and add the offset for the clocks
asked for (``confinement/timeshift.py``, ``native/timeshift.c``). What goes
through the C library's or Go's vDSO call sees it (Python's ``time.time()``,
Go's ``time.Now()``); a raw system call, the vDSO's ``time()``, and a process
started after the fault do not.

Unlike Chaos Mesh, whose recovery state lives in the daemon's memory, ``plan``
reads every process's vDSO layout (``vdso.py``: the entries' addresses, the
bytes the jumps replace, the page's address) and the daemon journals it before
anything is written; ``recover`` needs nothing else, so a restarted daemon
recovers too. The page stays mapped after recovery, unreferenced (a thread
may be returning through it), until the process exits or runs another program.

The processes: with a pid namespace of its own (a container), every process
in it; in the daemon's pid namespace (a ``pid://`` target), the target and its
descendants. Never the daemon, its ancestors or what it runs.
"""

from __future__ import annotations

import os
import platform
from typing import Any

from ..api.contract import CLOCK_IDS, DEFAULT_CLOCK_IDS, MAX_TIME_OFFSET_NS, check_time_offset, clock_mask
from ..api.v1 import chaos_daemon_pb2 as pb
from ..confinement import confine, freezer, procfs, target_files, timeshift
from ..confinement.target import HeldTarget
from ..errors import DaemonError, FailedPrecondition, InvalidArgument, NotFound
from ..lifecycle.journal import Record
from . import vdso
from .base import FaultContext, Plan
from .process_list import ProcessRow

MECHANISM = "vDSO clock_gettime and gettimeofday patched through ptrace (x86_64)"
MAX_PROCESSES = 512  # a target with more is refused rather than stopped thread by thread for long
COMMAND_SHOWN = 200


class TimeOffset:
    kind = "time"
    field = "time"
    recoverable = True

    def check(self, request: pb.ApplyRequest) -> dict[str, Any]:
        message = request.time
        if not message.HasField("time_offset"):
            raise InvalidArgument("time.time_offset is required: a signed duration other than zero (e.g. -2h, 30m)")
        seconds, nanos = message.time_offset.seconds, message.time_offset.nanos
        if abs(nanos) >= 1_000_000_000 or (seconds and nanos and (seconds < 0) != (nanos < 0)):
            raise InvalidArgument(f"time.time_offset: nanos must be below 1e9 and of the seconds' sign; "
                                  f"got {seconds} s {nanos} ns")
        try:
            offset_ns = check_time_offset(seconds * 1_000_000_000 + nanos)
        except ValueError as err:
            raise InvalidArgument(f"time.time_offset {err} (at most {MAX_TIME_OFFSET_NS} ns)") from None
        clock_ids = list(dict.fromkeys(message.clock_ids)) or list(DEFAULT_CLOCK_IDS)
        try:
            clock_mask(clock_ids)
        except ValueError:
            unknown = [name for name in clock_ids if name not in CLOCK_IDS]
            raise InvalidArgument(f"time.clock_ids: {', '.join(map(repr, unknown))} not accepted; accepted: "
                                  f"{', '.join(CLOCK_IDS)} (empty: CLOCK_REALTIME)") from None
        return {"offset_ns": offset_ns, "clock_ids": clock_ids}

    async def plan(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any]) -> Plan:
        _helper()
        if (how := freezer.frozen(target.pid)) is not None:  # a frozen process cannot be ptrace-stopped
            raise FailedPrecondition(f"target {target.description} is paused ({how}): its clocks cannot be shifted "
                                     "while it is frozen; apply time before pausing it, or recover the pause first")
        layouts = await target_files.run(lambda: _plan_processes(target),
                                         f"reading the vDSO of the processes of target {target.description}")
        return Plan({"processes": layouts}, MECHANISM)

    async def mechanisms(self, ctx: FaultContext) -> list[str]:
        return [MECHANISM] if _machine_supported() else []

    async def apply(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any], plan: Plan) -> list[ProcessRow]:
        helper = _helper()
        mask = clock_mask(params["clock_ids"])
        shifted: list[ProcessRow] = []
        for process in plan.undo["processes"]:
            argv = timeshift.apply_argv(helper, process["pid"], process["vdso"], process["page"], params["offset_ns"],
                                        mask, _sites(process))
            done = await _run(ctx, argv)
            if done.status in ("gone", "execed"):
                continue  # it ended, or runs another program, since the plan: nothing of it to shift
            if done.status != "applied":
                raise FailedPrecondition(f"cannot shift the clocks of process {process['pid']} "
                                         f"({process['command'][:COMMAND_SHOWN]}) of target {target.description}: "
                                         f"{done.detail}")
            shifted.append(ProcessRow(pid=process["inner_pid"], user=str(process["uid"]), command=process["command"]))
        if not shifted:
            raise FailedPrecondition(f"every process of target {target.description} ended before its clocks could "
                                     "be shifted")
        return shifted

    async def recover(self, ctx: FaultContext, record: Record) -> str:
        helper = _helper()
        restored, unchanged, ended, failures = 0, 0, 0, []
        for process in record.plan["processes"]:
            if not procfs.is_same_process(process["pid"], process["start_ticks"], record.boot_id):
                ended += 1
                continue
            argv = timeshift.recover_argv(helper, process["pid"], process["vdso"], process["page"], _sites(process))
            try:
                done = await _run(ctx, argv)
            except DaemonError as err:  # a timeout: the others are still put back
                failures.append(f"process {process['pid']}: {err.message}")
                continue
            if done.status == "restored":
                restored += 1
            elif done.status == "unchanged":
                unchanged += 1
            elif done.status in ("gone", "execed"):
                ended += 1
            else:
                failures.append(f"process {process['pid']} ({process['command'][:COMMAND_SHOWN]}): {done.detail}")
        if failures:
            raise FailedPrecondition(f"the clocks of {len(failures)} process(es) may still be shifted: "
                                     f"{'; '.join(failures)}")
        parts = []
        if unchanged:
            parts.append(f"{unchanged} had nothing to put back (never shifted, or put back already)")
        if ended:
            parts.append(f"{ended} ended or run another program since (their shifted vDSO is gone)")
        said = f"; {', '.join(parts)}" if parts else ""
        if not restored:
            return f"nothing to put back: no process had its clocks shifted any more{said}"
        return f"put back the vDSO clocks of {restored} process(es){said}"

    async def resume(self, ctx: FaultContext, record: Record) -> None:
        """Nothing ended with the old daemon: the jumps live in the target's processes."""


def _machine_supported() -> bool:
    return platform.machine() == "x86_64"


def _helper() -> str:
    if not _machine_supported():
        raise FailedPrecondition(f"the time fault patches x86_64 vDSOs only; this node is {platform.machine()}")
    try:
        return timeshift.helper_path()
    except confine.HelperUnavailable as err:
        raise FailedPrecondition(f"the time fault needs its helper: {err}") from None


def _sites(process: dict[str, Any]) -> list[tuple[int, str]]:
    return [(int(address), str(original)) for address, original in process["sites"]]


async def _run(ctx: FaultContext, argv: list[str]) -> timeshift.Outcome:
    result = await ctx.children.run(argv, timeshift.RUN_TIMEOUT_S)
    return timeshift.outcome(result.returncode, result.stdout, result.stderr)


def _plan_processes(target: HeldTarget) -> list[dict[str, Any]]:
    """Each process of the target, with its identity and vDSO layout: what apply writes and recover undoes."""
    planned = []
    for pid in target_processes(target):
        try:
            stat, status = procfs.read_stat(pid), procfs.read_status(pid)
            layout = vdso.read_layout(pid)
            command = " ".join(procfs.read_cmdline(pid)) or f"[{stat.comm}]"
        except (NotFound, OSError):
            continue  # ended while listed
        planned.append({"pid": pid, "start_ticks": stat.start_ticks, "inner_pid": status.nspid[-1], "uid": status.uid,
                        "command": command[:COMMAND_SHOWN], "vdso": layout.vdso, "page": layout.page,
                        "sites": [list(site) for site in layout.sites]})
    target.check_alive()
    if not planned:
        raise FailedPrecondition(f"target {target.description} has no process whose clocks could be shifted")
    return planned


def target_processes(target: HeldTarget) -> list[int]:
    """Host pids of the target's processes: its pid namespace's, or (in the daemon's) the target's process tree.
    Kernel threads, zombies, and the daemon with its ancestors and everything it runs are left out."""
    try:
        theirs = procfs.namespace_id(f"/proc/{target.pid}/ns/pid")
    except FileNotFoundError:
        raise NotFound(f"target {target.description} (host pid {target.pid}) has exited") from None
    shared = theirs == procfs.namespace_id("/proc/self/ns/pid")
    daemon = os.getpid()
    parents: dict[int, int] = {}  # every process's, to tell what the daemon runs wherever it runs it
    members: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            stat = procfs.read_stat(pid)
            parents[pid] = stat.ppid
            if stat.kernel_thread or stat.state in ("Z", "X"):
                continue
            if shared or procfs.namespace_id(f"/proc/{pid}/ns/pid") == theirs:
                members.add(pid)
        except OSError:
            continue
    keep = procfs.ancestors(daemon)

    def descends_from(pid: int, root: int) -> bool:
        seen = 0
        while pid > 1 and seen < 4096:
            if pid == root:
                return True
            pid, seen = parents.get(pid, 0), seen + 1
        return pid == root

    found = sorted(pid for pid in members if pid not in keep and not descends_from(pid, daemon)
                   and (not shared or descends_from(pid, target.pid)))
    if len(found) > MAX_PROCESSES:
        raise FailedPrecondition(f"target {target.description} has {len(found)} processes; the time fault shifts "
                                 f"at most {MAX_PROCESSES}")
    return found
