"""What a daemon's injection status means for a target of an experiment."""

from __future__ import annotations

from .api.v1 import chaos_daemon_pb2 as pb
from .model import Target

_ENDED = {
    pb.InjectionStatus.RECOVERED: "recovered",
    pb.InjectionStatus.EXPIRED: "expired",
    pb.InjectionStatus.FAILED: "failed",
    pb.InjectionStatus.UNKNOWN_INJECTION: "failed",
    pb.InjectionStatus.ONE_SHOT: "recovered",
}


def settle_from_daemon(target: Target, status: pb.InjectionStatus) -> None:
    """Record on ``target`` how its injection ended, if it has (an ACTIVE one stays ``applied``)."""
    state = _ENDED.get(status.state)
    if state is None or target.state != "applied":
        return
    target.state = state
    if status.state == pb.InjectionStatus.UNKNOWN_INJECTION:
        target.detail = (f"the daemon at {target.daemon} no longer knows this injection; "
                         "its fault may still be in force")
    else:
        target.detail = status.detail
