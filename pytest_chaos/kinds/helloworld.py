"""HelloWorldChaos: the daemon lists the target's processes from inside its namespaces."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ChaosSpecError
from ..model import Process, Target
from ..transport import DaemonClient


class HelloWorld:
    name = "helloworld"
    recoverable = False

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        if params:
            names = ", ".join(sorted(params))
            raise ChaosSpecError(names, f"kind 'helloworld' takes no parameters (got {names})")
        return {}

    def inject(self, client: DaemonClient, target: Target, params: Mapping[str, Any]) -> None:
        reply = client.exec_hello_world(target.container_id, target.injection_id)
        target.pid = reply.status.pid
        target.output = reply.output
        target.processes = [Process(p.pid, p.user, p.command) for p in reply.processes]

    def recover(self, client: DaemonClient, target: Target) -> None:
        """One-shot: nothing stays injected."""
