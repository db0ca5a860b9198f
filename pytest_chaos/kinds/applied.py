"""Kinds the daemon applies through its ``Apply`` call: one message per kind, the rest shared."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf.message import Message

from ..errors import ChaosSpecError
from ..model import Process, Target
from .base import InjectContext


class AppliedKind:
    """A kind whose fault the daemon applies (``Apply``) and, if recoverable, recovers."""

    name = ""
    field = ""  # the ApplyRequest oneof field
    recoverable = True
    backends: tuple[str, ...] = ()
    uses_daemon = True
    parameters: tuple[str, ...] = ()  # accepted parameter names

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            accepted = ", ".join(self.parameters) or "none"
            raise ChaosSpecError(", ".join(unknown),
                                 f"kind {self.name!r} takes parameters: {accepted} (got {', '.join(unknown)})")
        return dict(params)

    def message(self, params: Mapping[str, Any]) -> Message:
        """The kind's ApplyRequest field."""
        raise NotImplementedError

    def build(self, ctx: InjectContext, params: Mapping[str, Any]) -> Message:
        """The message for one injection; kinds that need the experiment's context (its peers) override it."""
        return self.message(params)

    def inject(self, ctx: InjectContext, target: Target, params: Mapping[str, Any]) -> None:
        assert ctx.client is not None
        reply = ctx.client.apply(
            target.container_id, target.injection_id, {self.field: self.build(ctx, params)}, ctx.lease_s, ctx.owner,
            ctx.duration_s if self.recoverable else None,
        )
        target.pid = reply.status.pid
        target.mechanism, target.cgroup = reply.status.mechanism, reply.status.cgroup
        target.detail = reply.status.detail
        target.output = reply.output
        target.state = "applied"
        target.processes = [Process(p.pid, p.user, p.command) for p in reply.processes]
