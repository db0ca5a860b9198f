"""network-loss, -delay, -duplicate, -corrupt: netem's effects, on kernels with or without netem.

Without netem (the kernel this project's CI runs on lacks it, and prio, sfq
and fq with it), the scope's packets go to a packet queue (iptables NFQUEUE,
mangle table: POSTROUTING for the target's egress, PREROUTING for its
ingress) served by ``packet_queue.py``, the daemon's own program, run as root
in the target's network namespace only. It drops, holds, duplicates or
corrupts each packet, then hands it back marked, so the next fault on the
same traffic sees it too: two faults on one target compose, and recovering
one leaves the other. ``--queue-bypass`` keeps traffic flowing while no
program serves the queue (the daemon restarting), rather than dropping it.

What no queue can do faithfully is refused, naming the missing netem: a
correlation other than 0 and netem's reorder gap.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from .. import netns
from ..api.v1 import chaos_daemon_pb2 as pb
from ..errors import InvalidArgument
from ..journal import Record
from ..packet_queue import queue_argv
from ..target import HeldTarget
from . import network_rules as rules
from .base import FaultContext, Plan
from .network_base import NetworkFault
from .process_list import ProcessRow

MECHANISM = "packet queue (iptables NFQUEUE) served by the daemon's packet_queue in the target's network namespace"
BUILTIN = {"egress": "POSTROUTING", "ingress": "PREROUTING"}
MAX_LATENCY_MS = 60_000.0
NO_NETEM = "this kernel has no netem qdisc, and the packet queue used instead cannot honour it"


def _percent(value: float, field: str, kind: str) -> float:
    if not 0 <= value <= 100:
        raise InvalidArgument(f"{kind}: {field} must be a percentage from 0 to 100; got {value:g}")
    return value


def _no_correlation(value: float, field: str, kind: str) -> None:
    _percent(value, field, kind)
    if value != 0:
        raise InvalidArgument(f"{kind}: {field} {value:g} is refused: {NO_NETEM} (only 0, independent packets)")


def _milliseconds(duration: Any, field: str, kind: str) -> float:
    ms = float(duration.seconds * 1000 + duration.nanos / 1e6)
    if not 0 <= ms <= MAX_LATENCY_MS:
        raise InvalidArgument(f"{kind}: {field} must be from 0 to {MAX_LATENCY_MS / 1000:g}s; got {ms:g}ms")
    return ms


class NetworkEmulation(NetworkFault):
    """One of the four netem kinds; ``effect`` reads the kind's message into the queue's effects."""

    def __init__(self, kind: str, field: str) -> None:
        self.kind = kind
        self.field = field

    def check(self, request: pb.ApplyRequest) -> dict[str, Any]:
        message = getattr(request, self.field)
        params = rules.check_scope(message.scope, self.kind)
        params["effects"] = self._effects(message)
        return params

    def _effects(self, message: Any) -> dict[str, float]:
        kind = self.kind
        if kind == "network-loss":
            _no_correlation(message.correlation, "correlation", kind)
            return {"loss": _percent(message.loss, "loss", kind)}
        if kind == "network-duplicate":
            _no_correlation(message.correlation, "correlation", kind)
            return {"duplicate": _percent(message.duplicate, "duplicate", kind)}
        if kind == "network-corrupt":
            _no_correlation(message.correlation, "correlation", kind)
            return {"corrupt": _percent(message.corrupt, "corrupt", kind)}
        latency = _milliseconds(message.latency, "latency", kind)
        if latency == 0:
            raise InvalidArgument(f"{kind}: latency is required and must be above 0, like '100ms'")
        jitter = _milliseconds(message.jitter, "jitter", kind)
        _no_correlation(message.correlation, "correlation", kind)
        effects = {"delay_ms": latency, "jitter_ms": jitter}
        if message.HasField("reorder"):
            _no_correlation(message.reorder.correlation, "reorder.correlation", kind)
            if message.reorder.gap not in (0, 1):
                raise InvalidArgument(f"{kind}: reorder.gap {message.reorder.gap} is refused: {NO_NETEM} (a gap of "
                                      f"0 or 1: every packet may be sent at once)")
            effects["reorder"] = _percent(message.reorder.reorder, "reorder.reorder", kind)
        return effects

    async def plan(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any]) -> Plan:
        hooks = rules.HOOKS[params["direction"]]
        with rules.target_namespace(target, params["device"]) as namespace:
            async with rules.namespace_lock(namespace.inode):
                queues, mark = await rules.allocate(ctx, namespace, len(hooks))
            cgroups = [ctx.confiner.new_cgroup() for _ in hooks]
            return Plan({"netns": namespace.inode, "tag": rules.new_tag(), "mark": mark,
                         "queues": dict(zip(hooks, queues, strict=False)), "cgroups": cgroups}, MECHANISM)

    async def apply(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any], plan: Plan) -> list[ProcessRow]:
        scope = await rules.resolve_scope(ctx, params)
        with rules.target_namespace(target, None) as namespace:
            await _start_queues(ctx, namespace, params, plan.undo, target.description)
            async with rules.namespace_lock(namespace.inode):
                lines: list[str] = []
                for hook, queue in plan.undo["queues"].items():
                    one_hook = rules.Scope(scope.device, "to" if hook == "egress" else "from", scope.peers)
                    lines += rules.hook_rules(plan.undo["tag"], BUILTIN, one_hook,
                                              f"-j NFQUEUE --queue-num {queue} --queue-bypass",
                                              guard=f"-m mark ! --mark {plan.undo['mark']:#x}/{plan.undo['mark']:#x} ")
                await rules.add_rules(ctx, namespace, {"mangle": lines})
        return []

    async def more_left(self, ctx: FaultContext, namespace: rules.Namespace, plan: dict[str, Any]) -> list[str]:
        left = [f"its packet queue program's cgroup {cgroup} is still there" for cgroup in plan["cgroups"]
                if os.path.isdir(cgroup)]
        if netns.namespace_inode(namespace.pid) == namespace.inode:  # seen through a process still in it
            bound = rules.bound_queues(namespace.pid)
            left += [f"packet queue {queue} is still served" for queue in plan["queues"].values() if queue in bound]
        return left

    async def resume(self, ctx: FaultContext, record: Record) -> None:
        """The queues' programs died with the old daemon (traffic passed unchanged meanwhile): start them
        again."""
        await self.restart_programs(ctx, record, lambda namespace, plan: _start_queues(
            ctx, namespace, record.params, plan, record.container_id))


async def _start_queues(ctx: FaultContext, namespace: rules.Namespace, params: dict[str, Any],
                        undo: dict[str, Any], where: str) -> None:
    """One packet_queue per hook, each ready once the kernel lists its queue as bound in the namespace."""
    # Read through a process in the namespace: the target's, or the first program's once it runs.
    for (hook, queue), cgroup in zip(undo["queues"].items(), undo["cgroups"], strict=False):
        effects = params["effects"]
        # A packet held on the egress path stays charged to its sending socket, which then stalls (TCP falls
        # to a few Mbit/s): delayed egress packets are dropped at once and an exact copy is sent when due.
        resend = hook == "egress" and bool(effects.get("delay_ms") or effects.get("jitter_ms"))
        program = [sys.executable, "-m", "pytest_chaos_daemon.packet_queue",
                   *queue_argv(queue, undo["mark"], hook=hook, resend=resend, **effects)]
        if params.get("seed"):  # the same seed for each hook's queue: their packets are not the same
            program += ["--seed", str(params["seed"])]

        def ready(queue: int = queue, cgroup: str = cgroup) -> bool:
            return any(queue in rules.bound_queues(pid) for pid in ctx.confiner.members(cgroup))

        await ctx.confiner.start_in_netns(namespace.fd, program, cgroup, ready, where)


