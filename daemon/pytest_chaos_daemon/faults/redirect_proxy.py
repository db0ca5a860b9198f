"""Faults made by a proxy in the target's network namespace that its TCP traffic on one port is redirected to.

The TCP toxics (``tcp_toxic.py``) and the HTTP faults share it. In the
target's network namespace only, the daemon starts the kind's proxy program
(``programs/transparent_proxy.py`` holds what proxies share) as it starts the
DNS responder: as root, in the target's cgroups, tracked and supervised (a
proxy that dies ends the fault early rather than let it silently stop).
Then, in one ``iptables-restore``:

- nat: TCP to the target's ``port`` is REDIRECTed to the proxy's port
  (PREROUTING for the traffic reaching a server target, ``SERVER``; OUTPUT
  for a client target's own connections, ``CLIENT``). The proxy's own
  connection on to the original destination carries the fault's mark, which
  the redirect skips.
- filter: whatever still reaches ``port`` without being redirected, other
  than the proxy's own, is answered with a TCP reset (REJECT tcp-reset, RST
  segments let through so a reset peer closes): connections established
  before the fault, which the redirect (nat sees only a connection's first
  packet) would leave untouched, are reset at their next segment. Without a
  proxy (``program`` None: tcp-down) that rule alone refuses every new
  connection too.

Traffic on the namespace's loopback is left alone (``SERVER``). One proxy
fault per port of a namespace: a second is refused, naming the first.
IPv4 only (iptables).

A kind plugs in by subclassing ``RedirectProxyFault``: ``kind``, ``field``,
``mechanism_name``, ``check`` (which must return ``port``), ``program`` (the
module run as ``python3 -m``, or None for no proxy), ``program_args`` (its
own options after the common ones) and, for a client target, ``side``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import random
import re
import sys
from typing import Any

from ..confinement import netns
from ..confinement.target import HeldTarget
from ..errors import FailedPrecondition
from ..lifecycle.journal import Record
from ..programs.transparent_proxy import proxy_argv
from . import network_rules as rules
from .base import FaultContext, Plan
from .network_base import NetworkFault
from .process_list import ProcessRow

PROXY_PORTS = range(20000, 60000)
# The proxy is the module beside this daemon's own code, whichever other copy the interpreter would find.
PROGRAM_ENV = {"PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[2])}


@dataclasses.dataclass(frozen=True)
class Side:
    """Where the redirect and the reset go: the traffic reaching a server target, or a client's own."""

    name: str
    nat: str  # the built-in nat chain of the REDIRECT
    filter: str  # the built-in filter chain of the reset
    not_loopback: str


SERVER = Side("server", "PREROUTING", "INPUT", "! -i lo")
CLIENT = Side("client", "OUTPUT", "OUTPUT", "! -o lo")
SIDES = {side.name: side for side in (SERVER, CLIENT)}


