"""HelloWorldChaos: the daemon lists the target's processes.

``source="ps"`` (the default) runs ``sh -c "ps aux"`` inside the target, as
the target would; ``source="proc"`` has the daemon read the target's /proc,
executing nothing, so it also works on distroless images. An ordinary
one-shot kind of the daemon's ``Apply``: the listing comes back as the
response's output and processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api.v1 import chaos_daemon_pb2 as pb
from ..errors import ChaosSpecError
from .applied import AppliedKind

SOURCES = {"ps": pb.PROCESS_LIST_SOURCE_PS, "proc": pb.PROCESS_LIST_SOURCE_PROC}


class HelloWorld(AppliedKind):
    name = "helloworld"
    field = "hello_world"
    recoverable = False

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(params) - {"source"})
        if unknown:
            names = ", ".join(unknown)
            raise ChaosSpecError(names, f"kind 'helloworld' takes only 'source' (got {names})")
        source = params.get("source", "ps")
        if not isinstance(source, str) or source not in SOURCES:
            raise ChaosSpecError("source", f"must be one of {', '.join(map(repr, SOURCES))}; got {source!r}")
        return {"source": source}

    def message(self, params: Mapping[str, Any]) -> pb.HelloWorld:
        return pb.HelloWorld(source=SOURCES[params["source"]])
