"""One qdisc on a target's traffic, scoped to its peers: what network-bandwidth's tbf and the netem kinds share.

Made with the daemon's own tc in the target's network namespace:
 - egress (``to``) to every peer: the leaf qdisc as the device's root;
 - egress to some peers: an htb root whose unclassified traffic passes
   unshaped (htb's default class 0), one class for the peers (u32 filters on
   their addresses) and the leaf under it;
 - ingress (``from``): an ingress qdisc redirecting the peers' packets
   (mirred) to an ifb device of the fault's own, whose root is the leaf.
Every qdisc handle and the ifb's name come from the plan's tag. A device whose
root (or ingress) qdisc is already set, by another fault or the target itself,
is never replaced: ``taken`` says so, and the kind refuses or picks another way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..confinement import netns
from . import network_rules as rules
from .base import FaultContext

PASS_RATE = "10gbit"  # the htb class around the leaf: never the bottleneck
_ROOT = re.compile(r"^qdisc (\S+) ([0-9a-f]+:) root", re.MULTILINE)
INGRESS = "qdisc ingress ffff:"


def undo_fields(tag: str, device: str, hooks: Sequence[str]) -> dict[str, Any]:
    """What recovery needs to find the fault's qdiscs and ifb again, from the plan's tag."""
    major = int(tag[:4], 16) % 0xE000 + 0x1000
    return {"device": device, "hooks": list(hooks), "handle": f"{major:x}:",
            "ifb": f"pcifb{tag[:8]}" if "ingress" in hooks else ""}


async def qdiscs(ctx: FaultContext, namespace: rules.Namespace, device: str) -> str:
    """``tc qdisc show dev DEVICE`` in the namespace; empty for a device that is gone."""
    result = await netns.run_in(ctx.children, namespace.fd, [netns.tool("tc"), "qdisc", "show", "dev", device],
                                check=False)
    return result.stdout


def taken(shown: str, device: str, hooks: Sequence[str]) -> str | None:
    """Why the device cannot take the fault's qdiscs (its root or ingress qdisc is set), or None."""
    if "egress" in hooks and (root := root_handle(shown)) not in (None, "0:"):
        kind = _ROOT.search(shown).group(1)  # type: ignore[union-attr]  # root_handle found it
        return f"device {device} of the target already has a root qdisc ({kind} {root})"
    if "ingress" in hooks and INGRESS in shown:
        return f"device {device} of the target already has an ingress qdisc"
    return None


def mechanism(leaf: str, hooks: Sequence[str]) -> str:
    """How the fault is made, for the user: "tc netem on the device's egress and ..."."""
    return " and ".join(f"tc {leaf} on the device's egress" if hook == "egress"
                        else f"tc ingress, mirred to an ifb device, {leaf}" for hook in hooks)


async def install(ctx: FaultContext, namespace: rules.Namespace, undo: dict[str, Any], peers: Sequence[str],
                  leaf: str) -> None:
    """Add the fault's qdiscs, filters and ifb; ``leaf`` is the shaping qdisc's tc arguments ("tbf rate ...")."""
    major = int(undo["handle"].rstrip(":"), 16)
    device = undo["device"]
    batch: list[str] = []
    if "egress" in undo["hooks"]:
        if peers:
            batch += [f"qdisc add dev {device} root handle {major:x}: htb",
                      f"class add dev {device} parent {major:x}: classid {major:x}:1 htb rate {PASS_RATE}",
                      f"qdisc add dev {device} parent {major:x}:1 handle {major + 1:x}: {leaf}"]
            batch += [f"filter add dev {device} parent {major:x}: protocol ip prio 1 u32 match ip dst {peer} "
                      f"flowid {major:x}:1" for peer in peers]
        else:
            batch.append(f"qdisc add dev {device} root handle {major:x}: {leaf}")
    if "ingress" in undo["hooks"]:
        ip = netns.tool("ip")
        await netns.run_in(ctx.children, namespace.fd, [ip, "link", "add", undo["ifb"], "type", "ifb"])
        await netns.run_in(ctx.children, namespace.fd, [ip, "link", "set", undo["ifb"], "up"])
        batch += [f"qdisc add dev {undo['ifb']} root handle {major:x}: {leaf}",
                  f"qdisc add dev {device} handle ffff: ingress"]
        matches = [f"match ip src {peer}" for peer in peers] or ["match u32 0 0"]
        batch += [f"filter add dev {device} parent ffff: protocol ip prio 1 u32 {match} "
                  f"action mirred egress redirect dev {undo['ifb']}" for match in matches]
    await netns.run_in(ctx.children, namespace.fd, [netns.tool("tc"), "-batch", "-"], stdin="\n".join(batch) + "\n")


async def remove(ctx: FaultContext, namespace: rules.Namespace, plan: dict[str, Any]) -> int:
    """Remove what ``install`` added and is still there; how many things were removed."""
    tc, device, removed = netns.tool("tc"), plan["device"], 0
    shown = await qdiscs(ctx, namespace, device)
    if root_handle(shown) == plan["handle"]:
        await netns.run_in(ctx.children, namespace.fd, [tc, "qdisc", "del", "dev", device, "root"])
        removed += 1
    if plan["ifb"]:
        # The ingress qdisc was the fault's: a device that had one was not given the fault.
        if INGRESS in shown:
            await netns.run_in(ctx.children, namespace.fd, [tc, "qdisc", "del", "dev", device, "ingress"])
            removed += 1
        if await _has_link(ctx, namespace, plan["ifb"]):
            await netns.run_in(ctx.children, namespace.fd, [netns.tool("ip"), "link", "del", plan["ifb"]])
            removed += 1
    return removed


async def left(ctx: FaultContext, namespace: rules.Namespace, plan: dict[str, Any]) -> list[str]:
    """What of the fault's qdiscs and ifb the namespace still holds: checked after recovery, never assumed."""
    shown = await qdiscs(ctx, namespace, plan["device"])
    found = [f"root qdisc {plan['handle']} on {plan['device']}"] if root_handle(shown) == plan["handle"] else []
    if plan["ifb"] and INGRESS in shown:
        found.append(f"ingress qdisc on {plan['device']}")
    if plan["ifb"] and await _has_link(ctx, namespace, plan["ifb"]):
        found.append(f"device {plan['ifb']}")
    return found


async def _has_link(ctx: FaultContext, namespace: rules.Namespace, name: str) -> bool:
    result = await netns.run_in(ctx.children, namespace.fd, [netns.tool("ip"), "-o", "link", "show", name],
                                check=False)
    return result.returncode == 0 and name in result.stdout


def root_handle(shown: str) -> str | None:
    match = _ROOT.search(shown)
    return match.group(2) if match else None