class RedirectProxyFault(NetworkFault):
    """Base of the proxy kinds. The plan journals ``netns``, ``tag``, ``mark``, ``port`` (the target's),
    ``proxy_port``, ``side`` and the proxy's tracking ``cgroups`` (none without a proxy)."""

    mechanism_name = ""
    program: str | None = None  # e.g. "pytest_chaos_daemon.programs.tcp_proxy"; None: the reset rule alone

    def program_args(self, params: dict[str, Any]) -> list[str]:
        """The proxy's own options, after ``--port``, ``--mark`` and ``--seed``."""
        return []

    def side(self, params: dict[str, Any]) -> Side:
        return SERVER

    def seed(self, params: dict[str, Any]) -> int:
        return int(params.get("seed", 0))

    async def mechanisms(self, ctx: FaultContext) -> list[str]:
        return [self.mechanism_name]

    async def plan(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any]) -> Plan:
        port = int(params["port"])
        with rules.target_namespace(target, None) as namespace:
            async with rules.namespace_lock(namespace.inode):
                saved = await rules.save(ctx, namespace)
                taken = _port_taken(saved, port)
                if taken:
                    raise FailedPrecondition(f"{self.kind}: port {port} of target {target.description} already has a "
                                             f"proxy fault ({taken}); recover it first: one proxy fault per port")
                _, mark = await rules.allocate(ctx, namespace, 0)
            listening = _listening_ports(namespace.pid)
        free = [p for p in random.sample(PROXY_PORTS, 64) if p not in listening and p != port]
        if not free:
            raise FailedPrecondition(f"{self.kind}: no free port for the proxy in target {target.description}")
        cgroups = [ctx.confiner.new_cgroup(target)] if self.program else []
        return Plan({"netns": namespace.inode, "tag": rules.new_tag(), "mark": mark, "port": port,
                     "proxy_port": free[0], "side": self.side(params).name, "cgroups": cgroups}, self.mechanism_name)

    async def apply(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any], plan: Plan) -> list[ProcessRow]:
        undo = plan.undo
        with rules.target_namespace(target, None) as namespace:
            if self.program:
                await self._start(ctx, namespace, params, undo, target.description, target)
            async with rules.namespace_lock(namespace.inode):
                await rules.add_rules(ctx, namespace, redirect_rules(undo, redirect=self.program is not None))
        return []

    async def more_left(self, ctx: FaultContext, namespace: rules.Namespace, plan: dict[str, Any]) -> list[str]:
        left = [f"its proxy's cgroup {cgroup} is still there" for cgroup in plan["cgroups"] if ctx.confiner.exists(cgroup)]
        if plan["cgroups"] and netns.namespace_inode(namespace.pid) == namespace.inode \
                and plan["proxy_port"] in _listening_ports(namespace.pid):
            left.append(f"a proxy still listens on port {plan['proxy_port']}")
        return left

    async def resume(self, ctx: FaultContext, record: Record) -> None:
        """The proxy died with the old daemon (the redirect stayed: connections to the port were refused
        meanwhile): start it again."""
        if not record.plan["cgroups"]:
            return
        await self.restart_programs(ctx, record, lambda namespace, plan, target: self._start(
            ctx, namespace, record.params, plan, record.container_id, target))

    async def _start(self, ctx: FaultContext, namespace: rules.Namespace, params: dict[str, Any],
                     undo: dict[str, Any], where: str, target: HeldTarget | None) -> None:
        assert self.program is not None
        argv = [sys.executable, "-m", self.program, *proxy_argv(undo["proxy_port"], undo["mark"], self.seed(params)),
                *self.program_args(params)]
        cgroup = undo["cgroups"][0]

        def ready() -> bool:
            return any(undo["proxy_port"] in _listening_ports(pid) for pid in ctx.confiner.members(cgroup))

        await ctx.confiner.start_in_netns(namespace.fd, argv, cgroup, ready, where, target, env=PROGRAM_ENV)


def redirect_rules(undo: dict[str, Any], redirect: bool = True) -> dict[str, list[str]]:
    """The ``iptables-restore`` lines (by table) of a proxy fault's plan: the redirect (when ``redirect``) and the
    reset of what reaches the port otherwise."""
    side = SIDES[undo["side"]]
    tag, port, mark = undo["tag"], undo["port"], undo["mark"]
    name = rules.chain(tag, "ingress")
    guard = f"-m mark ! --mark {mark:#x}/{mark:#x}"
    jump = f"{side.not_loopback} -p tcp -m tcp --dport {port} -m comment --comment {rules.TAG_PREFIX}{tag}"
    tables: dict[str, list[str]] = {}
    if redirect:
        tables["nat"] = [f":{name} - [0:0]",
                         f"-A {name} -p tcp {guard} -j REDIRECT --to-ports {undo['proxy_port']}",
                         f"-I {side.nat} 1 {jump} -j {name}"]
    tables["filter"] = [f":{name} - [0:0]",
                        f"-A {name} -p tcp -m tcp --tcp-flags RST RST -j RETURN",
                        f"-A {name} -p tcp {guard} -j REJECT --reject-with tcp-reset",
                        f"-I {side.filter} 1 {jump} -j {name}"]
    return tables


def _port_taken(saved: str, port: int) -> str | None:
    """The tag of a proxy fault already on ``port`` in ``iptables-save`` output, or None."""
    for line in saved.splitlines():
        match = re.search(rf"{re.escape(rules.TAG_PREFIX)}(\w+)", line)
        if match and f"--dport {port} " in line:
            return f"fault {match.group(1)}"
    return None


def _listening_ports(pid: int | str) -> set[int]:
    """The TCP ports listened on (any IPv4 address) in the network namespace of ``pid``."""
    try:
        with open(f"/proc/{pid}/net/tcp") as f:
            rows = [line.split() for line in f.read().splitlines()[1:]]
    except OSError:
        return set()
    return {int(row[1].rsplit(":", 1)[1], 16) for row in rows if len(row) > 3 and row[3] == "0A"}
