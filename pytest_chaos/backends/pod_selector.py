"""Chaos Mesh's PodSelectorSpec: validating it and turning it into API queries and filters.

All fields are ANDed. ``labelSelectors`` and ``expressionSelectors`` become one
label selector and ``fieldSelectors`` a field selector, both applied by the API
server; annotations, phases and nodes are filtered here. ``pods`` names pods
outright, and then the other fields are ignored, as in Chaos Mesh.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ChaosSpecError
from .base import check_selector_keys

SELECTOR_KEYS = {
    "namespaces": "list of namespaces (default: all)",
    "labelSelectors": "{label: value} the pod's labels must match",
    "expressionSelectors": "[{key, operator: In|NotIn|Exists|DoesNotExist, values}]",
    "annotationSelectors": "{annotation: value} the pod's annotations must match",
    "fieldSelectors": "{field: value}, e.g. metadata.name, spec.nodeName, status.phase",
    "podPhaseSelectors": "phases to keep (Running, Pending, ...), or '!Phase' to exclude",
    "nodes": "node names the pod must run on",
    "nodeSelectors": "{label: value} of the nodes the pod must run on",
    "pods": "{namespace: [pod names]}: only these pods; other fields are ignored",
}
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")


def check_pod_selector(selector: Mapping[str, Any]) -> dict[str, Any]:
    """A validated copy of ``selector``; raises ChaosSpecError naming the bad field."""
    check_selector_keys(selector, SELECTOR_KEYS, "kubernetes")
    checked: dict[str, Any] = {}
    for key in ("namespaces", "nodes"):
        if key in selector:
            checked[key] = _string_list(selector[key], f"selector.{key}")
    for key in ("labelSelectors", "annotationSelectors", "fieldSelectors", "nodeSelectors"):
        if key in selector:
            checked[key] = _string_map(selector[key], f"selector.{key}")
    if "expressionSelectors" in selector:
        expressions = _list(selector["expressionSelectors"], "selector.expressionSelectors")
        checked["expressionSelectors"] = [_expression(e) for e in expressions]
    if "podPhaseSelectors" in selector:
        phases = _string_list(selector["podPhaseSelectors"], "selector.podPhaseSelectors")
        for phase in phases:
            if phase.removeprefix("!") not in PHASES:
                raise ChaosSpecError(
                    "selector.podPhaseSelectors",
                    f"unknown phase {phase!r}; accepted: {', '.join(PHASES)}, each optionally prefixed with '!'",
                )
        checked["podPhaseSelectors"] = phases
    if "pods" in selector:
        pods = selector["pods"]
        # Namespaces as strings: YAML reads an unquoted 123 or "on" as a number or a boolean.
        if not isinstance(pods, Mapping) or not pods or not all(isinstance(ns, str) and ns for ns in pods):
            raise ChaosSpecError("selector.pods", f"must be a non-empty {{namespace: [pod names]}} mapping, each "
                                                  f"namespace a string; got {pods!r}")
        checked["pods"] = {ns: _string_list(names, f"selector.pods[{ns!r}]") for ns, names in pods.items()}
    return checked


def label_selector(selector: Mapping[str, Any]) -> str:
    """labelSelectors and expressionSelectors as one Kubernetes label selector string."""
    terms = [f"{k}={v}" for k, v in selector.get("labelSelectors", {}).items()]
    for expression in selector.get("expressionSelectors", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "Exists":
            terms.append(key)
        elif operator == "DoesNotExist":
            terms.append(f"!{key}")
        else:
            terms.append(f"{key} {operator.lower()} ({','.join(values)})")
    return ",".join(terms)


def field_selector(selector: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in selector.get("fieldSelectors", {}).items())


def phase_matches(phase: str, wanted: Sequence[str]) -> bool:
    """Chaos Mesh's phase selector: plain entries form an allow list, '!X' entries deny X."""
    allowed = [p for p in wanted if not p.startswith("!")]
    denied = [p[1:] for p in wanted if p.startswith("!")]
    return (not allowed or phase in allowed) and phase not in denied


def annotations_match(annotations: Mapping[str, str] | None, wanted: Mapping[str, str]) -> bool:
    annotations = annotations or {}
    return all(annotations.get(k) == v for k, v in wanted.items())


def _expression(expression: Any) -> dict[str, Any]:
    field = "selector.expressionSelectors"
    if not isinstance(expression, Mapping) or "key" not in expression or "operator" not in expression:
        raise ChaosSpecError(field, f"each entry needs 'key' and 'operator' ({', '.join(OPERATORS)}); got {expression!r}")
    if not isinstance(expression["key"], str) or not expression["key"]:
        raise ChaosSpecError(field, f"each entry's 'key' must be a label name (a string); got {expression['key']!r}")
    operator = expression["operator"]
    if operator not in OPERATORS:
        raise ChaosSpecError(field, f"unknown operator {operator!r}; accepted: {', '.join(OPERATORS)}")
    values = expression.get("values") or []
    values = _string_list(values, field, allow_empty=True)
    if operator in ("In", "NotIn") and not values:
        raise ChaosSpecError(field, f"operator {operator} needs a non-empty 'values' list")
    if operator in ("Exists", "DoesNotExist") and values:
        raise ChaosSpecError(field, f"operator {operator} takes no 'values'")
    return {"key": expression["key"], "operator": operator, "values": values}


def _list(value: Any, field: str) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ChaosSpecError(field, f"must be a non-empty list; got {value!r}")
    return list(value)


def _string_list(value: Any, field: str, allow_empty: bool = False) -> list[str]:
    if allow_empty and isinstance(value, Sequence) and not isinstance(value, str) and not value:
        return []
    items = _list(value, field)
    if not all(isinstance(v, str) and v for v in items):
        raise ChaosSpecError(field, f"must be a list of non-empty strings; got {value!r}")
    return items


def _string_map(value: Any, field: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not value or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ChaosSpecError(field, f"must be a non-empty {{str: str}} mapping; got {value!r}")
    return dict(value)
