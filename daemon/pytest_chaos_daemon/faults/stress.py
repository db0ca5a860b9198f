"""stress: stress-ng loads a target's CPU and memory until recovered, as Chaos Mesh's StressChaos.

stress-ng is the daemon's own, never the target's (a target may have none, or
a planted one). It runs through the confine helper in the target's cgroups,
so what it uses counts against the target's CPU and memory limits, and in
the target's pid namespace, so the target sees it; in no other namespace of
the target's, so its binary and libraries come from the daemon's filesystem;
as a uid no target uses, with no capabilities.

Its processes live in a tracking cgroup of their own, made in ``plan`` and
journaled before anything runs. ``recover`` kills everything in it, removes
it, and checks in /proc that no stressor of the injection is left anywhere
(each carries the plan's tag in its environment). Stressors die with the
daemon (the helper's parent-death signal); ``resume`` starts them again, in a
new cgroup, when a restarted daemon keeps the injection.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import uuid
from collections.abc import Iterable
from typing import Any

from ..api.contract import (
    MAX_WORKERS,
    OOM_SCORE_ADJ_MAX,
    OOM_SCORE_ADJ_MIN,
    StressOptionError,
    stress_options,
    vm_bytes,
)
from ..api.v1 import chaos_daemon_pb2 as pb
from ..confinement import freezer, procfs
from ..confinement.target import HeldTarget
from ..errors import FailedPrecondition, InvalidArgument, NotFound
from ..lifecycle.journal import Record
from .base import FaultContext, Plan
from .process_list import ProcessRow

# A uid and gid of the daemon's own, which no target runs as: a target process
# with the stressors' uid could open /proc/<stressor>/root (the daemon's
# filesystem) or ptrace them. (2**31 - 2: below the 32-bit user-namespace
# ranges' usual tops, unused by distributions.)
STRESSOR_ID = 2147483646
STRESSOR_USER = (STRESSOR_ID, STRESSOR_ID)
# Every stressor inherits it, so /proc tells an injection's stressors wherever they are.
TAG_VARIABLE = "PYTEST_CHAOS_STRESS"
# stress-ng refuses to start without a temporary directory it may write, even
# for stressors that write nothing; the daemon's own /tmp, never the target's.
TEMP_PATH = "/tmp"
MECHANISM = f"stress-ng in the target's cgroups and pid namespace, as uid {STRESSOR_ID}"
# oom_score_adj is written to every stressor until it holds: stress-ng's vm workers set theirs (to 1000) as
# they start, after the ones that started them.
OOM_SETTLE_ROUNDS, OOM_SETTLE_INTERVAL_S, OOM_SETTLE_LIMIT_S = 3, 0.1, 5.0
def stress_ng_arguments(params: dict[str, Any]) -> list[str]:
    """stress-ng's arguments for validated ``params``; it runs until killed (--timeout 0)."""
    args = ["--temp-path", TEMP_PATH, "--timeout", "0"]
    if cpu := params.get("cpu"):
        args += ["--cpu", str(cpu["workers"]), "--cpu-load", str(cpu["load"])]
        args += stress_options("cpu", cpu.get("options", []))  # after ours: stress-ng's last word wins
    if memory := params.get("memory"):
        # --vm-keep: the memory stays mapped, rather than unmapped and mapped again in turns.
        args += ["--vm", str(memory["workers"]), "--vm-bytes", vm_bytes(memory["size"]), "--vm-keep"]
        args += stress_options("memory", memory.get("options", []))
    return args


