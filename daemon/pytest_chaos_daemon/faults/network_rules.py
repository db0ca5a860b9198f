"""What every network fault shares: its scope, its peers, the namespace it changes, its tagged iptables rules.

Every rule a fault adds lives in a chain of its own named after the plan's
tag (``PC-<tag>-E`` for the target's egress, ``-I`` for its ingress), reached
from a built-in chain by one jump carrying the comment ``pytest-chaos:<tag>``.
Rules are added in one ``iptables-restore --noflush`` per fault, so a fault is
in force whole or not at all, and removed by listing the namespace and deleting
exactly what carries the tag: recovery is idempotent, never hits "chain
already exists", and leaves other faults' rules (and the target's own) alone.

Directions follow Chaos Mesh: ``to`` is the target's traffic towards the
peers (its egress), ``from`` the peers' traffic towards it (its ingress),
``both`` the two.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import re
import uuid
import weakref
from collections.abc import Iterator
from typing import Any

from ..api.v1 import chaos_daemon_pb2 as pb
from ..confinement import netns
from ..confinement.target import HeldTarget
from ..errors import FailedPrecondition, InvalidArgument, NotFound
from ..lifecycle.journal import Record
from .base import FaultContext

DIRECTIONS = {pb.NetworkScope.DIRECTION_TO: "to", pb.NetworkScope.DIRECTION_FROM: "from",
              pb.NetworkScope.DIRECTION_BOTH: "both"}
HOOKS = {"to": ("egress",), "from": ("ingress",), "both": ("egress", "ingress")}
DEFAULT_DEVICE = "eth0"
TAG_PREFIX = "pytest-chaos:"
MAX_PEERS = 256
_DEVICE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")
# Marks that let faults on the same traffic compose (see packet_queue.py): one bit each, above the
# low bits applications and kube-proxy use.
MARK_BITS = tuple(1 << bit for bit in range(16, 28))
# Queue numbers for packet queues: far from 0, which applications that queue packets use.
QUEUE_NUMBERS = range(31744, 32768)
_QUEUE_NUM = re.compile(r"--queue-num (\d+)")
_MARK = re.compile(r"--mark (0x[0-9a-f]+)/")


@dataclasses.dataclass(frozen=True)
class Scope:
    device: str
    direction: str
    peers: list[str]  # IPv4 CIDRs; empty: all traffic of the device

    @property
    def hooks(self) -> tuple[str, ...]:
        return HOOKS[self.direction]


def check_scope(scope: pb.NetworkScope, kind: str) -> dict[str, Any]:
    """The scope's fields, validated, as JSON-able values."""
    device = scope.device or DEFAULT_DEVICE
    if not _DEVICE.fullmatch(device):
        raise InvalidArgument(f"{kind}: scope.device must be an interface name (1 to 15 letters, digits, "
                              f"'_', '.', '-', ':', '@'); got {device[:40]!r}")
    if scope.direction not in DIRECTIONS:
        raise InvalidArgument(f"{kind}: scope.direction must be one of {', '.join(DIRECTIONS.values())}; "
                              f"got {scope.direction}")
    if len(scope.peers) + len(scope.peer_container_ids) > MAX_PEERS:
        raise InvalidArgument(f"{kind}: at most {MAX_PEERS} peers")
    peers = []
    for peer in scope.peers:
        try:
            network = ipaddress.ip_network(peer, strict=False)
        except ValueError:
            raise InvalidArgument(f"{kind}: scope.peers holds {peer[:60]!r}, which is not an IPv4 address or "
                                  f"CIDR (like 10.0.0.7 or 10.0.0.0/24)") from None
        if network.version != 4:
            raise InvalidArgument(f"{kind}: scope.peers holds {peer[:60]!r}: only IPv4 peers are supported")
        peers.append(str(network))
    for container_id in scope.peer_container_ids:
        if "://" not in container_id or len(container_id) > 256:
            raise InvalidArgument(f"{kind}: scope.peer_container_ids holds {container_id[:60]!r}, which is not "
                                  f"a target id like containerd://ID or pid://N")
    direction = DIRECTIONS[scope.direction]
    if direction != "to" and not (peers or scope.peer_container_ids) and kind != "network-partition":
        raise InvalidArgument(f"{kind}: direction {direction!r} needs peers (Chaos Mesh's `target`)")
    return {"device": device, "direction": direction, "peers": peers,
            "peer_container_ids": list(scope.peer_container_ids), "seed": scope.seed}


async def resolve_scope(ctx: FaultContext, params: dict[str, Any]) -> Scope:
    """The scope with the peer targets' addresses, read from their network namespaces on this node."""
    peers = list(params["peers"])
    for container_id in params["peer_container_ids"]:
        try:
            pid = await asyncio.to_thread(ctx.runtimes.pid_of, container_id)
        except (KeyError, ValueError) as err:
            raise NotFound(f"peer {container_id} is not found on this node: {err}") from None
        addresses = netns.ipv4_addresses(pid)
        if not addresses:
            raise FailedPrecondition(f"peer {container_id} (host pid {pid}) has no IPv4 address in its network "
                                     f"namespace")
        peers += [f"{address}/32" for address in addresses if f"{address}/32" not in peers]
    return Scope(params["device"], params["direction"], peers)


def new_tag() -> str:
    return uuid.uuid4().hex[:12]


def chain(tag: str, hook: str) -> str:
    return f"PC-{tag}-{'E' if hook == 'egress' else 'I'}"


