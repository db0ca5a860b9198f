"""One HTTPChaos rule, as the plugin, the daemon and the daemon's HTTP proxy program all check it.

A rule is a plain, JSON-able mapping (``check_rule`` gives the canonical form):
what it selects (``target``, ``port``, ``path``, ``method``, ``code``,
``request_headers``, ``response_headers``) and what it does to what it selects,
in Chaos Mesh's order: ``abort``, then ``delay_s``, then ``replace``, then
``patch``. Header and query pairs are lists of ``[name, value]``; a replaced
body is base64 text (so the rule stays JSON); a patch body is the JSON text of
an RFC 7396 merge patch. ``side`` is ours: "server" (the target serves
``port``) or "client" (the target's own connections to ``port``).

Standard library only: the plugin, the daemon and the proxy program import it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import string
from collections.abc import Mapping, Sequence
from typing import Any

TARGETS = ("Request", "Response")
SIDES = ("server", "client")
MAX_DELAY_S = 3600.0  # the longest delay a rule may add to one message
MAX_PAIRS = 64  # headers or queries in one selector or action
MAX_FIELD = 8 << 10  # characters in one header value, query value, path or glob
MAX_BODY = 64 << 10  # bytes of a replaced body and of a merge patch: they travel in the proxy's command line
MAX_PATCH_DEPTH = 32
REQUEST_ONLY = ("replace.path", "replace.method", "replace.queries", "patch.queries")
RESPONSE_ONLY = ("code", "response_headers", "replace.code")
FRAMING_HEADERS = ("content-length", "transfer-encoding")
_TCHAR = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")  # RFC 9110 5.6.2 token
_VISIBLE = frozenset(chr(c) for c in range(0x21, 0x7F))
_FIELD_VALUE = _VISIBLE | {" ", "\t"}  # RFC 9110 5.5 field-value, ASCII only


class RuleError(ValueError):
    """A rule field that cannot be used: ``field`` names it ("replace.code"), the message says what is accepted."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical form of ``rule`` (see the module's docstring); RuleError naming the first bad field."""
    known = {"target", "port", "path", "method", "code", "request_headers", "response_headers", "abort", "delay_s",
             "replace", "patch", "side"}
    unknown = sorted(map(str, set(rule) - known))
    if unknown:
        raise RuleError(unknown[0], f"is not a rule field; accepted: {', '.join(sorted(known))}")
    target = rule.get("target")
    if target not in TARGETS:
        raise RuleError("target", f"is required: one of {', '.join(TARGETS)}; got {target!r}")
    side = rule.get("side", "server")
    if side not in SIDES:
        raise RuleError("side", f"must be one of {', '.join(SIDES)}; got {side!r}")
    checked: dict[str, Any] = {
        "target": target,
        "side": side,
        "port": _port(rule.get("port")),
        "path": _optional(rule.get("path"), "path", _glob),
        "method": _optional(rule.get("method"), "method", _method),
        "code": _optional(rule.get("code"), "code", _code),
        "request_headers": _pairs(rule.get("request_headers"), "request_headers", _header_name),
        "response_headers": _pairs(rule.get("response_headers"), "response_headers", _header_name),
        "abort": _bool(rule.get("abort", False), "abort"),
        "delay_s": _delay(rule.get("delay_s", 0.0)),
        "replace": _replace(rule.get("replace")),
        "patch": _patch(rule.get("patch")),
    }
    if not (checked["abort"] or checked["delay_s"] or checked["replace"] or checked["patch"]):
        raise RuleError("abort", "the rule does nothing: give abort, delay, replace or patch")
    wrong = RESPONSE_ONLY if target == "Request" else REQUEST_ONLY
    for field in wrong:
        if _present(checked, field):
            raise RuleError(field, f"applies to target {'Response' if target == 'Request' else 'Request'} only, as in "
                                   f"Chaos Mesh; this rule's target is {target}")
    return checked


def glob_matches(pattern: str, text: str) -> bool:
    """Chaos Mesh's path glob (``wildmatch``): ``*`` any run of characters, ``/`` included, ``?`` exactly one;
    everything else literal, the whole text. Iterative, linear in the text times the pattern: no backtracking
    blow-up on a hostile path."""
    p = t = 0
    star, mark = -1, 0
    while t < len(text):
        if p < len(pattern) and (pattern[p] == "?" or pattern[p] == text[t]):
            p, t = p + 1, t + 1
        elif p < len(pattern) and pattern[p] == "*":
            star, mark = p, t
            p += 1
        elif star >= 0:
            p, mark = star + 1, mark + 1
            t = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch of ``target`` by ``patch`` (a new value; neither is changed)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def replace_body(rule: Mapping[str, Any]) -> bytes | None:
    """The body a checked rule's replace puts in place, if it replaces one."""
    replace = rule.get("replace") or {}
    body = replace.get("body")
    return None if body is None else base64.b64decode(body)


def _present(checked: Mapping[str, Any], field: str) -> bool:
    head, _, rest = field.partition(".")
    value = checked.get(head)
    if rest:
        value = (value or {}).get(rest)
    return value not in (None, [], {})


def _optional(value: Any, field: str, check: Any) -> Any:
    return None if value is None else check(value, field)