class Stress:
    kind = "stress"
    field = "stress"
    recoverable = True

    def check(self, request: pb.ApplyRequest) -> dict[str, Any]:
        stress = request.stress
        params: dict[str, Any] = {}
        if stress.HasField("cpu"):
            load = stress.cpu.load if stress.cpu.HasField("load") else 100  # Chaos Mesh's default
            if load > 100:
                raise InvalidArgument(f"stress.cpu.load must be from 0 to 100 (percent of each worker's CPU); "
                                      f"got {load}")
            params["cpu"] = {"workers": _workers(stress.cpu.workers, "cpu"), "load": load,
                             "options": _options(list(stress.cpu.options), "cpu")}
        if stress.HasField("memory"):
            try:
                vm_bytes(stress.memory.size)
            except ValueError as err:
                raise InvalidArgument(f"stress.memory.size {err}") from None
            params["memory"] = {"workers": _workers(stress.memory.workers, "memory"), "size": stress.memory.size,
                                "options": _options(list(stress.memory.options), "memory")}
            if stress.memory.HasField("oom_score_adj"):
                adj = stress.memory.oom_score_adj
                if not OOM_SCORE_ADJ_MIN <= adj <= OOM_SCORE_ADJ_MAX:
                    raise InvalidArgument(f"stress.memory.oom_score_adj must be from {OOM_SCORE_ADJ_MIN} to "
                                          f"{OOM_SCORE_ADJ_MAX}; got {adj}")
                params["memory"]["oom_score_adj"] = adj
        if not params:
            raise InvalidArgument("stress needs at least one stressor: stress.cpu and/or stress.memory")
        return params

    async def plan(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any]) -> Plan:
        _stress_ng()
        _check_temp_path()
        _refuse_paused(target.pid, target.description)
        _check_oom_score_adj(target, params)
        return Plan({"cgroup": ctx.confiner.new_cgroup(target), "tag": uuid.uuid4().hex}, MECHANISM)

    async def mechanisms(self, ctx: FaultContext) -> list[str]:
        return [MECHANISM]

    async def apply(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any], plan: Plan) -> list[ProcessRow]:
        await _start(ctx, target, params, plan.undo)
        return []

    async def recover(self, ctx: FaultContext, record: Record) -> str:
        cgroup, tag = record.plan["cgroup"], record.plan["tag"]
        running = len(_stress_ng_among(ctx.confiner.members(cgroup)))
        await ctx.confiner.stop(cgroup)
        # Checked from /proc, not taken from the kill: a recovery that missed them must not pass.
        left = tagged_stressors(tag)
        if left or ctx.confiner.exists(cgroup):
            raise FailedPrecondition(f"stress-ng is still running after recovery: host pids {left or '?'} "
                                     f"(tracking cgroup {cgroup})")
        if not running:
            return "no stressor was running any more (it ended with its target, or with a daemon); none is left"
        return f"stopped stress-ng ({running} processes); none is left"

    async def resume(self, ctx: FaultContext, record: Record) -> None:
        """Stressors died with the old daemon: start them again, in a new cgroup, if the target still runs."""
        await ctx.confiner.stop(record.plan["cgroup"])  # whatever survived the old daemon
        if not procfs.is_same_process(record.pid, record.start_ticks, record.boot_id):
            return  # the target is gone, and its stressors with it: recovery will find nothing left
        try:
            with HeldTarget(record.pid, record.container_id) as target:
                if target.stat.start_ticks != record.start_ticks:
                    return
                _refuse_paused(target.pid, target.description)  # the injection then ends FAILED, saying why
                # The new path is in the plan before anything starts; Injections journals the changed plan.
                record.plan = {**record.plan, "cgroup": ctx.confiner.new_cgroup(target)}
                await _start(ctx, target, record.params, record.plan)
        except NotFound:
            return


def _options(options: list[str], stressor: str) -> list[str]:
    try:
        stress_options(stressor, options)
    except StressOptionError as err:
        raise InvalidArgument(f"stress.{stressor}.options[{err.index}]: {err}") from None
    return options


def _check_oom_score_adj(target: HeldTarget, params: dict[str, Any]) -> None:
    """The stressors may be made no harder to OOM-kill than the target is: a lower oom_score_adj would have
    the kernel kill the target, or anything else on the node, to spare them, which the target could never
    arrange itself."""
    wanted = params.get("memory", {}).get("oom_score_adj")
    if wanted is None:
        return
    own = _oom_score_adj(target.pid)
    if own is None:
        raise NotFound(f"the target {target.description} ended: its oom_score_adj cannot be read")
    if wanted < own:
        raise FailedPrecondition(f"stress.memory.oom_score_adj {wanted} is lower than the target's own ({own}): it "
                                 f"would shield the stressors at the target's expense; give {own} to {OOM_SCORE_ADJ_MAX}")


