"""network-bandwidth: a token bucket on the target's traffic, as Chaos Mesh's NetworkChaos bandwidth.

tc tbf in the target's network namespace, made with the daemon's own tc:
 - egress (``to``) to every peer: tbf as the device's root qdisc;
 - egress to some peers: an htb root whose unclassified traffic passes
   unshaped (htb's default class 0), one class for the peers (u32 filters on
   their addresses) and the tbf under it;
 - ingress (``from``): an ingress qdisc redirecting the peers' packets
   (mirred) to an ifb device of the fault's own, shaped by its root tbf.
Every qdisc handle and the ifb's name come from the plan's tag. A device
whose root (or ingress) qdisc is already set, by another bandwidth fault or
the target itself, is refused rather than replaced.
"""

from __future__ import annotations

import re
from typing import Any

from .. import netns
from ..api.v1 import chaos_daemon_pb2 as pb
from ..errors import FailedPrecondition, InvalidArgument
from ..journal import Record
from ..target import HeldTarget
from . import network_rules as rules
from .base import FaultContext, Plan
from .network_base import NetworkFault
from .process_list import ProcessRow

MECHANISM_EGRESS = "tc tbf on the device's egress"
MECHANISM_INGRESS = "tc ingress, mirred to an ifb device, tbf"
# Chaos Mesh's examples' values where the request leaves them 0.
DEFAULT_BUFFER = 10_000
MIN_LIMIT = 20_000
PASS_RATE = "10gbit"  # the htb class around the tbf: never the bottleneck
_ROOT = re.compile(r"^qdisc (\S+) ([0-9a-f]+:) root", re.MULTILINE)


