"""network-partition: the target's traffic with its peers is dropped, as Chaos Mesh's NetworkChaos partition.

iptables DROP in the target's network namespace (filter table). For ``to``
only the connections the target opens are cut: packets it sends in the
ORIGINAL direction of a connection are dropped, its replies on connections a
peer opened pass. ``from`` is the mirror (connections the peers open), and
``both`` drops everything either way.
"""

from __future__ import annotations

from typing import Any

from ..api.v1 import chaos_daemon_pb2 as pb
from ..confinement.target import HeldTarget
from ..lifecycle.journal import Record
from . import network_rules as rules
from .base import FaultContext, Plan
from .network_base import NetworkFault
from .process_list import ProcessRow

MECHANISM = "iptables DROP in the target's network namespace"
BUILTIN = {"egress": "OUTPUT", "ingress": "INPUT"}


class NetworkPartition(NetworkFault):
    kind = "network-partition"
    field = "network_partition"

    def check(self, request: pb.ApplyRequest) -> dict[str, Any]:
        return rules.check_scope(request.network_partition.scope, self.kind)

    async def plan(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any]) -> Plan:
        with rules.target_namespace(target, params["device"]) as namespace:
            return Plan({"netns": namespace.inode, "tag": rules.new_tag()}, MECHANISM)

    async def mechanisms(self, ctx: FaultContext) -> list[str]:
        return [MECHANISM]

    async def apply(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any], plan: Plan) -> list[ProcessRow]:
        scope = await rules.resolve_scope(ctx, params)
        action = "-j DROP" if scope.direction == "both" else "-m conntrack --ctdir ORIGINAL -j DROP"
        with rules.target_namespace(target, None) as namespace:
            async with rules.namespace_lock(namespace.inode):
                await rules.add_rules(ctx, namespace, {"filter": rules.hook_rules(plan.undo["tag"], BUILTIN, scope,
                                                                                  action)})
        return []

    async def resume(self, ctx: FaultContext, record: Record) -> None:
        """Rules stay in the namespace without the daemon: nothing to put back."""
