"""Turning marker and ``chaos.apply`` arguments into a validated ``ExperimentSpec``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .api.contract import MAX_LEASE_S
from .backends import Backend
from .errors import ChaosSpecError
from .kinds import KINDS
from .model import ExperimentSpec
from .modes import check_mode
from .quantities import finite_float

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
# From what the string form writes at least (below 1ns it would reach the daemon as 0: no duration at all) to
# the longest the daemon accepts.
MIN_DURATION_S, MAX_DURATION_S = 0.001, MAX_LEASE_S


def build_spec(backend: Backend, args: Sequence[Any], kwargs: Mapping[str, Any]) -> ExperimentSpec:
    """Validate ``chaos(kind, *, selector, mode, value, duration, container_names, **params)`` arguments."""
    if len(args) != 1:
        raise ChaosSpecError("kind", f"give exactly one fault kind as the first argument; accepted kinds: {', '.join(KINDS)}")
    kind_name = args[0]
    kind = KINDS.get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        raise ChaosSpecError("kind", f"unknown kind {kind_name!r}; accepted kinds: {', '.join(KINDS)}")
    if kind.backends and backend.name not in kind.backends:
        raise ChaosSpecError("kind", f"{kind_name!r} works with the {' and '.join(kind.backends)} backend only "
                                     f"(--chaos-backend={kind.backends[0]}); this run uses {backend.name}")
    kwargs = dict(kwargs)
    if "selector" not in kwargs:
        raise ChaosSpecError("selector", f"is required; the {backend.name} backend accepts: {', '.join(backend.selector_keys)}")
    selector = kwargs.pop("selector")
    if not isinstance(selector, Mapping):
        raise ChaosSpecError("selector", f"must be a dict; got {type(selector).__name__}")
    mode = kwargs.pop("mode", "one")
    value = check_mode(mode, kwargs.pop("value", None))
    duration = check_duration(kwargs.pop("duration", None))
    container_names = kwargs.pop("container_names", None)
    if container_names is not None:
        if isinstance(container_names, str) or not isinstance(container_names, Sequence) or not all(
            isinstance(n, str) and n for n in container_names
        ):
            raise ChaosSpecError("container_names", f"must be a list of container names; got {container_names!r}")
        container_names = tuple(container_names)
    if getattr(kind, "peer_selection", False) and "target" in kwargs:
        kwargs["target"] = check_peer_selection(backend, kwargs["target"])
    if getattr(kind, "requires_duration", False) and duration is None:
        raise ChaosSpecError("duration", f"is required for kind {kind_name!r}, as in Chaos Mesh: how long the fault "
                                         f"lasts at most, like '30s' (the test's teardown recovers it sooner)")
    params = kind.check_params(kwargs)
    checked_selector = backend.check_selector(selector, container_names)
    return ExperimentSpec(kind_name, checked_selector, mode, value, duration, container_names, params)


PEER_SELECTION_KEYS = ("selector", "mode", "value")


def check_peer_selection(backend: Backend, target: object) -> dict[str, Any]:
    """A network fault's ``target``: a second selection, as Chaos Mesh's ``{selector, mode, value}``."""
    if not isinstance(target, Mapping) or "selector" not in target:
        raise ChaosSpecError("target", f"must be a dict with a selector (and optionally mode and value), like "
                                       f"{{'selector': {{...}}, 'mode': 'all'}}; got {target!r}")
    unknown = sorted(map(str, set(target) - set(PEER_SELECTION_KEYS)))
    if unknown:
        raise ChaosSpecError(f"target.{unknown[0]}", f"unknown field; accepted: {', '.join(PEER_SELECTION_KEYS)}")
    selector = target["selector"]
    if not isinstance(selector, Mapping):
        raise ChaosSpecError("target.selector", f"must be a dict; got {type(selector).__name__}")
    mode = target.get("mode", "all")
    try:
        value = check_mode(mode, target.get("value"))
        checked = backend.check_selector(selector, None)
    except ChaosSpecError as err:
        raise ChaosSpecError(f"target.{err.field}", err.message) from None
    return {"selector": checked, "mode": mode, "value": value}


def check_duration(duration: object) -> float | None:
    """Seconds from a number or a string like "30s", "500ms", "5m", "1h", from 1ms to 24h."""
    if duration is None:
        return None
    seconds = finite_float(duration)
    if isinstance(duration, str) and (match := _DURATION.fullmatch(duration.strip())):
        # A number too long for a float is inf here, and out of range below.
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds is None or not MIN_DURATION_S <= seconds <= MAX_DURATION_S:
        raise ChaosSpecError("duration", f"must be from 1ms to {MAX_DURATION_S // 3600}h: a number of seconds or a "
                                         f"string like '30s', '500ms', '5m', '1h'; got {duration!r}")
    return seconds
