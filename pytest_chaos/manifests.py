"""Chaos Mesh custom resources (``chaos-mesh.org/v1alpha1``) as experiments, field by field.

A manifest holds one or more YAML documents; each becomes the arguments of
one ``chaos(kind, selector=..., ...)`` call, validated as a marker's are.
Whatever this project does not support (a kind, an action, a field) is an
error naming the document and the field, with what is supported: never
silently dropped, since a chaos test whose chaos did not happen must not
pass. ``metadata.namespace`` scopes the selector, as in Chaos Mesh, when the
selector names no namespaces and no pods.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import yaml

from .backends import Backend
from .errors import ChaosSpecError
from .model import ExperimentSpec
from .spec import build_spec

API_VERSION = "chaos-mesh.org/v1alpha1"
COMMON = ("selector", "mode", "value", "duration")
# spec fields -> our argument names, per kind (after ``action`` picked the kind).
NETWORK_SCOPE = {"direction": "direction", "target": "target", "externalTargets": "external_targets",
                 "device": "device"}
NETWORK_ACTIONS = {
    "partition": ("network-partition", None),
    "loss": ("network-loss", "loss"),
    "delay": ("network-delay", "delay"),
    "duplicate": ("network-duplicate", "duplicate"),
    "corrupt": ("network-corrupt", "corrupt"),
    "bandwidth": ("network-bandwidth", "bandwidth"),
    "netem": ("network-netem", None),  # its sections: NETEM_SECTIONS
}
NETEM_SECTIONS = ("delay", "loss", "duplicate", "corrupt")
NETWORK_PARAMETERS = {
    "loss": {"loss": "loss", "correlation": "correlation"},
    "delay": {"latency": "latency", "jitter": "jitter", "correlation": "correlation", "reorder": "reorder"},
    "duplicate": {"duplicate": "duplicate", "correlation": "correlation"},
    "corrupt": {"corrupt": "corrupt", "correlation": "correlation"},
    "bandwidth": {"rate": "rate", "limit": "limit", "buffer": "buffer", "peakrate": "peakrate",
                  "minburst": "minburst"},
}
TARGET_FIELDS = ("selector", "mode", "value")
# Far above any Chaos Mesh resource, far below what could exhaust the stack or the memory.
MAX_MANIFEST_BYTES = 1 << 20  # a manifest's text, and each document with its aliases expanded
MAX_DOCUMENTS = 100
MAX_DEPTH = 32  # levels, the document itself the first: Chaos Mesh's deepest field is the 8th, managedFields' 14th
NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a Kubernetes namespace name (an RFC 1123 label)
MAX_SHOWN = 253  # characters of a document's kind and name in its label: the longest Kubernetes name


class Document:
    """One document of a manifest, where it came from, and the field each argument came from, for errors."""

    def __init__(self, body: Mapping[str, Any], label: str) -> None:
        self.body = body
        self.label = label
        # A chaos() argument -> the manifest field it came from: "grace_period" -> "spec.gracePeriod".
        self.fields = {name: f"spec.{name}" for name in COMMON}

    def error(self, field: str, message: str) -> ChaosSpecError:
        return ChaosSpecError(f"manifest {self.label}: {field}", message)

    def field(self, argument_field: str) -> str:
        """The manifest's path for a field an argument check named: "stressors.cpu.load" ->
        "spec.stressors.cpu.load", "latency" -> "spec.delay.latency"."""
        head, dot, rest = argument_field.partition(".")
        return self.fields[head] + dot + rest if head in self.fields else argument_field


def load(source: str | os.PathLike[str] | Mapping[str, Any], base_dir: str | os.PathLike[str] = ".") -> list[Document]:
    """The documents of a manifest: a mapping, YAML text, or a file (relative to ``base_dir``)."""
    if isinstance(source, Mapping):
        document = Document(source, _describe(source, "1"))
        _check_shape(document)
        return [document]
    if not isinstance(source, str | os.PathLike):
        raise ChaosSpecError("manifest", f"must be a file's path, YAML text or a mapping; got {type(source).__name__}")
    text, origin = _read(source, base_dir)
    if len(text) > MAX_MANIFEST_BYTES:
        raise ChaosSpecError(f"manifest {origin}", f"is larger than {MAX_MANIFEST_BYTES} bytes (1 MiB), the most a "
                                                   f"manifest may be")
    bodies = _parse(text, origin)
    if not bodies:
        raise ChaosSpecError(f"manifest {origin}", "holds no document")
    documents = []
    for number, body in enumerate(bodies, 1):
        if not isinstance(body, Mapping):
            raise ChaosSpecError(f"manifest {origin} document {number}", f"must be a mapping; got {type(body).__name__}")
        documents.append(Document(body, f"{origin} document {number} " + _describe(body, str(number))))
        _check_shape(documents[-1])
    return documents


def _read(source: str | os.PathLike[str], base_dir: str | os.PathLike[str]) -> tuple[str | bytes, str]:
    """YAML text (anything spanning lines), or a file's bytes (PyYAML reads their encoding): one byte more than
    a manifest may hold at most, so that /dev/zero is refused rather than read for ever."""
    text = os.fspath(source)
    if "\n" in text:
        return text, "(text)"
    path = os.path.join(base_dir, text)
    try:
        with open(path, "rb") as f:
            return f.read(MAX_MANIFEST_BYTES + 1), text
    except OSError as err:
        raise ChaosSpecError("manifest", f"cannot read {path}: {err.strerror}") from None
    except ValueError as err:  # a NUL in the path
        raise ChaosSpecError("manifest", f"cannot read {path!r}: {err}") from None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing nesting deeper than MAX_DEPTH as it composes: its composer recurses once
    per level, and 5,000 levels were a RecursionError."""

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _TooDeep(None, None, f"is nested more than {MAX_DEPTH} levels deep", self.get_mark())
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _TooDeep(yaml.MarkedYAMLError):
    pass


