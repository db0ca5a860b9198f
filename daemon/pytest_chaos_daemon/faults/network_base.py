"""Recovery every network fault shares: find the namespace again, remove what carries the fault's tag, stop
the programs it left running, and check from outside that nothing of it is left."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from ..confinement import procfs
from ..confinement.target import HeldTarget
from ..errors import DaemonError, FailedPrecondition
from ..lifecycle.journal import Record
from . import network_rules as rules
from .base import FaultContext


class NetworkFault:
    """Base of the network kinds: ``plan`` journals ``netns`` (the namespace's inode), ``tag`` and, for kinds
    that leave programs running, their tracking ``cgroups``."""

    kind = ""
    field = ""
    recoverable = True

    async def recover(self, ctx: FaultContext, record: Record) -> str:
        plan = record.plan
        namespace = rules.recorded_namespace(record)
        if namespace is None:
            stopped = await self._stop_programs(ctx, plan)
            return ("the network namespace is gone, and every rule of the fault with it: counted as recovered"
                    + (f"; stopped its {stopped} process(es)" if stopped else ""))
        with namespace:
            async with rules.namespace_lock(namespace.inode):
                removed = await rules.remove_rules(ctx, namespace, plan["tag"])
                removed += await self.remove_more(ctx, namespace, plan)
                stopped = await self._stop_programs(ctx, plan)
                left = await rules.rules_left(ctx, namespace, plan["tag"]) + await self.more_left(ctx, namespace, plan)
        if left:
            raise FailedPrecondition(f"{self.kind} is still in the target's network namespace after recovery: "
                                     + "; ".join(left[:5]))
        if not removed:
            return "none of the fault's rules was in the network namespace any more (removed by someone else?)"
        return f"removed {removed} rule(s), chain(s) or qdisc(s)" + (f", stopped {stopped} process(es)" if stopped else "") \
            + "; none is left"

    async def remove_more(self, ctx: FaultContext, namespace: rules.Namespace, plan: dict[str, Any]) -> int:
        """Kinds with more than iptables rules (tc, devices) remove it here; how many things they removed."""
        return 0

    async def more_left(self, ctx: FaultContext, namespace: rules.Namespace, plan: dict[str, Any]) -> list[str]:
        return []

    async def _stop_programs(self, ctx: FaultContext, plan: dict[str, Any]) -> int:
        stopped = 0
        for cgroup in plan.get("cgroups", []):
            stopped += await ctx.confiner.stop(cgroup)
        return stopped

    async def restart_programs(
        self, ctx: FaultContext, record: Record,
        start: Callable[[rules.Namespace, dict[str, Any], HeldTarget | None], Awaitable[None]],
    ) -> None:
        """After a daemon restart: the fault's programs died with the old daemon (its rules stayed); start
        them again, in new tracking cgroups journaled through ``record.plan``, while the namespace is there:
        in the target's cgroups while the target still runs, in the daemon's once it is gone."""
        await self._stop_programs(ctx, record.plan)  # whatever survived the old daemon
        namespace = rules.recorded_namespace(record)
        if namespace is None:
            return
        with namespace, _still_running(record) as target:
            record.plan = {**record.plan, "cgroups": [ctx.confiner.new_cgroup(target) for _ in record.plan["cgroups"]]}
            await start(namespace, record.plan, target)


@contextlib.contextmanager
def _still_running(record: Record) -> Iterator[HeldTarget | None]:
    """The journaled target, held, if that very process still runs; None otherwise."""
    if not procfs.is_same_process(record.pid, record.start_ticks, record.boot_id):
        yield None
        return
    try:
        target = HeldTarget(record.pid, record.container_id)
    except DaemonError:
        yield None
        return
    with target:
        yield target if target.stat.start_ticks == record.start_ticks else None
