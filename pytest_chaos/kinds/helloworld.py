"""HelloWorldChaos: the daemon lists the target's processes.

``source="ps"`` (the default) runs ``sh -c "ps aux"`` inside the target, as
the target would; ``source="proc"`` has the daemon read the target's /proc,
executing nothing, so it also works on distroless images.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api.v1 import chaos_daemon_pb2 as pb
from ..errors import ChaosSpecError
from ..model import Process, Target
from .base import InjectContext

SOURCES = {"ps": pb.PROCESS_LIST_SOURCE_PS, "proc": pb.PROCESS_LIST_SOURCE_PROC}


class HelloWorld:
    name = "helloworld"
    recoverable = False
    backends: tuple[str, ...] = ()
    uses_daemon = True

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(params) - {"source"})
        if unknown:
            names = ", ".join(unknown)
            raise ChaosSpecError(names, f"kind 'helloworld' takes only 'source' (got {names})")
        source = params.get("source", "ps")
        if not isinstance(source, str) or source not in SOURCES:
            raise ChaosSpecError("source", f"must be one of {', '.join(map(repr, SOURCES))}; got {source!r}")
        return {"source": source}

    def inject(self, ctx: InjectContext, target: Target, params: Mapping[str, Any]) -> None:
        assert ctx.client is not None
        reply = ctx.client.exec_hello_world(target.container_id, target.injection_id, SOURCES[params["source"]])
        target.pid = reply.status.pid
        target.mechanism, target.cgroup = reply.status.mechanism, reply.status.cgroup
        target.output = reply.output
        target.processes = [Process(p.pid, p.user, p.command) for p in reply.processes]
        target.state = "applied"
