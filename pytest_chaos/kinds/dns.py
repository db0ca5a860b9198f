"""dns: the target's lookups of matching names fail or resolve to random addresses, as Chaos Mesh's DNSChaos.

``action``: "error" (SERVFAIL) or "random"; ``patterns``: Chaos Mesh's ("?"
one character, "*" only at the end), none meaning every name. Only A and
AAAA queries are affected. The target's files are untouched: the daemon
redirects its port-53 traffic to a responder of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..api.contract import check_pattern
from ..api.v1 import chaos_daemon_pb2 as pb
from ..errors import ChaosSpecError
from .applied import AppliedKind

ACTIONS = {"error": pb.Dns.ACTION_ERROR, "random": pb.Dns.ACTION_RANDOM}


class Dns(AppliedKind):
    name = "dns"
    field = "dns"
    parameters = ("action", "patterns")

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        params = super().check_params(params)
        action = params.get("action")
        if not isinstance(action, str) or action not in ACTIONS:
            raise ChaosSpecError("action", f"is required: one of {', '.join(ACTIONS)}; got {action!r}")
        patterns = params.get("patterns", [])
        if isinstance(patterns, str) or not isinstance(patterns, Sequence):
            raise ChaosSpecError("patterns", f"must be a list of name patterns like ['example.com', 'db-?.svc.*']; "
                                             f"got {patterns!r}")
        checked = []
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise ChaosSpecError("patterns", f"holds {pattern!r}: each pattern must be a string")
            try:
                checked.append(check_pattern(pattern))
            except ValueError as err:
                raise ChaosSpecError("patterns", f"{pattern!r}: {err}") from None
        return {"action": action, "patterns": checked}

    def message(self, params: Mapping[str, Any]) -> pb.Dns:
        return pb.Dns(action=ACTIONS[params["action"]], patterns=params["patterns"])
