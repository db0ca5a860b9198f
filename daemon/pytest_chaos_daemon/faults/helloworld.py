"""HelloWorldChaos: the target's process list.

Two sources. ``ps`` runs ``sh -c "ps aux"`` inside the target, confined to
what the target itself may do (see ``nsexec.Confiner``): the target's own
``sh`` and ``ps`` never run with the daemon's privileges. ``proc`` reads the
target's /proc without executing anything (``proc_listing.py``), so it also
works on distroless images. One-shot: there is nothing to recover.

Two calls reach it: ``Apply`` with ``hello_world`` (``HelloWorld``, journaled as
every kind is) and ``ExecHelloWorldChaos``, the tutorial's call.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from ..api.v1 import chaos_daemon_pb2 as pb
from ..confinement import target_files
from ..confinement.nsexec import Completed, Confiner, explain_failure
from ..confinement.target import HeldTarget
from ..errors import InvalidArgument
from ..server.logs import log
from .base import FaultContext, OneShot, Output, Plan
from .proc_listing import list_processes
from .process_list import ProcessRow, parse_ps

SOURCES = ("ps", "proc")
_BY_ENUM: dict[int, str] = {
    pb.PROCESS_LIST_SOURCE_UNSPECIFIED: "ps",
    pb.PROCESS_LIST_SOURCE_PS: "ps",
    pb.PROCESS_LIST_SOURCE_PROC: "proc",
}
PROBE = ("sh", "-c", "ps aux")
# The probe's own processes. busybox's sh runs ps in-process, which busybox's
# ps then shows as "{ps} sh -c ps aux"; procps' sh forks "ps aux".
PROBE_COMMANDS = frozenset({"sh -c ps aux", "ps aux", "{ps} sh -c ps aux"})
MECHANISMS = {"ps": "sh -c 'ps aux' inside the target, in its namespaces and cgroups, as its user",
              "proc": "the target's /proc, read by the daemon (nothing executed)"}


@dataclasses.dataclass(frozen=True)
class Listing:
    output: str
    processes: list[ProcessRow]
    mechanism: str
    truncated: bool = False


async def exec_hello_world(confiner: Confiner, target: HeldTarget, source: str, timeout_s: float) -> Listing:
    if source == "proc":
        output, rows, truncated = await target_files.run(lambda: list_processes(target),
                                                         f"listing the processes of target {target.description}")
        log(logging.DEBUG, "output", container_id=target.description, pid=target.pid, source=source, output=output)
        return Listing(output, rows, MECHANISMS[source], truncated)
    result: Completed = await confiner.run(target, PROBE, timeout_s)
    log(logging.INFO, "command ran", container_id=target.description, pid=target.pid, argv=result.argv,
        returncode=result.returncode, truncated=result.truncated)
    log(logging.DEBUG, "output", container_id=target.description, pid=target.pid, source=source, output=result.stdout)
    if result.returncode != 0 and not result.truncated:
        raise explain_failure(result, target.description, needs="`sh` and `ps`")
    try:
        rows = parse_ps(result.stdout)
    except ValueError as err:
        raise explain_failure(
            Completed(result.argv, 1, result.stdout, f"unexpected ps output: {err}"), target.description, "`ps`"
        ) from None
    return Listing(result.stdout, [row for row in rows if row.command not in PROBE_COMMANDS], MECHANISMS[source],
                   result.truncated)


def source_of(value: int) -> str:
    """``ps`` or ``proc`` for a request's ProcessListSource; raises InvalidArgument for another value."""
    if value not in _BY_ENUM:
        raise InvalidArgument(f"source {value} is unknown; accepted: {', '.join(pb.ProcessListSource.keys())}")
    return _BY_ENUM[value]


class HelloWorld(OneShot):
    """HelloWorldChaos as an ``Apply`` kind: the listing comes back in ApplyResponse's output and processes."""

    kind = "helloworld"
    field = "hello_world"

    def check(self, request: pb.ApplyRequest) -> dict[str, Any]:
        return {"source": source_of(request.hello_world.source)}

    async def plan(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any]) -> Plan:
        return Plan({}, MECHANISMS[params["source"]])

    async def apply(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any], plan: Plan) -> Output:
        listing = await exec_hello_world(ctx.confiner, target, params["source"], ctx.exec_timeout_s)
        return Output(listing.processes, listing.output, listing.truncated)

    async def mechanisms(self, ctx: FaultContext) -> list[str]:
        return [MECHANISMS[source] for source in SOURCES]
