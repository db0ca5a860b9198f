"""GetInfo: what this daemon is and offers, for the plugin's version handshake.

The plugin asks each daemon once, before it applies anything there, and
refuses a kind or a request field the daemon does not know: protobuf would
drop an unknown field unread, and the fault would silently be another one.
The fields a kind reads are those of the daemon's own copy of the API (what
it was built with is what it reads); the rest describes the node as the
daemon found it.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

from ..api.contract import field_paths
from ..api.v1 import chaos_daemon_pb2 as pb
from ..api.version import VERSION
from ..faults.base import Fault, FaultContext
from ..host import cgroups as node
from ..runtimes import ContainerRuntime

PROBE_TIMEOUT_S = 1.0
_FAULT_FIELDS = frozenset(field.name for field in pb.ApplyRequest.DESCRIPTOR.oneofs_by_name["fault"].fields)


async def daemon_info(faults: Mapping[str, Fault], ctx: FaultContext, allow_pid_targets: bool) -> pb.GetInfoResponse:
    missing = await ctx.netem.missing()
    reply = pb.GetInfoResponse(
        version=VERSION,
        apply_fields=field_paths(pb.ApplyRequest.DESCRIPTOR, skip=_FAULT_FIELDS),
        cgroup=node.layout_name(),
        netem=missing is None,
        netem_missing=missing or "",
        kernel=os.uname().release,
        pid_targets=allow_pid_targets,
    )
    for fault in faults.values():
        descriptor = pb.ApplyRequest.DESCRIPTOR.fields_by_name[fault.field].message_type
        reply.kinds.add(kind=fault.kind, field=fault.field, fields=field_paths(descriptor),
                        mechanisms=await fault.mechanisms(ctx), recoverable=fault.recoverable)
    runtimes = ctx.runtimes.all()
    # Every socket at once, each bounded: a stalled runtime costs GetInfo a second, not the sum.
    answers = await asyncio.gather(*(asyncio.to_thread(_reachable, runtime) for runtime in runtimes.values()))
    for name, runtime, error in zip(runtimes, runtimes.values(), answers, strict=True):
        reply.runtimes.add(runtime=name, endpoint=runtime.endpoint, reachable=error is None, error=error or "")
    return reply


def _reachable(runtime: ContainerRuntime) -> str | None:
    """None when the runtime's socket accepts a connection (pid: /proc is there); otherwise why not."""
    if runtime.prefix == "pid":
        return None if os.path.isdir(runtime.endpoint) else f"{runtime.endpoint} is not mounted"
    if not os.path.exists(runtime.endpoint):
        return f"no socket at {runtime.endpoint}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(PROBE_TIMEOUT_S)
        try:
            probe.connect(runtime.endpoint)
        except OSError as err:
            return f"its socket refuses connections ({err.strerror or err})"
    return None
