"""network-loss, -delay, -duplicate, -corrupt, -netem: netem's effects, on kernels with or without netem.

network-netem is several of the others at once (Chaos Mesh's netem action),
made as one: one netem qdisc, or one packet queue, with every effect.


Each target gets one of two mechanisms, chosen when the fault is planned and
reported with it:
 - netem (``emulation_netem.py``), the kernel's qdisc, laid on the scope by
   ``tc_shaping``, wherever the kernel has it (``netem.NetemSupport``) and the
   device's root qdisc (egress) or ingress qdisc (ingress) is free;
 - otherwise the packet queue (``emulation_queue.py``): a kernel without
   netem, ``--network-emulation=queue``, or a device whose qdisc another
   fault holds. Queue faults compose with each other and with a qdisc.
Chaos Mesh's netem parameters (correlations, reorder's gap) are accepted
wherever netem is used, and refused, saying why, where the queue is.
"""

from __future__ import annotations

from typing import Any

from ..api.contract import MAX_LATENCY_MS
from ..api.v1 import chaos_daemon_pb2 as pb
from ..confinement.target import HeldTarget
from ..errors import FailedPrecondition, InvalidArgument
from ..host.netem import NETEM
from ..lifecycle.journal import Record
from . import emulation_netem, emulation_queue, tc_shaping
from . import network_rules as rules
from .base import FaultContext, Plan
from .network_base import NetworkFault
from .process_list import ProcessRow

MAX_GAP = 1 << 30


def _percent(value: float, field: str, kind: str) -> float:
    if not 0 <= value <= 100:
        raise InvalidArgument(f"{kind}: {field} must be a percentage from 0 to 100; got {value:g}")
    return value


def _milliseconds(duration: Any, field: str, kind: str) -> float:
    ms = float(duration.seconds * 1000 + duration.nanos / 1e6)
    if not 0 <= ms <= MAX_LATENCY_MS:
        raise InvalidArgument(f"{kind}: {field} must be from 0 to {MAX_LATENCY_MS / 1000:g}s; got {ms:g}ms")
    return ms


class NetworkEmulation(NetworkFault):
    """One of the netem kinds; ``check`` reads the kind's message into the effects both mechanisms take
    and the parameters only netem has."""

    def __init__(self, kind: str, field: str) -> None:
        self.kind = kind
        self.field = field

    def check(self, request: pb.ApplyRequest) -> dict[str, Any]:
        message = getattr(request, self.field)
        params = rules.check_scope(message.scope, self.kind)
        params["effects"], params["netem_only"] = self._effects(message)
        return params

    def _effects(self, message: Any) -> tuple[dict[str, float], dict[str, float]]:
        return effects_of(self.kind, self.kind, message)

    async def plan(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any]) -> Plan:
        hooks = rules.HOOKS[params["direction"]]
        tag, device = rules.new_tag(), params["device"]
        with rules.target_namespace(target, device) as namespace:
            undo: dict[str, Any] = {"netns": namespace.inode, "tag": tag}
            why_not_netem = await ctx.netem.missing()
            if why_not_netem is None:
                async with rules.namespace_lock(namespace.inode):
                    taken = tc_shaping.taken(await tc_shaping.qdiscs(ctx, namespace, device), device, hooks)
                if taken is None:
                    return Plan({**undo, **tc_shaping.undo_fields(tag, device, hooks)},
                                tc_shaping.mechanism("netem", hooks))
                why_not_netem = f"{taken}, held by another fault or the target"
                if ctx.netem.choice == NETEM:
                    raise FailedPrecondition(f"{self.kind}: netem cannot be used: {why_not_netem}; recover it first")
            elif ctx.netem.choice == NETEM:
                raise FailedPrecondition(f"{self.kind}: the daemon was started with --network-emulation=netem, "
                                         f"and {why_not_netem}")
            if refused := emulation_queue.cannot_honour(params["netem_only"]):
                raise FailedPrecondition(f"{self.kind}: {refused} needs netem, and this target's traffic goes "
                                         f"through the packet queue: {why_not_netem}")
            undo.update(await emulation_queue.plan(ctx, namespace, hooks, target))
        return Plan(undo, f"{emulation_queue.MECHANISM} ({why_not_netem})")

    async def mechanisms(self, ctx: FaultContext) -> list[str]:
        """As ``plan`` chooses: netem where the kernel has it, the packet queue where it has not, or where a
        device's qdisc is taken (unless the daemon was told netem only)."""
        netem = tc_shaping.mechanism("netem", rules.HOOKS["both"])
        if (missing := await ctx.netem.missing()) is not None:
            return [] if ctx.netem.choice == NETEM else [f"{emulation_queue.MECHANISM} ({missing})"]
        if ctx.netem.choice == NETEM:
            return [netem]
        return [netem, f"{emulation_queue.MECHANISM} (where the device's qdisc is taken)"]

    async def apply(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any], plan: Plan) -> list[ProcessRow]:
        scope = await rules.resolve_scope(ctx, params)
        with rules.target_namespace(target, None) as namespace:
            if _uses_netem(plan.undo):
                leaf = emulation_netem.arguments(params["effects"], params["netem_only"])
                async with rules.namespace_lock(namespace.inode):
                    await tc_shaping.install(ctx, namespace, plan.undo, scope.peers, leaf)
            else:
                await emulation_queue.apply(ctx, namespace, params, plan.undo, scope, target)
        return []

    async def remove_more(self, ctx: FaultContext, namespace: rules.Namespace, plan: dict[str, Any]) -> int:
        return await tc_shaping.remove(ctx, namespace, plan) if _uses_netem(plan) else 0

    async def more_left(self, ctx: FaultContext, namespace: rules.Namespace, plan: dict[str, Any]) -> list[str]:
        if _uses_netem(plan):
            return await tc_shaping.left(ctx, namespace, plan)
        return emulation_queue.left(ctx, namespace, plan)

    async def resume(self, ctx: FaultContext, record: Record) -> None:
        """netem stays in the namespace without the daemon. A queue's programs died with the old daemon
        (traffic passed unchanged meanwhile): they start again."""
        if _uses_netem(record.plan):
            return
        await self.restart_programs(ctx, record, lambda namespace, plan, target: emulation_queue.start_queues(
            ctx, namespace, record.params, plan, record.container_id, target))