class NetworkBandwidth(NetworkFault):
    kind = "network-bandwidth"
    field = "network_bandwidth"

    def check(self, request: pb.ApplyRequest) -> dict[str, Any]:
        message = request.network_bandwidth
        params = rules.check_scope(message.scope, self.kind)
        if not 1 <= message.rate <= 1 << 40:
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
        with rules.target_namespace(target, device) as namespace:
            async with rules.namespace_lock(namespace.inode):
                shown = (await netns.run_in(ctx.children, namespace.fd, [netns.tool("tc"), "qdisc", "show", "dev",
                                                                          device])).stdout
        hooks = rules.HOOKS[params["direction"]]
        if "egress" in hooks and (root := _root_handle(shown)) not in (None, "0:"):
            raise FailedPrecondition(f"{self.kind}: device {device} of the target already has a root qdisc "
                                     f"({root}, another bandwidth fault?); recover it first")
        if "ingress" in hooks and "qdisc ingress ffff:" in shown:
            raise FailedPrecondition(f"{self.kind}: device {device} of the target already has an ingress qdisc "
                                     f"(another bandwidth fault?); recover it first")
        major = int(tag[:4], 16) % 0xE000 + 0x1000
        undo = {"netns": namespace.inode, "tag": tag, "device": device, "hooks": list(hooks),
                "handle": f"{major:x}:", "ifb": f"pcifb{tag[:8]}" if "ingress" in hooks else ""}
        mechanism = " and ".join(MECHANISM_EGRESS if hook == "egress" else MECHANISM_INGRESS for hook in hooks)
        return Plan(undo, mechanism)

    async def apply(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any], plan: Plan) -> list[ProcessRow]:
        scope = await rules.resolve_scope(ctx, params)
        undo, tbf = plan.undo, _tbf(params["tbf"])
        major = int(undo["handle"].rstrip(":"), 16)
        device = scope.device
        batch: list[str] = []
        if "egress" in undo["hooks"]:
            if scope.peers:
                batch += [f"qdisc add dev {device} root handle {major:x}: htb",
                          f"class add dev {device} parent {major:x}: classid {major:x}:1 htb rate {PASS_RATE}",
                          f"qdisc add dev {device} parent {major:x}:1 handle {major + 1:x}: {tbf}"]
                batch += [f"filter add dev {device} parent {major:x}: protocol ip prio 1 u32 match ip dst {peer} "
                          f"flowid {major:x}:1" for peer in scope.peers]
            else:
                batch.append(f"qdisc add dev {device} root handle {major:x}: {tbf}")
        with rules.target_namespace(target, None) as namespace:
            async with rules.namespace_lock(namespace.inode):
                if "ingress" in undo["hooks"]:
                    ip = netns.tool("ip")
                    await netns.run_in(ctx.children, namespace.fd, [ip, "link", "add", undo["ifb"], "type", "ifb"])
                    await netns.run_in(ctx.children, namespace.fd, [ip, "link", "set", undo["ifb"], "up"])
                    batch += [f"qdisc add dev {undo['ifb']} root handle {major:x}: {tbf}",
                              f"qdisc add dev {device} handle ffff: ingress"]
                    matches = [f"match ip src {peer}" for peer in scope.peers] or ["match u32 0 0"]
                    batch += [f"filter add dev {device} parent ffff: protocol ip prio 1 u32 {match} "
                              f"action mirred egress redirect dev {undo['ifb']}" for match in matches]
                await netns.run_in(ctx.children, namespace.fd, [netns.tool("tc"), "-batch", "-"],
                                   stdin="\n".join(batch) + "\n")
        return []

    async def remove_more(self, ctx: FaultContext, namespace: rules.Namespace, plan: dict[str, Any]) -> int:
        tc, device, removed = netns.tool("tc"), plan["device"], 0
        shown = await self._qdiscs(ctx, namespace, device)
        if _root_handle(shown) == plan["handle"]:
            await netns.run_in(ctx.children, namespace.fd, [tc, "qdisc", "del", "dev", device, "root"])
            removed += 1
        if plan["ifb"]:
            # The ingress qdisc was the fault's: plan refused a device that had one.
            if "qdisc ingress ffff:" in shown:
                await netns.run_in(ctx.children, namespace.fd, [tc, "qdisc", "del", "dev", device, "ingress"])
                removed += 1
            if await self._has_link(ctx, namespace, plan["ifb"]):
                await netns.run_in(ctx.children, namespace.fd, [netns.tool("ip"), "link", "del", plan["ifb"]])
                removed += 1
        return removed

    async def more_left(self, ctx: FaultContext, namespace: rules.Namespace, plan: dict[str, Any]) -> list[str]:
        shown = await self._qdiscs(ctx, namespace, plan["device"])
        left = [f"root qdisc {plan['handle']} on {plan['device']}"] if _root_handle(shown) == plan["handle"] else []
        if plan["ifb"] and "qdisc ingress ffff:" in shown:
            left.append(f"ingress qdisc on {plan['device']}")
        if plan["ifb"] and await self._has_link(ctx, namespace, plan["ifb"]):
            left.append(f"device {plan['ifb']}")
        return left

    async def resume(self, ctx: FaultContext, record: Record) -> None:
        """Qdiscs stay in the namespace without the daemon: nothing to put back."""

    async def _qdiscs(self, ctx: FaultContext, namespace: rules.Namespace, device: str) -> str:
        result = await netns.run_in(ctx.children, namespace.fd, [netns.tool("tc"), "qdisc", "show", "dev", device],
                                    check=False)
        return result.stdout  # a device that is gone has no qdisc of ours

    async def _has_link(self, ctx: FaultContext, namespace: rules.Namespace, name: str) -> bool:
        result = await netns.run_in(ctx.children, namespace.fd, [netns.tool("ip"), "-o", "link", "show", name],
                                    check=False)
        return result.returncode == 0 and name in result.stdout


def _root_handle(shown: str) -> str | None:
    match = _ROOT.search(shown)
    return match.group(2) if match else None


def _tbf(params: dict[str, Any]) -> str:
    """tc's tbf arguments: rates in bytes per second ("bps" is tc's unit for them), sizes in bytes."""
    text = f"tbf rate {params['rate']}bps burst {params['buffer']} limit {params['limit']}"
    if params["peakrate"]:
        text += f" peakrate {params['peakrate']}bps mtu {params['minburst']}"
    return text
