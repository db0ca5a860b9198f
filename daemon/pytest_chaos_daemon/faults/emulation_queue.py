"""netem's effects without netem: the packet queue, the netem kinds' fallback.

Used where the kernel has no netem (this project's CI host has none, and no
prio, sfq or fq either), where the daemon is told so
(``--network-emulation=queue``), or where the device's root or ingress qdisc
is taken by another fault. The scope's packets go to a packet queue (iptables
NFQUEUE, mangle table: POSTROUTING for the target's egress, PREROUTING for
its ingress) served by ``packet_queue.py``, the daemon's own program, run as
root in the target's network namespace only. It drops, holds, duplicates or
corrupts each packet, then hands it back marked, so the next fault on the
same traffic sees it too: two faults on one target compose, and recovering
one leaves the other. ``--queue-bypass`` keeps traffic flowing while no
program serves the queue (the daemon restarting), rather than dropping it.

What no queue can do faithfully, a correlation other than 0 and netem's
reorder gap, is refused here (``cannot_honour``).
"""

from __future__ import annotations

import sys
from typing import Any

from ..confinement import netns
from ..confinement.target import HeldTarget
from ..programs.packet_queue import queue_argv
from . import network_rules as rules
from .base import FaultContext

MECHANISM = "packet queue (iptables NFQUEUE) served by the daemon's packet_queue in the target's network namespace"
BUILTIN = {"egress": "POSTROUTING", "ingress": "PREROUTING"}


def cannot_honour(netem_only: dict[str, float]) -> str | None:
    """What of the request only netem gives (a correlation, a reorder gap above 1), or None."""
    refused = []
    for field, value in netem_only.items():
        if field == "reorder.gap" and value > 1:
            refused.append(f"reorder.gap {value:g} (the queue sends each packet at once or holds it: a gap of 0 or 1)")
        elif field != "reorder.gap" and value != 0:
            refused.append(f"{field} {value:g} (the queue draws each packet independently: only 0)")
    return " and ".join(refused) or None


async def plan(ctx: FaultContext, namespace: rules.Namespace, hooks: tuple[str, ...], target: HeldTarget) -> dict[str, Any]:
    """Queue numbers and a mark bit free in the namespace, and a tracking cgroup per hook's program (in the
    target's cgroups: the target pays for its queues)."""
    async with rules.namespace_lock(namespace.inode):
        queues, mark = await rules.allocate(ctx, namespace, len(hooks))
    return {"mark": mark, "queues": dict(zip(hooks, queues, strict=False)),
            "cgroups": [ctx.confiner.new_cgroup(target) for _ in hooks]}


async def apply(ctx: FaultContext, namespace: rules.Namespace, params: dict[str, Any], undo: dict[str, Any],
                scope: rules.Scope, target: HeldTarget) -> None:
    """Start the queues' programs, then send the scope's packets to them."""
    await start_queues(ctx, namespace, params, undo, target.description, target)
    async with rules.namespace_lock(namespace.inode):
        lines: list[str] = []
        for hook, queue in undo["queues"].items():
            one_hook = rules.Scope(scope.device, "to" if hook == "egress" else "from", scope.peers)
            lines += rules.hook_rules(undo["tag"], BUILTIN, one_hook, f"-j NFQUEUE --queue-num {queue} --queue-bypass",
                                      guard=f"-m mark ! --mark {undo['mark']:#x}/{undo['mark']:#x} ")
        await rules.add_rules(ctx, namespace, {"mangle": lines})


def left(ctx: FaultContext, namespace: rules.Namespace, plan: dict[str, Any]) -> list[str]:
    """The queues' programs and bindings still there after recovery."""
    found = [f"its packet queue program's cgroup {cgroup} is still there" for cgroup in plan["cgroups"]
             if ctx.confiner.exists(cgroup)]
    if netns.namespace_inode(namespace.pid) == namespace.inode:  # seen through a process still in it
        bound = rules.bound_queues(namespace.pid)
        found += [f"packet queue {queue} is still served" for queue in plan["queues"].values() if queue in bound]
    return found


async def start_queues(ctx: FaultContext, namespace: rules.Namespace, params: dict[str, Any],
                       undo: dict[str, Any], where: str, target: HeldTarget | None) -> None:
    """One packet_queue per hook, each ready once the kernel lists its queue as bound in the namespace; in
    ``target``'s cgroups where it still runs."""
    # Read through a process in the namespace: the target's, or the first program's once it runs.
    for (hook, queue), cgroup in zip(undo["queues"].items(), undo["cgroups"], strict=False):
        effects = params["effects"]
        # A packet held on the egress path stays charged to its sending socket, which then stalls (TCP falls
        # to a few Mbit/s): delayed egress packets are dropped at once and an exact copy is sent when due.
        resend = hook == "egress" and bool(effects.get("delay_ms") or effects.get("jitter_ms"))
        program = [sys.executable, "-m", "pytest_chaos_daemon.programs.packet_queue",
                   *queue_argv(queue, undo["mark"], hook=hook, resend=resend, **effects)]
        if params.get("seed"):  # the same seed for each hook's queue: their packets are not the same
            program += ["--seed", str(params["seed"])]

        def ready(queue: int = queue, cgroup: str = cgroup) -> bool:
            return any(queue in rules.bound_queues(pid) for pid in ctx.confiner.members(cgroup))

        await ctx.confiner.start_in_netns(namespace.fd, program, cgroup, ready, where, target)
