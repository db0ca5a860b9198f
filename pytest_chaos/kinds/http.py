"""http-abort, http-delay, http-replace, http-patch: Chaos Mesh's HTTPChaos, for plain HTTP/1.1.

One rule, with Chaos Mesh's field names: what it selects (``target``
"Request" or "Response", ``port`` (required), ``path`` (a glob: ``*`` any run,
``?`` one character), ``method``, ``code`` (Response only),
``request_headers``, ``response_headers`` (Response only), as mappings) and
what it does. Each kind requires its own action and accepts the others, so
one rule may combine them as an HTTPChaos does; they apply in Chaos Mesh's
order, abort, then delay, then replace, then patch:

- ``abort``: the client's connection is closed without a response;
- ``delay``: a duration like "10s" or "250ms" (or seconds), up to 1h;
- ``replace``: ``path``, ``method``, ``queries`` (mapping; Request only),
  ``code`` (Response only), ``headers`` (mapping), ``body`` (text or bytes);
- ``patch``: ``queries`` (Request only) and ``headers`` as ``[[name, value], ...]``,
  appended; ``body`` ``{"type": "JSON", "value": "<merge patch>"}``.

``side`` is ours: "server" (default; the target serves ``port``, connections
to it are proxied) or "client" (the target's own connections to ``port``).
HTTPS (Chaos Mesh's ``tls``) is refused.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..api.http_rule import MAX_BODY, MAX_DELAY_S, RuleError, check_rule
from ..api.v1 import chaos_daemon_pb2 as pb
from ..errors import ChaosSpecError
from .applied import AppliedKind

PARAMETERS = ("target", "port", "path", "method", "code", "request_headers", "response_headers", "abort", "delay",
              "replace", "patch", "side", "tls")
TARGETS = {"Request": pb.Http.TARGET_REQUEST, "Response": pb.Http.TARGET_RESPONSE}
SIDES = {"server": pb.Http.SIDE_SERVER, "client": pb.Http.SIDE_CLIENT}
ACTIONS = {"abort": pb.Http.KIND_ABORT, "delay": pb.Http.KIND_DELAY, "replace": pb.Http.KIND_REPLACE,
           "patch": pb.Http.KIND_PATCH}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
TLS_REFUSED = ("HTTPS is not supported: the proxy would have to present a certificate the client trusts. "
               "The HTTP kinds apply to plain HTTP/1.1 only; leave tls out")


def delay_seconds(value: object) -> float:
    """Seconds from a Go-style duration ("10s", "1.5s", "250ms") or a number of seconds, up to MAX_DELAY_S."""
    if isinstance(value, bool):
        seconds = math.nan
    elif isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
        seconds = float(match.group(1)) * _SECONDS[match.group(2)] if match else math.nan
    if not 0 <= seconds <= MAX_DELAY_S:
        raise ChaosSpecError("delay", f"must be a duration like '10s', '250ms' or '1.5s' (or a number of seconds), "
                                      f"up to {MAX_DELAY_S / 3600:g}h; got {value!r}")
    return seconds


def body_bytes(value: object, field: str) -> bytes:
    """A replaced body: text (sent as UTF-8) or bytes."""
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes | bytearray) or len(value) > MAX_BODY:
        raise ChaosSpecError(field, f"must be text or bytes, at most {MAX_BODY} bytes; got {type(value).__name__}"
                                    f"{'' if not isinstance(value, bytes | bytearray) else f' of {len(value)} bytes'}")
    return bytes(value)


class Http(AppliedKind):
    """One of the four HTTPChaos kinds; ``action`` is the parameter it requires."""

    field = "http"
    parameters = PARAMETERS

    def __init__(self, name: str, action: str) -> None:
        self.name = name
        self.action = action

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        params = super().check_params(params)
        if "tls" in params:
            raise ChaosSpecError("tls", TLS_REFUSED)
        if self.action == "abort":
            if params.get("abort", True) is not True:
                raise ChaosSpecError("abort", f"kind {self.name!r} aborts: leave abort out or give true; got "
                                              f"{params['abort']!r}")
            params["abort"] = True
        elif params.get(self.action) is None:
            raise ChaosSpecError(self.action, f"is required for kind {self.name!r}: {_FORMS[self.action]}")
        rule: dict[str, Any] = {key: params[key] for key in ("target", "port", "path", "method", "code",
                                                            "request_headers", "response_headers", "abort", "side")
                                if key in params}
        if params.get("delay") is not None:
            rule["delay_s"] = delay_seconds(params["delay"])
        if params.get("replace") is not None:
            rule["replace"] = _replace(params["replace"])
        if params.get("patch") is not None:
            rule["patch"] = _patch(params["patch"])
        try:
            checked = check_rule(rule)
        except RuleError as err:
            raise ChaosSpecError("delay" if err.field == "delay_s" else err.field, err.message) from None
        if self.action == "delay" and not checked["delay_s"]:
            raise ChaosSpecError("delay", "must be above 0 for kind 'http-delay', like '2s'")
        if self.action in ("replace", "patch") and not checked[self.action]:
            raise ChaosSpecError(self.action, f"changes nothing: {_FORMS[self.action]}")
        return checked

    def message(self, params: Mapping[str, Any]) -> pb.Http:
        message = rule_message(params)
        message.kind = ACTIONS[self.action]
        return message


_FORMS = {
    "delay": "a duration like '10s' or '250ms'",
    "replace": "a dict of path, method, code, body, queries, headers, like {'code': 503}",
    "patch": "a dict of body ({'type': 'JSON', 'value': '{...}'}), queries and headers ([[name, value], ...])",
}


def _section(value: object, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ChaosSpecError(field, f"must be a dict: {_FORMS[field]}; got {value!r}")
    return dict(value)


def _replace(value: object) -> dict[str, Any]:
    replace = _section(value, "replace")
    if replace.get("body") is not None:
        replace["body"] = base64.b64encode(body_bytes(replace["body"], "replace.body")).decode()
    return replace


def _patch(value: object) -> dict[str, Any]:
    patch = _section(value, "patch")
    body = patch.get("body")
    if isinstance(body, Mapping) and not isinstance(body.get("value", ""), str):
        try:  # a value given as a dict or a list rather than JSON text
            body = {**body, "value": json.dumps(body["value"])}
        except (TypeError, ValueError):
            raise ChaosSpecError("patch.body.value", f"must be JSON text or a JSON-able value; got "
                                                     f"{body['value']!r}") from None
        patch["body"] = body
    return patch


def _pairs(pairs: Sequence[Sequence[str]]) -> list[pb.HttpPair]:
    return [pb.HttpPair(name=name, value=value) for name, value in pairs]


def rule_message(rule: Mapping[str, Any]) -> pb.Http:
    """The Http message for a checked rule (``http_rule.check_rule``'s form)."""
    message = pb.Http(target=TARGETS[rule["target"]], side=SIDES[rule["side"]], port=rule["port"],
                      request_headers=_pairs(rule["request_headers"]),
                      response_headers=_pairs(rule["response_headers"]), abort=rule["abort"])
    for key in ("path", "method", "code"):
        if rule[key] is not None:
            setattr(message, key, rule[key])
    if rule["delay_s"]:
        message.delay.FromNanoseconds(round(rule["delay_s"] * 1e9))
    if (replace := rule["replace"]) is not None:
        section = pb.HttpReplace(queries=_pairs(replace["queries"]), headers=_pairs(replace["headers"]))
        for key in ("path", "method", "code"):
            if replace[key] is not None:
                setattr(section, key, replace[key])
        if replace["body"] is not None:
            section.body = base64.b64decode(replace["body"])
        message.replace.CopyFrom(section)
    if (patch := rule["patch"]) is not None:
        message.patch.CopyFrom(pb.HttpPatch(body_json=patch["body"]["value"] if patch["body"] else "",
                                            queries=_pairs(patch["queries"]), headers=_pairs(patch["headers"])))
    return message


KINDS = (Http("http-abort", "abort"), Http("http-delay", "delay"), Http("http-replace", "replace"),
         Http("http-patch", "patch"))
