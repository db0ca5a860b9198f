"""What every fault kind served by ``Apply`` implements, and what it gets to work with.

A kind splits applying in two: ``plan`` works out, without changing
anything, what recovery will need (a cgroup path, the PIDs it will stop);
the daemon journals that plan; then ``apply`` changes the target. ``recover``
undoes it from the journaled record alone, so it works after a restart; it is
idempotent and checks the target is still the one it changed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from ..api.v1 import chaos_daemon_pb2 as pb
from ..confinement.nsexec import ChildProcesses, Confiner
from ..confinement.target import HeldTarget
from ..host.netem import NetemSupport
from ..lifecycle.journal import Record
from ..runtimes import RuntimeRegistry
from .process_list import ProcessRow


@dataclasses.dataclass(frozen=True)
class FaultContext:
    """The daemon's means, shared by every kind."""

    runtimes: RuntimeRegistry
    children: ChildProcesses
    confiner: Confiner
    exec_timeout_s: float
    netem: NetemSupport  # whether the netem kinds may use the kernel's netem here


@dataclasses.dataclass(frozen=True)
class Output:
    """What a fault's command printed, for ApplyResponse (HelloWorld's process list); most kinds print nothing."""

    processes: list[ProcessRow]
    text: str = ""
    truncated: bool = False


@dataclasses.dataclass(frozen=True)
class Plan:
    undo: dict[str, Any]  # journaled before anything changes; all recovery gets
    mechanism: str  # how the fault is made here, for the user: "cgroup v1 freezer", "SIGSTOP", ...


class Fault(Protocol):
    kind: str  # the plugin's name: "container-pause"
    field: str  # the ApplyRequest oneof field: "container_pause"
    recoverable: bool

    def check(self, request: pb.ApplyRequest) -> dict[str, Any]:
        """The kind's parameters from the request, validated, as JSON-able values; raises InvalidArgument."""
        ...

    async def plan(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any]) -> Plan:
        """What recovery will need; changes nothing. Raises DaemonError when the fault cannot apply."""
        ...

    async def apply(
        self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any], plan: Plan
    ) -> list[ProcessRow] | Output:
        """Change the target; return the processes acted on (if the kind names them), or what it printed."""
        ...

    async def mechanisms(self, ctx: FaultContext) -> list[str]:
        """Each way this daemon may make the kind on this node (GetInfo), as ``Plan.mechanism`` names them."""
        ...

    async def recover(self, ctx: FaultContext, record: Record) -> str:
        """Undo ``record``'s fault; return what was done. Idempotent; a target that is gone counts as recovered."""
        ...

    async def resume(self, ctx: FaultContext, record: Record) -> None:
        """After a daemon restart, put back what ended with the old daemon (a process it ran); most kinds: nothing.
        It may change ``record.plan`` (a new cgroup for what it started again): the daemon journals it then."""
        ...


class OneShot:
    """What a one-shot kind shares: nothing stays in force, so nothing to recover or resume."""

    recoverable = False

    def check(self, request: pb.ApplyRequest) -> dict[str, Any]:
        return {}

    async def recover(self, ctx: FaultContext, record: Record) -> str:
        return "one-shot: nothing to recover"

    async def resume(self, ctx: FaultContext, record: Record) -> None:
        """Nothing outlives a one-shot fault."""