class NetworkNetem(NetworkEmulation):
    """network-netem: the sections present, each read as its own kind's message, their effects together. A
    section's correlation is its own (``loss.correlation``, ...), as netem takes one per effect."""

    SECTIONS = ("delay", "loss", "duplicate", "corrupt")

    def __init__(self) -> None:
        super().__init__("network-netem", "network_netem")

    def _effects(self, message: Any) -> tuple[dict[str, float], dict[str, float]]:
        effects: dict[str, float] = {}
        netem_only: dict[str, float] = {}
        present = [section for section in self.SECTIONS if message.HasField(section)]
        if not present:
            raise InvalidArgument(f"network-netem needs at least one of {', '.join(self.SECTIONS)}")
        for section in present:
            part = getattr(message, section)
            if part.HasField("scope"):
                raise InvalidArgument(f"network-netem: {section}.scope must be unset: the fault's scope is `scope`")
            more, only = effects_of(f"network-netem {section}", f"network-{section}", part)
            effects.update(more)
            netem_only.update({f"{section}.correlation" if key == "correlation" else key: value
                               for key, value in only.items()})
        return effects, netem_only


def _uses_netem(plan: dict[str, Any]) -> bool:
    return "handle" in plan  # tc_shaping's fields; a queue's plan has queues and cgroups instead


def effects_of(kind: str, section: str, message: Any) -> tuple[dict[str, float], dict[str, float]]:
    """The effects and the netem-only parameters of one kind's message; ``section`` is the kind whose fields it
    holds (network-netem's sections are the four kinds' messages), ``kind`` names the request in errors."""
    netem_only = {"correlation": _percent(message.correlation, "correlation", kind)}
    for effect in ("loss", "duplicate", "corrupt"):
        if section == f"network-{effect}":
            return {effect: _percent(getattr(message, effect), effect, kind)}, netem_only
    latency = _milliseconds(message.latency, "latency", kind)
    if latency == 0:
        raise InvalidArgument(f"{kind}: latency is required and must be above 0, like '100ms'")
    effects = {"delay_ms": latency, "jitter_ms": _milliseconds(message.jitter, "jitter", kind)}
    if message.HasField("reorder"):
        effects["reorder"] = _percent(message.reorder.reorder, "reorder.reorder", kind)
        netem_only["reorder.correlation"] = _percent(message.reorder.correlation, "reorder.correlation", kind)
        if not 0 <= message.reorder.gap <= MAX_GAP:
            raise InvalidArgument(f"{kind}: reorder.gap must be from 0 to {MAX_GAP}; got {message.reorder.gap}")
        netem_only["reorder.gap"] = message.reorder.gap
    return effects, netem_only
