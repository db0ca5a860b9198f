"""From a container id to a held target: the runtime asked in a pool of its own, within a time bound, and
a container's init process remembered while that very process runs.

A container runs exactly as long as its init process does, and a PID with the same start time is the same
process: while both hold, the runtime need not be asked again. Anything else resolves afresh, and a
container's PID is asked twice (before and after it is held by pidfd) so a recycled PID is never entered.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..confinement.target import HeldTarget
from ..errors import DaemonError, FailedPrecondition, Unavailable
from . import RuntimeRegistry

RUNTIME_LOOKUP_TIMEOUT_S = 15.0
# Containers whose init process is remembered; beyond this the memory starts over.
REMEMBERED_TARGETS = 4096
RUNTIME_POOL_SIZE = 4
T = TypeVar("T")


class TargetResolver:
    def __init__(self, runtimes: RuntimeRegistry, allow_pid_targets: bool) -> None:
        self._runtimes = runtimes
        self._allow_pid_targets = allow_pid_targets
        self._resolved: dict[str, tuple[int, int]] = {}  # container id -> (init's host pid, its start time)
        # A pool per runtime: a stalled Docker socket cannot hold up containerd or pid:// lookups.
        self._lookup_pools = {
            prefix: ThreadPoolExecutor(RUNTIME_POOL_SIZE, thread_name_prefix=f"lookup-{prefix}")
            for prefix in runtimes.names
        }

    def close(self) -> None:
        for pool in self._lookup_pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    async def hold(self, container_id: str) -> HeldTarget:
        """The container's init process (or the pid:// process), held by pidfd; the caller closes it."""
        runtime_name = self._runtimes.name_of(container_id)
        if runtime_name == "pid" and not self._allow_pid_targets:
            raise FailedPrecondition(
                "pid:// targets are disabled on this daemon (start it with --allow-pid-targets to allow them)"
            )
        target = self._hold_remembered(container_id)
        if target is None:
            target = HeldTarget(await self._lookup(runtime_name, container_id), container_id)
            if runtime_name != "pid":
                try:
                    target.confirm(await self._lookup(runtime_name, container_id))
                except BaseException:
                    target.close()
                    raise
                self._remember(container_id, target)
        return target

    def _hold_remembered(self, container_id: str) -> HeldTarget | None:
        remembered = self._resolved.get(container_id)
        if remembered is None:
            return None
        pid, start_ticks = remembered
        try:
            target = HeldTarget(pid, container_id)
        except DaemonError:
            target = None
        if target is None or target.stat.start_ticks != start_ticks:
            if target is not None:
                target.close()
            self._resolved.pop(container_id, None)
            return None
        return target

    def _remember(self, container_id: str, target: HeldTarget) -> None:
        if len(self._resolved) >= REMEMBERED_TARGETS:
            self._resolved.clear()
        self._resolved[container_id] = (target.pid, target.stat.start_ticks)

    async def ask(self, runtime_name: str, question: Callable[[], T]) -> T:
        """``question()`` (a blocking call to the runtime) in that runtime's pool; TimeoutError past the bound."""
        future = asyncio.get_running_loop().run_in_executor(self._lookup_pools[runtime_name], question)
        return await asyncio.wait_for(future, RUNTIME_LOOKUP_TIMEOUT_S)

    async def _lookup(self, runtime_name: str, container_id: str) -> int:
        if runtime_name == "pid":  # /proc only: no runtime to wait for
            return self._runtimes.pid_of(container_id)
        try:
            return await self.ask(runtime_name, functools.partial(self._runtimes.pid_of, container_id))
        except TimeoutError:
            endpoint = self._runtimes.endpoint_of(container_id)
            raise Unavailable(
                f"the {runtime_name} runtime at {endpoint} did not answer within {RUNTIME_LOOKUP_TIMEOUT_S:g}s"
            ) from None
