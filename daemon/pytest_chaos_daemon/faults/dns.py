"""dns: the target's name lookups fail or get random addresses, as Chaos Mesh's DNSChaos.

Chaos Mesh rewrites the target's /etc/resolv.conf, and a restarted container
keeps the rewritten file after the backup is gone. Here no file of the
target's changes: in its network namespace, its queries to port 53 (UDP and
TCP) are redirected (iptables REDIRECT, nat OUTPUT) to ``dns_responder.py``,
the daemon's own program, listening on the namespace's loopback. It answers
A and AAAA queries for matching names (SERVFAIL, or a random address) and
forwards every other query to the target's own nameservers (read from its
resolv.conf when applied) from a marked socket the redirect skips.
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any

from ..api.v1 import chaos_daemon_pb2 as pb
from ..confinement import netns, target_files
from ..confinement.target import HeldTarget
from ..errors import FailedPrecondition, InvalidArgument
from ..lifecycle.journal import Record
from ..programs.dns_responder import check_pattern, resolv_conf_nameservers, responder_argv
from . import network_rules as rules
from .base import FaultContext, Plan
from .network_base import NetworkFault
from .process_list import ProcessRow

MECHANISM = "port 53 redirected (iptables REDIRECT) to the daemon's dns_responder in the target's network namespace"
ACTIONS = {pb.Dns.ACTION_ERROR: "error", pb.Dns.ACTION_RANDOM: "random"}
MAX_PATTERNS = 64
PORTS = range(20053, 60000)
RESOLV_CONF_LIMIT = 64 << 10


class Dns(NetworkFault):
    kind = "dns"
    field = "dns"

    def check(self, request: pb.ApplyRequest) -> dict[str, Any]:
        message = request.dns
        if message.action not in ACTIONS:
            raise InvalidArgument(f"dns: action must be one of {', '.join(ACTIONS.values())}; got {message.action}")
        if len(message.patterns) > MAX_PATTERNS:
            raise InvalidArgument(f"dns: at most {MAX_PATTERNS} patterns")
        patterns = []
        for pattern in message.patterns:
            try:
                patterns.append(check_pattern(pattern))
            except ValueError as err:
                raise InvalidArgument(f"dns: patterns: {err}") from None
        return {"action": ACTIONS[message.action], "patterns": patterns}

    async def plan(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any]) -> Plan:
        upstreams = await _nameservers(target)
        with rules.target_namespace(target, None) as namespace:
            async with rules.namespace_lock(namespace.inode):
                _, mark = await rules.allocate(ctx, namespace, 0)
        return Plan({"netns": namespace.inode, "tag": rules.new_tag(), "mark": mark, "upstreams": upstreams,
                     "port": random.choice(PORTS), "cgroups": [ctx.confiner.new_cgroup(target)]}, MECHANISM)

    async def mechanisms(self, ctx: FaultContext) -> list[str]:
        return [MECHANISM]

    async def apply(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any], plan: Plan) -> list[ProcessRow]:
        undo = plan.undo
        with rules.target_namespace(target, None) as namespace:
            await _start_responder(ctx, namespace, params, undo, target.description, target)
            guard = f"-m mark ! --mark {undo['mark']:#x}/{undo['mark']:#x} "
            lines = [f":{rules.chain(undo['tag'], 'egress')} - [0:0]"]
            lines += [f"-A {rules.chain(undo['tag'], 'egress')} -p {protocol} --dport 53 {guard}"
                      f"-j REDIRECT --to-ports {undo['port']}" for protocol in ("udp", "tcp")]
            lines.append(f"-I OUTPUT 1 -m comment --comment {rules.TAG_PREFIX}{undo['tag']} "
                         f"-j {rules.chain(undo['tag'], 'egress')}")
            async with rules.namespace_lock(namespace.inode):
                await rules.add_rules(ctx, namespace, {"nat": lines})
        return []

    async def more_left(self, ctx: FaultContext, namespace: rules.Namespace, plan: dict[str, Any]) -> list[str]:
        left = [f"its responder's cgroup {cgroup} is still there" for cgroup in plan["cgroups"] if ctx.confiner.exists(cgroup)]
        if netns.namespace_inode(namespace.pid) == namespace.inode and _listening(namespace.pid, plan["port"]):
            left.append(f"a responder still listens on port {plan['port']}")
        return left

    async def resume(self, ctx: FaultContext, record: Record) -> None:
        """The responder died with the old daemon (the redirect stayed: lookups failed meanwhile): start it
        again."""
        await self.restart_programs(ctx, record, lambda namespace, plan, target: _start_responder(
            ctx, namespace, record.params, plan, record.container_id, target))


async def _nameservers(target: HeldTarget) -> list[str]:
    """The target's IPv4 nameservers, from its /etc/resolv.conf (read as ``target_files`` reads: a FIFO or a
    device planted there is refused, a file that never answers times out)."""
    def read() -> bytes | None:
        root = os.open(f"/proc/{target.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return target_files.read_file(root, "/etc/resolv.conf", f"target {target.description}", RESOLV_CONF_LIMIT)
        finally:
            os.close(root)

    raw = await target_files.run(read, f"reading /etc/resolv.conf of target {target.description}")
    servers = [s for s in resolv_conf_nameservers((raw or b"").decode(errors="replace")) if ":" not in s]
    if not servers:
        raise FailedPrecondition(f"dns: target {target.description} has no IPv4 nameserver in its /etc/resolv.conf, "
                                 f"so there is nothing to forward the other names to")
    return servers


async def _start_responder(ctx: FaultContext, namespace: rules.Namespace, params: dict[str, Any],
                           undo: dict[str, Any], where: str, target: HeldTarget | None) -> None:
    program = [sys.executable, "-m", "pytest_chaos_daemon.programs.dns_responder",
               *responder_argv(undo["port"], undo["mark"], params["action"], params["patterns"], undo["upstreams"])]
    cgroup = undo["cgroups"][0]

    def ready() -> bool:
        return any(_listening(pid, undo["port"]) for pid in ctx.confiner.members(cgroup))

    await ctx.confiner.start_in_netns(namespace.fd, program, cgroup, ready, where, target)


def _listening(pid: int | str, port: int) -> bool:
    """Whether a TCP socket listens on 127.0.0.1:``port`` in the network namespace of ``pid``."""
    try:
        with open(f"/proc/{pid}/net/tcp") as f:
            rows = [line.split() for line in f.read().splitlines()[1:]]
    except OSError:
        return False
    return any(row[1] == f"0100007F:{port:04X}" and row[3] == "0A" for row in rows if len(row) > 3)