def _oom_score_adj(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/oom_score_adj") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


async def _set_oom_score_adj(ctx: FaultContext, cgroup: str, wanted: int) -> None:
    """Write ``wanted`` to every stressor's oom_score_adj until a few rounds in a row find all of them at it
    (the daemon's own write, as root: a stressor may not lower its own)."""
    settled = 0
    deadline = asyncio.get_running_loop().time() + OOM_SETTLE_LIMIT_S
    while settled < OOM_SETTLE_ROUNDS:
        changed = False
        for pid in _stress_ng_among(ctx.confiner.members(cgroup)):
            if _oom_score_adj(pid) not in (None, wanted):
                changed = True
                try:
                    with open(f"/proc/{pid}/oom_score_adj", "w") as f:
                        f.write(str(wanted))
                except OSError:  # it ended in between
                    continue
        settled = 0 if changed else settled + 1
        if asyncio.get_running_loop().time() > deadline:
            raise FailedPrecondition(f"the stressors' oom_score_adj did not stay at {wanted} (stress-ng kept "
                                     f"changing it)")
        await asyncio.sleep(OOM_SETTLE_INTERVAL_S)


def _workers(workers: int, stressor: str) -> int:
    if not 1 <= workers <= MAX_WORKERS:
        raise InvalidArgument(f"stress.{stressor}.workers must be from 1 to {MAX_WORKERS}; got {workers}")
    return workers


def _stress_ng() -> str:
    binary = shutil.which("stress-ng")
    if binary is None:
        raise FailedPrecondition(
            "stress needs stress-ng where the chaos daemon runs (it runs its own, never the target's): "
            "install it there (Debian: apt-get install stress-ng; the image from daemon/Dockerfile has it)"
        )
    return binary


def _refuse_paused(pid: int, description: str) -> None:
    """Stressors started in a paused target would be paused with it and never run: stress composes with
    container-pause only when applied first (its stressors then pause and resume with the target)."""
    how = freezer.paused(pid)
    if how is not None:
        raise FailedPrecondition(f"target {description} is paused ({how}): stress-ng would never run there; "
                                 "apply stress before pausing it, or recover the pause first")


def _check_temp_path() -> None:
    try:
        mode = os.stat(TEMP_PATH).st_mode
    except OSError:
        mode = 0
    if not stat.S_ISDIR(mode) or mode & 0o1777 != 0o1777:
        raise FailedPrecondition(f"stress-ng runs as uid {STRESSOR_ID} and needs a world-writable, sticky "
                                 f"{TEMP_PATH} in the chaos daemon's filesystem")


async def _start(ctx: FaultContext, target: HeldTarget, params: dict[str, Any], undo: dict[str, Any]) -> None:
    cgroup = undo["cgroup"]

    def ready() -> bool:  # stress-ng runs and has dispatched at least one worker
        return len(_stress_ng_among(ctx.confiner.members(cgroup))) >= 2

    await ctx.confiner.start(
        target, [_stress_ng(), *stress_ng_arguments(params)], cgroup, ready,
        namespaces=("pid",), user=STRESSOR_USER, env={TAG_VARIABLE: undo["tag"]},
    )
    if (adj := params.get("memory", {}).get("oom_score_adj")) is not None:
        await _set_oom_score_adj(ctx, cgroup, adj)


def _is_stress_ng(pid: int | str) -> bool:
    # stress-ng names its workers "stress-ng-cpu", "stress-ng-vm", ...
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().startswith("stress-ng")
    except OSError:
        return False


def _stress_ng_among(pids: Iterable[int]) -> list[int]:
    return [pid for pid in pids if _is_stress_ng(pid)]


def tagged_stressors(tag: str) -> list[int]:
    """Host PIDs of live stress-ng processes started for the plan tagged ``tag``, wherever they are."""
    marker = f"{TAG_VARIABLE}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or not _is_stress_ng(entry):
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environment = f.read(1 << 16).split(b"\0")
        except OSError:
            continue
        if marker in environment:  # a zombie's environment reads empty: it does not count
            found.append(int(entry))
    return found
