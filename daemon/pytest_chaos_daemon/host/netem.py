"""Whether this node's kernel gives netem: found once, by trying it.

netem is a module on most distributions' kernels (``sch_netem``) and missing
from some (this project's CI host has none). The daemon loads it where it has
``modprobe`` (the kernel also loads it on demand when a netem qdisc is asked
for), then adds a netem qdisc to the loopback device of a network namespace
of its own, made for the check and gone with it: what works there works in a
target's namespace. The answer is kept for the daemon's life and logged at
start.
"""

from __future__ import annotations

import asyncio
import logging
import shutil

from ..confinement.nsexec import ChildProcesses
from ..server.logs import log

AUTO, NETEM, QUEUE = "auto", "netem", "queue"
CHOICES = (AUTO, NETEM, QUEUE)
PROBE_TIMEOUT_S = 20.0


class NetemSupport:
    """The netem check and the operator's choice (``--network-emulation``)."""

    def __init__(self, children: ChildProcesses, choice: str = AUTO) -> None:
        self.children = children
        self.choice = choice
        self._missing: str | None = None
        self._checked = False
        self._lock = asyncio.Lock()

    async def missing(self) -> str | None:
        """None when the netem kinds may use netem here; otherwise why not, for the user."""
        if self.choice == QUEUE:
            return "the daemon was started with --network-emulation=queue"
        async with self._lock:
            if not self._checked:
                self._missing = await self._probe()
                self._checked = True
        return self._missing

    async def describe(self) -> str:
        """For the daemon's start line: "netem" or "packet queue (...why...)"."""
        missing = await self.missing()
        return "netem" if missing is None else f"packet queue ({missing})"

    async def _probe(self) -> str | None:
        tc, unshare = shutil.which("tc"), shutil.which("unshare")
        if tc is None or unshare is None:
            return "the daemon has no tc or unshare to use netem with (Debian: iproute2, util-linux)"
        if modprobe := shutil.which("modprobe"):
            await self.children.run([modprobe, "-q", "sch_netem"], PROBE_TIMEOUT_S)
        tried = await self.children.run([unshare, "--net", "--", tc, "qdisc", "add", "dev", "lo", "root", "netem",
                                         "delay", "1ms"], PROBE_TIMEOUT_S)
        if tried.returncode != 0:
            log(logging.INFO, "netem check failed", error=tried.stderr.strip()[:500], returncode=tried.returncode)
            return "this kernel has no netem (sch_netem)"
        return None
