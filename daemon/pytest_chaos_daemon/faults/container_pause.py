"""container-pause: every process of the target stops until recovered.

A container is frozen through its cgroup freezer (v1 ``freezer.state``, or v2
``cgroup.freeze``), which stops every process in it, children included, and
cannot be undone from inside. A ``pid://`` process has no cgroup of its own:
it and its descendants get SIGSTOP, and SIGCONT on recovery (each checked by
its start time first, so a recycled PID is never touched).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from ..api.v1 import chaos_daemon_pb2 as pb
from ..confinement import procfs
from ..confinement.freezer import FREEZER_V1, FREEZER_V2
from ..confinement.target import HeldTarget
from ..errors import FailedPrecondition, NotFound, PermissionDenied
from ..lifecycle.journal import Record
from .base import FaultContext, Plan
from .process_list import ProcessRow

FREEZE_TIMEOUT_S = 10.0
SIGSTOP = "SIGSTOP to the process and its descendants"


class ContainerPause:
    kind = "container-pause"
    field = "container_pause"
    recoverable = True

    def check(self, request: pb.ApplyRequest) -> dict[str, Any]:
        return {}

    async def plan(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any]) -> Plan:
        if target.description.startswith("pid://"):
            tree = []
            for pid in _process_tree(target.pid):
                try:
                    tree.append([pid, procfs.read_stat(pid).start_ticks])
                except (FileNotFoundError, ProcessLookupError):  # a descendant that ended since it was listed
                    if pid == target.pid:
                        raise NotFound(f"target {target.description} exited") from None
            return Plan({"processes": tree}, SIGSTOP)
        return _freezer_plan(target)

    async def apply(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any], plan: Plan) -> list[ProcessRow]:
        undo = plan.undo
        if "processes" in undo:
            for pid, start_ticks in undo["processes"]:
                _signal_if_same(pid, start_ticks, signal.SIGSTOP)
        else:
            cgroup = _freezer_dir(undo, plan.mechanism)
            if cgroup is None:
                raise FailedPrecondition(f"the freezer cgroup {undo['path']} of target {target.description} is gone")
            await _freeze(cgroup, plan.mechanism, frozen=True)
        return []

    async def recover(self, ctx: FaultContext, record: Record) -> str:
        undo = record.plan
        if "processes" in undo:
            continued = sum(_signal_if_same(pid, start_ticks, signal.SIGCONT) for pid, start_ticks in undo["processes"])
            return f"SIGCONT to {continued} process(es)" if continued else "target gone: counted as recovered"
        cgroup = _freezer_dir(undo, record.mechanism)
        if cgroup is None:
            return f"target gone (its cgroup {undo['path']} was removed): counted as recovered"
        await _freeze(cgroup, record.mechanism, frozen=False)
        return f"thawed ({undo['path']})"

    async def resume(self, ctx: FaultContext, record: Record) -> None:
        """A frozen cgroup or a stopped process stays so without the daemon: nothing to put back."""

    async def mechanisms(self, ctx: FaultContext) -> list[str]:
        # The daemon's own cgroups stand for a container's: a v1 freezer hierarchy is preferred where mounted.
        own = procfs.read_cgroups(os.getpid())
        if any("freezer" in m.controllers for m in own):
            return [FREEZER_V1, SIGSTOP]
        return [FREEZER_V2, SIGSTOP] if any(m.v2 for m in own) else [SIGSTOP]


def _freezer_plan(target: HeldTarget) -> Plan:
    memberships = procfs.read_cgroups(target.pid)
    mounts = procfs.cgroup_mounts()
    own = {frozenset(m.controllers): m.path for m in procfs.read_cgroups(os.getpid())}
    for membership, mechanism in [(m, FREEZER_V1) for m in memberships if "freezer" in m.controllers] + \
                                 [(m, FREEZER_V2) for m in memberships if m.v2]:
        directory = procfs.cgroup_dir(membership, mounts)
        control = "freezer.state" if mechanism == FREEZER_V1 else "cgroup.freeze"
        if directory is None or not os.path.exists(os.path.join(directory, control)):
            continue
        daemon_path = own.get(membership.controllers, "")
        if membership.path == "/" or daemon_path == membership.path or daemon_path.startswith(membership.path + "/"):
            raise PermissionDenied(f"target {target.description} shares its {mechanism} cgroup "
                                   f"({membership.path}) with the chaos daemon; refusing to freeze it")
        # The cgroup as the kernel names it, not a path under this daemon's
        # mounts: another daemon (another mount namespace) may recover it.
        return Plan({"controllers": sorted(membership.controllers), "path": membership.path}, mechanism)
    raise FailedPrecondition(f"target {target.description} has no freezer cgroup the daemon can reach "
                             "(cgroup v1 freezer or v2 cgroup.freeze)")


def _freezer_dir(undo: dict[str, Any], mechanism: str) -> str | None:
    """The frozen cgroup's directory under this daemon's mounts; None when the cgroup is gone."""
    membership = procfs.CgroupMembership(frozenset(undo["controllers"]), undo["path"])
    directory = procfs.cgroup_dir(membership, procfs.cgroup_mounts())
    if directory is None:
        hierarchy = ",".join(undo["controllers"]) or "cgroup2"
        raise FailedPrecondition(f"the {hierarchy} cgroup hierarchy is not mounted where this daemon can see it; "
                                 f"cannot thaw {undo['path']}")
    control = "freezer.state" if mechanism == FREEZER_V1 else "cgroup.freeze"
    return directory if os.path.exists(os.path.join(directory, control)) else None


async def _freeze(cgroup: str, mechanism: str, frozen: bool) -> None:
    if mechanism == FREEZER_V1:
        state = "FROZEN" if frozen else "THAWED"
        await _write_and_wait(os.path.join(cgroup, "freezer.state"), state, state)
    else:
        await _write_and_wait(os.path.join(cgroup, "cgroup.freeze"), "1" if frozen else "0", None,
                              events=os.path.join(cgroup, "cgroup.events"), frozen="1" if frozen else "0")


def _process_tree(root: int) -> list[int]:
    """``root`` and its descendants, parents first."""
    order, queue = [], [root]
    while queue:
        pid = queue.pop(0)
        order.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    queue.extend(int(child) for child in f.read().split())
        except OSError:
            continue
    return order


def _signal_if_same(pid: int, start_ticks: int, signum: int) -> bool:
    try:
        if procfs.read_stat(pid).start_ticks != start_ticks:
            return False
        os.kill(pid, signum)
    except (OSError, ProcessLookupError):
        return False
    return True


async def _write_and_wait(path: str, value: str, wanted: str | None, events: str | None = None,
                          frozen: str = "1") -> None:
    """Write ``value`` to the freezer file and wait until the kernel reports the state reached."""
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as err:
        raise FailedPrecondition(f"cannot write {value} to {path}: {err.strerror}") from None
    deadline = time.monotonic() + FREEZE_TIMEOUT_S
    # v1 reports the state in the file written; v2 in cgroup.events.
    report = path if wanted is not None else str(events)
    while time.monotonic() < deadline:
        try:
            with open(report) as f:
                state = f.read()
        except OSError as err:  # the cgroup went away while it changed
            raise FailedPrecondition(f"{report} vanished while changing: {err.strerror}") from None
        reached = state.strip() == wanted if wanted is not None else f"frozen {frozen}" in state.split("\n")
        if reached:
            return
        await asyncio.sleep(0.005)
    raise FailedPrecondition(f"{path} did not reach {wanted or 'frozen ' + frozen} within {FREEZE_TIMEOUT_S:g}s")