@dataclasses.dataclass
class Namespace:
    """A target's network namespace, open; what a fault plans and applies against."""

    fd: int
    inode: int
    pid: int  # a process in it: for reading its /proc/<pid>/net

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def target_namespace(target: HeldTarget, device: str | None) -> Namespace:
    """The target's network namespace; refused when it is the daemon's own (the node's network)."""
    fd = target.open_namespace("net")
    inode = os.fstat(fd).st_ino
    if inode == netns.own_inode():
        os.close(fd)
        raise FailedPrecondition(
            f"target {target.description} uses the node's own network namespace (host network): a network fault "
            f"there would cut the node and the daemon off; network faults act only on targets with a network "
            f"namespace of their own"
        )
    if device is not None and device not in netns.devices(target.pid):
        os.close(fd)
        raise FailedPrecondition(f"target {target.description} has no interface {device!r}; it has: "
                                 f"{', '.join(netns.devices(target.pid)) or 'none'}")
    return Namespace(fd, inode, target.pid)


def recorded_namespace(record: Record) -> Namespace | None:
    """The namespace a journaled fault changed, or None when nothing holds it any more."""
    fd = netns.open_namespace(record.plan["netns"], record.pid)
    return None if fd is None else Namespace(fd, record.plan["netns"], record.pid)


_locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()


def namespace_lock(inode: int) -> asyncio.Lock:
    """One change at a time per namespace: the containers of a pod share one, under different target locks."""
    lock = _locks.get(inode)
    if lock is None:
        lock = _locks[inode] = asyncio.Lock()
    return lock


async def save(ctx: FaultContext, namespace: Namespace) -> str:
    """``iptables-save`` of the namespace (every table)."""
    return (await netns.run_in(ctx.children, namespace.fd, [netns.tool("iptables-save")])).stdout


async def allocate(ctx: FaultContext, namespace: Namespace, queues: int) -> tuple[list[int], int]:
    """``queues`` queue numbers and a mark bit that no rule in the namespace uses (nor a bound queue)."""
    rules = await save(ctx, namespace)
    used_marks = {int(m, 16) for m in _MARK.findall(rules)}
    mark = next((bit for bit in MARK_BITS if not any(bit & used for used in used_marks)), None)
    if mark is None:
        raise FailedPrecondition(f"the target's network namespace already has {len(MARK_BITS)} network faults "
                                 f"that mark packets; recover one first")
    used = {int(n) for n in _QUEUE_NUM.findall(rules)} | bound_queues(namespace.pid)
    free = [n for n in QUEUE_NUMBERS if n not in used][:queues]
    if len(free) < queues:
        raise FailedPrecondition("no free packet queue number is left in the target's network namespace")
    return free, mark


def bound_queues(pid: int) -> set[int]:
    """Queue numbers a program has bound in the network namespace of ``pid``."""
    try:
        with open(f"/proc/{pid}/net/netfilter/nfnetlink_queue") as f:
            return {int(line.split()[0]) for line in f if line.strip()}
    except OSError:
        return set()


def hook_rules(tag: str, builtin: dict[str, str], scope: Scope, action: str, guard: str = "",
               device: bool = True) -> list[str]:
    """``iptables-restore`` lines (one table's) for ``action`` on the scope's traffic: for each hook, a chain
    of the fault's own holding one rule per peer (or one for all traffic) and a jump to it from ``builtin``."""
    lines: list[str] = []
    for hook in scope.hooks:
        name = chain(tag, hook)
        address = "-d" if hook == "egress" else "-s"
        lines.append(f":{name} - [0:0]")
        lines += [f"-A {name} {address} {peer} {action}" for peer in scope.peers] or [f"-A {name} {action}"]
        interface = (f"-o {scope.device} " if hook == "egress" else f"-i {scope.device} ") if device else ""
        lines.append(f"-I {builtin[hook]} 1 {interface}{guard}-m comment --comment {TAG_PREFIX}{tag} -j {name}")
    return lines


async def add_rules(ctx: FaultContext, namespace: Namespace, tables: dict[str, list[str]]) -> None:
    """Add every table's lines in one ``iptables-restore --noflush`` (all or nothing)."""
    script = "".join(f"*{table}\n" + "\n".join(lines) + "\nCOMMIT\n" for table, lines in tables.items())
    await netns.run_in(ctx.children, namespace.fd, [netns.tool("iptables-restore"), "--noflush", "--wait"],
                       stdin=script)


def _tagged(saved: str, tag: str) -> Iterator[tuple[str, str]]:
    """(table, line) for every line of ``iptables-save`` output that belongs to the fault tagged ``tag``."""
    table = ""
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif tag in line:
            yield table, line


async def remove_rules(ctx: FaultContext, namespace: Namespace, tag: str) -> int:
    """Delete every rule and chain tagged ``tag`` from the namespace; return how many were there."""
    removals: dict[str, list[str]] = {}
    chains: dict[str, list[str]] = {}
    count = 0
    for table, line in _tagged(await save(ctx, namespace), tag):
        count += 1
        if line.startswith("-A ") and TAG_PREFIX + tag in line:  # the jump from a built-in chain
            removals.setdefault(table, []).append("-D " + line[3:])
        elif line.startswith(":"):
            name = line[1:].split()[0]
            chains.setdefault(table, []).append(name)
    for table, names in chains.items():  # flushed after the jumps are gone, then deleted
        removals.setdefault(table, []).extend([f"-F {name}" for name in names] + [f"-X {name}" for name in names])
    if removals:
        await add_rules(ctx, namespace, removals)
    return count


async def rules_left(ctx: FaultContext, namespace: Namespace, tag: str) -> list[str]:
    """What of the fault tagged ``tag`` the namespace still holds: checked after recovery, never assumed."""
    return [line for _, line in _tagged(await save(ctx, namespace), tag)]