def _port(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise RuleError("port", f"is required: the TCP port the target serves, from 1 to 65535; got {value!r}")
    return value


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise RuleError(field, f"must be true or false; got {value!r}")
    return value


def _delay(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_DELAY_S \
            or math.isnan(value):
        raise RuleError("delay", f"must be a duration from 0 to {MAX_DELAY_S:g}s; got {value!r}")
    return float(value)


def _text(value: Any, field: str, allowed: frozenset[str], what: str, limit: int = MAX_FIELD) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or not set(value) <= allowed:
        raise RuleError(field, f"must be {what}, at most {limit} characters; got {_short(value)}")
    return value


def _glob(value: Any, field: str) -> str:
    return _text(value, field, _VISIBLE, "a path glob of visible ASCII characters ('*' any run, '?' one), "
                                         "like '/api/*'")


def _method(value: Any, field: str) -> str:
    return _text(value, field, _TCHAR, "an HTTP method, a token like 'GET' or 'DELETE' (case matters)", 32)


def _header_name(value: Any, field: str) -> str:
    return _text(value, field, _TCHAR, "a header name, a token like 'Content-Type'", 256)


def _action_header_name(value: Any, field: str) -> str:
    """A header an action sets: not one that frames the body, which the proxy keeps right itself."""
    name = _header_name(value, field)
    if name.lower() in FRAMING_HEADERS:
        raise RuleError(field, f"cannot set {name}: the proxy frames the body itself (Content-Length and "
                               f"Transfer-Encoding follow the body it sends)")
    return name


def _query_key(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_FIELD or "\x00" in value:
        raise RuleError(field, f"must be a non-empty string, at most {MAX_FIELD} characters; got {_short(value)}")
    return value


def _code(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 200 <= value <= 599:
        raise RuleError(field, f"must be an HTTP status code from 200 to 599; got {value!r}")
    return value


def _pairs(value: Any, field: str, check_name: Any, check_value: Any = None) -> list[list[str]]:
    """``[[name, value], ...]`` (or a mapping, taken in order), at most MAX_PAIRS."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        value = [[k, v] for k, v in value.items()]
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) > MAX_PAIRS:
        raise RuleError(field, f"must be a mapping or a list of [name, value] pairs, at most {MAX_PAIRS}; "
                               f"got {_short(value)}")
    pairs = []
    for index, pair in enumerate(value):
        where = f"{field}[{index}]"
        if isinstance(pair, str | bytes) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise RuleError(where, f"must be a [name, value] pair; got {_short(pair)}")
        name = check_name(pair[0], where)
        if check_value is not None:
            text = check_value(pair[1], where)
        elif not isinstance(pair[1], str) or len(pair[1]) > MAX_FIELD or not set(pair[1]) <= _FIELD_VALUE:
            raise RuleError(where, f"value must be a string of visible ASCII characters, spaces and tabs, at most "
                                   f"{MAX_FIELD}; got {_short(pair[1])}")
        else:
            text = pair[1]
        pairs.append([name, text])
    return pairs


def _query_value(value: Any, field: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_FIELD or "\x00" in value:
        raise RuleError(field, f"value must be a string, at most {MAX_FIELD} characters; got {_short(value)}")
    return value


def _section(value: Any, field: str, known: tuple[str, ...]) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise RuleError(field, f"must be a mapping of {', '.join(known)}; got {_short(value)}")
    unknown = sorted(map(str, set(value) - set(known)))
    if unknown:
        raise RuleError(f"{field}.{unknown[0]}", f"is not supported; supported: {', '.join(known)}")
    return value


def _replace(value: Any) -> dict[str, Any] | None:
    section = _section(value, "replace", ("path", "method", "code", "body", "queries", "headers"))
    if section is None:
        return None
    path = section.get("path")
    if path is not None:
        _text(path, "replace.path", _VISIBLE - {"?", "#"}, "a path starting with '/' (no '?' or '#')")
        if not path.startswith("/"):
            raise RuleError("replace.path", f"must start with '/'; got {_short(path)}")
    body = section.get("body")
    if body is not None:
        try:
            raw = base64.b64decode(body, validate=True) if isinstance(body, str) else None
        except (binascii.Error, ValueError):
            raw = None
        if raw is None or len(raw) > MAX_BODY:
            raise RuleError("replace.body", f"must be base64 text of at most {MAX_BODY} bytes; got {_short(body)}")
    checked = {
        "path": path,
        "method": _optional(section.get("method"), "replace.method", _method),
        "code": _optional(section.get("code"), "replace.code", _code),
        "body": body,
        "queries": _pairs(section.get("queries"), "replace.queries", _query_key, _query_value),
        "headers": _pairs(section.get("headers"), "replace.headers", _action_header_name),
    }
    return checked if any(v not in (None, []) for v in checked.values()) else None


def _patch(value: Any) -> dict[str, Any] | None:
    section = _section(value, "patch", ("body", "queries", "headers"))
    if section is None:
        return None
    body = section.get("body")
    if body is not None:
        body_section = _section(body, "patch.body", ("type", "value"))
        assert body_section is not None
        if body_section.get("type") != "JSON":
            raise RuleError("patch.body.type", f"must be JSON (an RFC 7396 merge patch), the only type Chaos Mesh "
                                               f"has; got {body_section.get('type')!r}")
        text = body_section.get("value")
        if not isinstance(text, str) or len(text.encode()) > MAX_BODY:
            raise RuleError("patch.body.value", f"must be JSON text of at most {MAX_BODY} bytes; got {_short(text)}")
        try:
            parsed = json.loads(text)
            _depth(parsed, 0)
        except (ValueError, RecursionError) as err:
            raise RuleError("patch.body.value", f"is not JSON: {err}") from None
        body = {"type": "JSON", "value": text}
    checked = {
        "body": body,
        "queries": _pairs(section.get("queries"), "patch.queries", _query_key, _query_value),
        "headers": _pairs(section.get("headers"), "patch.headers", _action_header_name),
    }
    return checked if any(v not in (None, []) for v in checked.values()) else None


def _depth(value: Any, level: int) -> None:
    if level > MAX_PATCH_DEPTH:
        raise ValueError(f"nested more than {MAX_PATCH_DEPTH} levels deep")
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        _depth(child, level + 1)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
