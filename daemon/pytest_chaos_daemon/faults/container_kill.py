"""container-kill: SIGKILL to the container, as Chaos Mesh's ContainerKill.

Through the container's runtime where it has a kill call: containerd's task
Kill with ``all`` (every process of the task), Docker Engine's container
kill. CRI-O (the CRI has no immediate kill) and ``pid://`` targets get
SIGKILL through the pidfd the daemon holds, so a recycled PID is never
signalled. The container's restart policy (the kubelet's, Docker's) decides
what happens next. One-shot: nothing to recover.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from ..confinement.target import HeldTarget
from ..errors import FailedPrecondition
from .base import FaultContext, OneShot, Plan
from .process_list import ProcessRow

# SIGKILL ends a process at once unless it is frozen (cgroup v1 freezer) or
# stuck in the kernel: longer than this means the kill has not taken effect.
EXIT_TIMEOUT_S = 10.0


class ContainerKill(OneShot):
    kind = "container-kill"
    field = "container_kill"

    async def plan(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any]) -> Plan:
        runtime, _ = ctx.runtimes.split(target.description)
        return Plan({}, runtime.kill_mechanism)

    async def mechanisms(self, ctx: FaultContext) -> list[str]:
        return list(dict.fromkeys(runtime.kill_mechanism for runtime in ctx.runtimes.all().values()))

    async def apply(self, ctx: FaultContext, target: HeldTarget, params: dict[str, Any], plan: Plan) -> list[ProcessRow]:
        runtime, ref = ctx.runtimes.split(target.description)
        # Runtime clients block (gRPC, HTTP), each call bounded by its own timeout.
        await asyncio.to_thread(runtime.kill, ref, target)
        await _wait_for_exit(target)
        return []


async def _wait_for_exit(target: HeldTarget) -> None:
    """Return once the held process has exited, so the fault has taken effect when Apply answers."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EXIT_TIMEOUT_S
    while not target.exited():
        if loop.time() >= deadline:
            raise FailedPrecondition(
                f"target {target.description} (host pid {target.pid}) got {signal.SIGKILL.name} but is still "
                f"running after {EXIT_TIMEOUT_S:g}s (frozen, or stuck in the kernel?)"
            )
        await asyncio.sleep(0.01)
