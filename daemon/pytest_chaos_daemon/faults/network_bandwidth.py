"""network-bandwidth: a token bucket on the target's traffic, as Chaos Mesh's NetworkChaos bandwidth.

tc tbf in the target's network namespace, scoped to the peers as
``tc_shaping`` lays it out. A device whose root (or ingress) qdisc is already
set, by another fault or the target itself, is refused rather than replaced.
"""

from __future__ import annotations

from typing import Any

from ..api.contract import MAX_RATE
from ..api.v1 import chaos_daemon_pb2 as pb
from ..confinement.target import HeldTarget
from ..errors import FailedPrecondition, InvalidArgument
from ..lifecycle.journal import Record
from . import network_rules as rules
from . import tc_shaping
from .base import FaultContext, Plan
from .network_base import NetworkFault
from .process_list import ProcessRow

# Chaos Mesh's examples' values where the request leaves them 0.
DEFAULT_BUFFER = 10_000
MIN_LIMIT = 20_000


class NetworkBandwidth(NetworkFault):
    kind = "network-bandwidth"
    field = "network_bandwidth"

    def check(self, request: pb.ApplyRequest) -> dict[str, Any]:
        message = request.network_bandwidth
        params = rules.check_scope(message.scope, self.kind)
        if not 1 <= message.rate <= MAX_RATE:
            raise InvalidArgument(f"{self.kind}: rate must be from 1 byte/s to 1 TiB/s; got {message.rate}")
        if (message.peakrate == 0) != (message.minburst == 0):
            raise InvalidArgument(f"{self.kind}: peakrate and minburst go together (tbf's peakrate and mtu)")
        if message.peakrate and message.peakrate <= message.rate:
            raise InvalidArgument(f"{self.kind}: peakrate must be above rate ({message.rate}); got {message.peakrate}")
        buffer = message.buffer or max(DEFAULT_BUFFER, message.rate // 100)
        params["tbf"] = {"rate": message.rate, "buffer": buffer, "limit": message.limit or max(MIN_LIMIT, 2 * buffer),
                         "peakrate": message.peakrate, "minburst": message.minburst}
        return params

    async def plan(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any]) -> Plan:
        tag = rules.new_tag()
        device = params["device"]
        hooks = rules.HOOKS[params["direction"]]
        with rules.target_namespace(target, device) as namespace:
            async with rules.namespace_lock(namespace.inode):
                shown = await tc_shaping.qdiscs(ctx, namespace, device)
        if reason := tc_shaping.taken(shown, device, hooks):
            raise FailedPrecondition(f"{self.kind}: {reason} (another network fault?); recover it first")
        undo = {"netns": namespace.inode, "tag": tag, **tc_shaping.undo_fields(tag, device, hooks)}
        return Plan(undo, tc_shaping.mechanism("tbf", hooks))

    async def mechanisms(self, ctx: FaultContext) -> list[str]:
        return [tc_shaping.mechanism("tbf", rules.HOOKS["both"])]

    async def apply(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any], plan: Plan) -> list[ProcessRow]:
        scope = await rules.resolve_scope(ctx, params)
        with rules.target_namespace(target, None) as namespace:
            async with rules.namespace_lock(namespace.inode):
                await tc_shaping.install(ctx, namespace, plan.undo, scope.peers, _tbf(params["tbf"]))
        return []

    async def remove_more(self, ctx: FaultContext, namespace: rules.Namespace, plan: dict[str, Any]) -> int:
        return await tc_shaping.remove(ctx, namespace, plan)

    async def more_left(self, ctx: FaultContext, namespace: rules.Namespace, plan: dict[str, Any]) -> list[str]:
        return await tc_shaping.left(ctx, namespace, plan)

    async def resume(self, ctx: FaultContext, record: Record) -> None:
        """Qdiscs stay in the namespace without the daemon: nothing to put back."""


def _tbf(params: dict[str, Any]) -> str:
    """tc's tbf arguments: rates in bytes per second ("bps" is tc's unit for them), sizes in bytes."""
    text = f"tbf rate {params['rate']}bps burst {params['buffer']} limit {params['limit']}"
    if params["peakrate"]:
        text += f" peakrate {params['peakrate']}bps mtu {params['minburst']}"
    return text