def _parse(text: str | bytes, origin: str) -> list[Any]:
    """The manifest's documents, empty ones left out; at most MAX_DOCUMENTS, each at most MAX_DEPTH deep."""
    bodies: list[Any] = []
    try:
        for count, body in enumerate(yaml.load_all(text, Loader=_Loader), 1):
            if count > MAX_DOCUMENTS:
                raise ChaosSpecError(f"manifest {origin}", f"holds more than {MAX_DOCUMENTS} documents, the most a "
                                                           f"manifest may hold")
            if body is not None:
                bodies.append(body)
    except _TooDeep as err:
        raise ChaosSpecError(f"manifest {origin} document {len(bodies) + 1}", f"{err.problem} ({_where(err)})") from None
    except yaml.YAMLError as err:
        raise ChaosSpecError(f"manifest {origin}", f"is not valid YAML: {err}") from None
    except ValueError as err:  # a scalar PyYAML cannot convert: an int of 5,000 digits, a 13th month
        raise ChaosSpecError(f"manifest {origin} document {len(bodies) + 1}", f"holds a value that cannot be "
                                                                               f"read: {err}") from None
    return bodies


def _where(err: yaml.MarkedYAMLError) -> str:
    mark = err.problem_mark
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "where it ends"


def _check_shape(document: Document) -> None:
    """The document's nesting depth and size, its aliases expanded, and that no value holds itself.

    YAML aliases can build all three from a small file (a "billion laughs", a mapping inside itself), and a
    mapping given in Python can be anything: checked before any field is read, so nothing after recurses
    without bound or puts a value of unbounded size in an error message. Each mapping and list is measured
    once (by identity), so this takes time in proportion to the document as written."""
    measured: dict[int, tuple[int, int]] = {}  # id -> (levels, size) of a mapping or list measured
    enclosing: set[int] = set()  # ids of the mappings and lists being measured

    def measure(value: object, path: tuple[object, ...]) -> tuple[int, int]:
        if len(path) >= MAX_DEPTH:
            raise document.error(_path(path), f"is nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, Mapping):
            children: Iterable[tuple[object, object]] = value.items()
        elif isinstance(value, list | tuple | set | frozenset):
            children = enumerate(value)
        else:
            return 1, 1 + _characters(value)
        if id(value) in enclosing:
            raise document.error(_path(path), "holds itself (through a YAML alias to a value around it)")
        if id(value) not in measured:
            enclosing.add(id(value))
            levels, size = 1, 1
            for key, child in children:
                child_levels, child_size = measure(child, (*path, key))
                levels, size = max(levels, 1 + child_levels), size + child_size
                if size > MAX_MANIFEST_BYTES:
                    raise document.error(_path(path), f"is larger than {MAX_MANIFEST_BYTES} bytes (1 MiB) with its "
                                                      f"YAML aliases expanded, the most a manifest may be")
            enclosing.discard(id(value))
            measured[id(value)] = levels, size
        levels, size = measured[id(value)]
        if len(path) + levels > MAX_DEPTH:  # met again deeper, through an alias
            raise document.error(_path(path), f"is nested more than {MAX_DEPTH} levels deep")
        return levels, size

    measure(document.body, ())


def _characters(scalar: object) -> int:
    """About how many characters ``scalar`` takes written out: a string's or an int's (YAML's may have 4,300
    digits, and an alias can repeat one); 0 for the others, whose repr is short."""
    if isinstance(scalar, str | bytes):
        return len(scalar)
    return scalar.bit_length() // 3 if isinstance(scalar, int) else 0


def _path(path: Sequence[object]) -> str:
    """A field's path as an error names it, like "spec.selector.pods[0]", each key cut to a bounded length."""
    text = "".join(f"[{key}]" if isinstance(key, int) and not isinstance(key, bool) else f".{str(key)[:MAX_SHOWN]}"
                   for key in path)
    return text.lstrip(".") or "(the document)"


def _describe(body: Mapping[str, Any], number: str) -> str:
    """The kind and name as written, "(PodChaos name)", when they are strings, cut to a bounded length."""
    metadata = body.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return f"({_shown(body.get('kind'), '?')} {_shown(name, '#' + number)})"


def _shown(value: object, default: str) -> str:
    if not isinstance(value, str) or not value:
        return default
    return value if len(value) <= MAX_SHOWN else value[:MAX_SHOWN] + "..."


def arguments(document: Document) -> tuple[str, dict[str, Any]]:
    """The kind and the ``chaos(...)`` arguments ``document`` stands for."""
    body = document.body
    unknown = sorted(map(str, set(body) - {"apiVersion", "kind", "metadata", "spec"}))
    if unknown:
        raise document.error(unknown[0], "unknown top-level field; accepted: apiVersion, kind, metadata, spec")
    if body.get("apiVersion") != API_VERSION:
        raise document.error("apiVersion", f"must be {API_VERSION!r}; got {body.get('apiVersion')!r}")
    kind = body.get("kind")
    if isinstance(kind, str) and kind in SCHEDULING:
        raise document.error("kind", f"{kind} is not supported: {SCHEDULING[kind]}; the kinds supported are "
                                     f"{', '.join(MAPPERS)}")
    if not isinstance(kind, str) or kind not in MAPPERS:
        raise document.error("kind", f"{kind!r} is not supported; supported: {', '.join(MAPPERS)}")
    spec = body.get("spec")
    if not isinstance(spec, Mapping):
        raise document.error("spec", "is required: a mapping")
    name, kwargs = MAPPERS[kind](document, spec)
    namespace = _namespace(document)
    _scope_to_namespace(kwargs, namespace)
    if isinstance(kwargs.get("target"), dict):
        _scope_to_namespace(kwargs["target"], namespace)
    return name, kwargs


def _namespace(document: Document) -> str | None:
    """``metadata.namespace``, if given, checked: one that could not be used must not be dropped, since the
    selector it scopes would then take every namespace."""
    metadata = document.body.get("metadata", {})
    if not isinstance(metadata, Mapping):
        raise document.error("metadata", f"must be a mapping (name, namespace, ...); got {metadata!r}")
    if not isinstance(metadata.get("name", ""), str):
        raise document.error("metadata.name", f"must be a string{_read_as(metadata['name'])}")
    if "namespace" not in metadata:
        return None
    namespace = metadata["namespace"]
    if not isinstance(namespace, str) or not NAMESPACE.fullmatch(namespace):
        raise document.error("metadata.namespace", f"must be a namespace name (lowercase letters, digits and '-', "
                                                   f"at most 63 characters){_read_as(namespace)}")
    return namespace


def _read_as(value: object) -> str:
    """The end of an error message: what was got, and what YAML made of an unquoted word or number."""
    if isinstance(value, bool | int | float) or value is None:
        what = "a boolean" if isinstance(value, bool) else "null" if value is None else "a number"
        return f"; got {value!r}, which YAML reads as {what}: quote it"
    return f"; got {value!r}"


def _scope_to_namespace(arguments: dict[str, Any], namespace: str | None) -> None:
    selector = arguments.get("selector")
    if namespace is not None and isinstance(selector, Mapping) and not {"namespaces", "pods"} & set(selector):
        arguments["selector"] = {**selector, "namespaces": [namespace]}


def _take(document: Document, spec: Mapping[str, Any], accepted: Mapping[str, str], prefix: str = "spec",
          record: bool = True) -> dict[str, Any]:
    """``spec``'s fields renamed by ``accepted``; any other field is an error naming it. With ``record``, the
    document remembers where each argument comes from, for the errors the argument checks raise."""
    unknown = sorted(map(str, set(spec) - set(accepted)))
    if unknown:
        raise document.error(f"{prefix}.{unknown[0]}", f"is not supported; supported: {', '.join(accepted)}")
    if record:
        document.fields.update({argument: f"{prefix}.{key}" for key, argument in accepted.items()})
    return {accepted[key]: value for key, value in spec.items()}


def _common(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    fields = {name: name for name in COMMON}
    return {**fields, **(extra or {})}


def _hello_world(document: Document, spec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    return "helloworld", _take(document, spec, _common({"containerNames": "container_names"}))


def _pod_chaos(document: Document, spec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    action = _action(document, spec, ("pod-kill", "pod-failure", "container-kill"))
    # pod-failure fails every container of the pod, as in Chaos Mesh: containerNames would change nothing.
    extra = {"action": "action", "gracePeriod": "grace_period"} if action == "pod-kill" else \
        {"action": "action"} if action == "pod-failure" else \
        {"action": "action", "containerNames": "container_names"}
    kwargs = _take(document, spec, _common(extra))
    kwargs.pop("action")
    return action, kwargs


def _stress_chaos(document: Document, spec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    kwargs = _take(document, spec, _common({"stressors": "stressors", "containerNames": "container_names"}))
    stressors = kwargs.get("stressors")
    if isinstance(stressors, Mapping):
        for name in ("cpu", "memory"):
            section = stressors.get(name)
            if isinstance(section, Mapping):
                accepted = {"workers": "workers", "load": "load", "options": "options"} if name == "cpu" else \
                    {"workers": "workers", "size": "size", "options": "options", "oomScoreAdj": "oom_score_adj"}
                stressors = {**stressors, name: _take(document, section, accepted, f"spec.stressors.{name}",
                                                      record=False)}
        kwargs["stressors"] = stressors
    return "stress", kwargs


def _network_chaos(document: Document, spec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    action = _action(document, spec, tuple(NETWORK_ACTIONS))
    name, section = NETWORK_ACTIONS[action]
    accepted = _common({"action": "action", **NETWORK_SCOPE})
    if section is not None:
        accepted[section] = section
    if action == "netem":
        accepted.update({name: name for name in NETEM_SECTIONS})
    kwargs = _take(document, spec, accepted)
    kwargs.pop("action")
    if action == "netem":
        for part in NETEM_SECTIONS:
            if isinstance(kwargs.get(part), Mapping):
                kwargs[part] = _take(document, kwargs[part], NETWORK_PARAMETERS[part], f"spec.{part}", record=False)
    if section is not None:
        parameters = kwargs.pop(section, None)
        if not isinstance(parameters, Mapping):
            raise document.error(f"spec.{section}", f"is required for action {action!r}: a mapping of "
                                                    f"{', '.join(NETWORK_PARAMETERS[section])}")
        kwargs.update(_take(document, parameters, NETWORK_PARAMETERS[section], f"spec.{section}"))
    if "target" in kwargs:
        target = kwargs["target"]
        if not isinstance(target, Mapping):
            raise document.error("spec.target", "must be a mapping with selector, mode and value")
        kwargs["target"] = _take(document, target, {field: field for field in TARGET_FIELDS}, "spec.target",
                                 record=False)  # its errors name "target.selector", ...: spec.target's own
    return name, kwargs


def _dns_chaos(document: Document, spec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    kwargs = _take(document, spec, _common({"action": "action", "patterns": "patterns",
                                            "containerNames": "container_names"}))
    return "dns", kwargs


def _time_chaos(document: Document, spec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    kwargs = _take(document, spec, _common({"timeOffset": "time_offset", "clockIds": "clock_ids",
                                            "containerNames": "container_names"}))
    return "time", kwargs


HTTP_FIELDS = ("target", "port", "path", "method", "code", "request_headers", "response_headers", "abort", "delay",
               "replace", "patch", "tls")


def _http_chaos(document: Document, spec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """HTTPChaos: the kind is its first action in Chaos Mesh's order (abort, delay, replace, patch); the rest go
    with it, as one rule. ``replace.body`` is base64 in Chaos Mesh's YAML (a Go []byte), or {type: TEXT, value}."""
    kwargs = _take(document, spec, _common({field: field for field in HTTP_FIELDS}))
    if "tls" in kwargs:
        raise document.error("spec.tls", "HTTPS is not supported (the HTTP kinds apply to plain HTTP/1.1 only); "
                                         "remove spec.tls")
    replace = kwargs.get("replace")
    if isinstance(replace, Mapping) and replace.get("body") is not None:
        kwargs["replace"] = {**replace, "body": _replace_body(document, replace["body"])}
    if kwargs.get("abort") is True:
        return "http-abort", kwargs
    for action in ("delay", "replace", "patch"):
        if kwargs.get(action) is not None:
            return f"http-{action}", kwargs
    raise document.error("spec.abort", "HTTPChaos needs an action: abort: true, delay, replace or patch")


def _replace_body(document: Document, body: object) -> bytes:
    if isinstance(body, Mapping):
        if body.get("type") != "TEXT" or not isinstance(body.get("value"), str) or set(body) - {"type", "value"}:
            raise document.error("spec.replace.body", f"must be base64 text, or {{type: TEXT, value: <text>}}; "
                                                      f"got {body!r}")
        return str(body["value"]).encode()
    try:
        if isinstance(body, str):
            return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        pass
    raise document.error("spec.replace.body", f"must be base64 text (Chaos Mesh's replace.body is a []byte), e.g. "
                                              f"eyJmb28iOiAiYmFyIn0K{_read_as(body)}")


def _action(document: Document, spec: Mapping[str, Any], supported: tuple[str, ...]) -> str:
    action = spec.get("action")
    if not isinstance(action, str) or action not in supported:
        raise document.error("spec.action", f"{action!r} is not supported; supported: {', '.join(supported)}")
    return str(action)


# Chaos Mesh's own scheduling: a chaos test is scheduled by pytest instead.
SCHEDULING = {
    "Schedule": "a chaos test applies its chaos itself, for the test's time: repeat it with "
                "@pytest.mark.parametrize (or pytest-repeat's --count) and a duration, instead of spec.schedule",
    "Workflow": "a chaos test orders its chaos itself: one marker per step (markers apply in order, all in force "
                "together, as a Parallel node), or chaos.apply / chaos.apply_manifest one after another in the "
                "test's body (a Serial node), and the test order for the rest",
}

MAPPERS: dict[str, Callable[[Document, Mapping[str, Any]], tuple[str, dict[str, Any]]]] = {
    "HelloWorldChaos": _hello_world,
    "PodChaos": _pod_chaos,
    "StressChaos": _stress_chaos,
    "NetworkChaos": _network_chaos,
    "DNSChaos": _dns_chaos,
    "TimeChaos": _time_chaos,
    "HTTPChaos": _http_chaos,
}


def manifest_specs(backend: Backend, source: str | os.PathLike[str] | Mapping[str, Any],
                   base_dir: str | os.PathLike[str] = ".") -> list[ExperimentSpec]:
    """One validated spec per document of ``source``, in order; errors name the document."""
    specs = []
    for document in load(source, base_dir):
        kind, kwargs = arguments(document)
        try:
            specs.append(build_spec(backend, (kind,), kwargs))
        except ChaosSpecError as err:
            field = document.field(err.field).replace(".oom_score_adj", ".oomScoreAdj")  # the manifest's name
            raise document.error(field, err.message) from None
    return specs
