"""http-abort, http-delay, http-replace, http-patch: Chaos Mesh's HTTPChaos, for plain HTTP/1.1.

The target's TCP traffic on ``port`` is redirected to the daemon's HTTP proxy
(``programs/http_proxy.py``) in its network namespace (``redirect_proxy.py``:
PREROUTING for a server target, the default; OUTPUT for a client target's own
connections), and the proxy applies the rule to each matching exchange. The
four kinds are one rule (``api/http_rule.py``): each names the action it was
asked for, and the others may come with it, applied in Chaos Mesh's order.
Connections open before the fault are reset; recovery removes the rules and
stops the proxy; after a daemon restart the proxy is started again.
"""

from __future__ import annotations

import base64
from typing import Any

from ..api.http_rule import RuleError, check_rule
from ..api.v1 import chaos_daemon_pb2 as pb
from ..errors import InvalidArgument
from ..programs.http_proxy import rule_argv
from .redirect_proxy import SIDES, RedirectProxyFault, Side

MECHANISM = "port redirected (iptables REDIRECT) to the daemon's HTTP proxy in the target's network namespace"
KINDS = {pb.Http.KIND_ABORT: "http-abort", pb.Http.KIND_DELAY: "http-delay", pb.Http.KIND_REPLACE: "http-replace",
         pb.Http.KIND_PATCH: "http-patch"}
TARGETS = {pb.Http.TARGET_REQUEST: "Request", pb.Http.TARGET_RESPONSE: "Response"}
SIDE_NAMES = {pb.Http.SIDE_SERVER: "server", pb.Http.SIDE_CLIENT: "client"}


class Http(RedirectProxyFault):
    field = "http"
    mechanism_name = MECHANISM
    program = "pytest_chaos_daemon.programs.http_proxy"

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def kind_of(self, request: pb.ApplyRequest) -> str:
        """Which of the four kinds ``request`` asks for (its ``http.kind``)."""
        if request.http.kind not in KINDS:
            raise InvalidArgument(f"http: kind must be one of {', '.join(KINDS.values())}; got {request.http.kind}")
        return KINDS[request.http.kind]

    def check(self, request: pb.ApplyRequest) -> dict[str, Any]:
        message = request.http
        try:
            rule = check_rule(message_rule(message))
        except RuleError as err:
            raise InvalidArgument(f"{self.kind}: {err.field}: {err.message}") from None
        action = self.kind.removeprefix("http-")
        if not (rule["abort"] if action == "abort" else rule["delay_s"] if action == "delay" else rule[action]):
            raise InvalidArgument(f"{self.kind}: {action} is required for this kind")
        return rule

    def program_args(self, params: dict[str, Any]) -> list[str]:
        return rule_argv(params)

    def side(self, params: dict[str, Any]) -> Side:
        return SIDES[params["side"]]


def _pairs(pairs: Any) -> list[list[str]]:
    return [[pair.name, pair.value] for pair in pairs]


def message_rule(message: pb.Http) -> dict[str, Any]:
    """The rule a message stands for, unchecked (``check_rule`` checks it); InvalidArgument for enum values that
    name nothing."""
    if message.target not in TARGETS:
        raise InvalidArgument(f"http: target must be one of {', '.join(TARGETS.values())}; got {message.target}")
    if message.side not in SIDE_NAMES:
        raise InvalidArgument(f"http: side must be one of {', '.join(SIDE_NAMES.values())}; got {message.side}")
    rule: dict[str, Any] = {
        "target": TARGETS[message.target], "side": SIDE_NAMES[message.side], "port": message.port,
        "request_headers": _pairs(message.request_headers), "response_headers": _pairs(message.response_headers),
        "abort": message.abort, "delay_s": message.delay.ToNanoseconds() / 1e9,
    }
    for key in ("path", "method", "code"):
        if message.HasField(key):
            rule[key] = getattr(message, key)
    if message.HasField("replace"):
        replace = message.replace
        section: dict[str, Any] = {"queries": _pairs(replace.queries), "headers": _pairs(replace.headers)}
        for key in ("path", "method", "code"):
            if replace.HasField(key):
                section[key] = getattr(replace, key)
        if replace.HasField("body"):
            section["body"] = base64.b64encode(replace.body).decode()
        rule["replace"] = section
    if message.HasField("patch"):
        patch = message.patch
        rule["patch"] = {"queries": _pairs(patch.queries), "headers": _pairs(patch.headers),
                         "body": {"type": "JSON", "value": patch.body_json} if patch.body_json else None}
    return rule


HTTP_FAULTS = tuple(Http(kind) for kind in KINDS.values())
