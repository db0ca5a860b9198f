"""stress: the daemon's stress-ng loads the target's CPU and memory until recovered, as Chaos Mesh's StressChaos.

stress-ng runs in the target's cgroups and pid namespace, so its load counts
against the target's limits; it is the daemon's own binary, run as nobody with
no capabilities (see ``pytest_chaos_daemon/faults/stress.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api.contract import (
    MAX_WORKERS,
    OOM_SCORE_ADJ_MAX,
    OOM_SCORE_ADJ_MIN,
    SIZE_FORMS,
    StressOptionError,
    stress_options,
    vm_bytes,
)
from ..api.v1 import chaos_daemon_pb2 as pb
from ..errors import ChaosSpecError
from .applied import AppliedKind

STRESSORS = {"cpu": ("workers", "load", "options"), "memory": ("workers", "size", "options", "oom_score_adj")}
EXAMPLE = "{'cpu': {'workers': 1, 'load': 50}, 'memory': {'workers': 1, 'size': '256MB'}}"


class Stress(AppliedKind):
    name = "stress"
    field = "stress"
    parameters = ("stressors",)

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        params = super().check_params(params)
        if "stressors" not in params:
            raise ChaosSpecError("stressors", f"is required: cpu and/or memory, e.g. {EXAMPLE}")
        stressors = params["stressors"]
        if not isinstance(stressors, Mapping) or not stressors:
            raise ChaosSpecError("stressors", f"must be a dict with cpu and/or memory, e.g. {EXAMPLE}; got {stressors!r}")
        unknown = sorted(map(str, set(stressors) - set(STRESSORS)))
        if unknown:
            raise ChaosSpecError(f"stressors.{unknown[0]}", f"unknown stressor; accepted: {', '.join(STRESSORS)}")
        checked: dict[str, Any] = {}
        if "cpu" in stressors:
            cpu = _section(stressors["cpu"], "cpu")
            load = cpu.get("load", 100)
            if not _is_int(load) or not 0 <= load <= 100:
                raise ChaosSpecError("stressors.cpu.load",
                                     f"must be an integer from 0 to 100 (percent of each worker's CPU); got {load!r}")
            checked["cpu"] = {"workers": _workers(cpu, "cpu"), "load": load, **_options(cpu, "cpu")}
        if "memory" in stressors:
            memory = _section(stressors["memory"], "memory")
            if "size" not in memory:
                raise ChaosSpecError("stressors.memory.size", "is required, e.g. '256MB', '1GB', '512KB' or '25%'")
            size = memory["size"]
            if not isinstance(size, str):
                raise ChaosSpecError("stressors.memory.size", f"must be a string, {SIZE_FORMS}; got {size!r}")
            try:
                vm_bytes(size)
            except ValueError as err:
                raise ChaosSpecError("stressors.memory.size", str(err)) from None
            checked["memory"] = {"workers": _workers(memory, "memory"), "size": size, **_options(memory, "memory")}
            if "oom_score_adj" in memory:
                adj = memory["oom_score_adj"]
                if not _is_int(adj) or not OOM_SCORE_ADJ_MIN <= adj <= OOM_SCORE_ADJ_MAX:
                    raise ChaosSpecError("stressors.memory.oom_score_adj",
                                         f"must be an integer from {OOM_SCORE_ADJ_MIN} to {OOM_SCORE_ADJ_MAX}, and "
                                         f"the daemon refuses one below the target's own; got {adj!r}")
                checked["memory"]["oom_score_adj"] = adj
        return {"stressors": checked}

    def message(self, params: Mapping[str, Any]) -> pb.Stress:
        stressors = params["stressors"]
        message = pb.Stress()
        if cpu := stressors.get("cpu"):
            message.cpu.CopyFrom(pb.Stress.Cpu(workers=cpu["workers"], load=cpu["load"], options=cpu.get("options", [])))
        if memory := stressors.get("memory"):
            message.memory.CopyFrom(pb.Stress.Memory(workers=memory["workers"], size=memory["size"],
                                                     options=memory.get("options", []),
                                                     oom_score_adj=memory.get("oom_score_adj")))
        return message


def _section(value: object, stressor: str) -> Mapping[str, Any]:
    accepted = STRESSORS[stressor]
    if not isinstance(value, Mapping):
        raise ChaosSpecError(f"stressors.{stressor}", f"must be a dict with {', '.join(accepted)}; got {value!r}")
    unknown = sorted(map(str, set(value) - set(accepted)))
    if unknown:
        raise ChaosSpecError(f"stressors.{stressor}.{unknown[0]}", f"unknown field; accepted: {', '.join(accepted)}")
    return value


def _options(section: Mapping[str, Any], stressor: str) -> dict[str, list[str]]:
    """The section's ``options``, checked against the daemon's allow-list; kept as written (the daemon builds
    stress-ng's argv from them itself)."""
    if "options" not in section:
        return {}
    options = section["options"]
    if isinstance(options, str) or not isinstance(options, list | tuple):
        raise ChaosSpecError(f"stressors.{stressor}.options", f"must be a list of stress-ng options, like "
                                                              f"['--cpu-method sqrt']; got {options!r}")
    try:
        stress_options(stressor, list(options))
    except StressOptionError as err:
        raise ChaosSpecError(f"stressors.{stressor}.options[{err.index}]", str(err)) from None
    return {"options": list(options)}


def _workers(section: Mapping[str, Any], stressor: str) -> int:
    workers = section.get("workers")
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= MAX_WORKERS:
        raise ChaosSpecError(f"stressors.{stressor}.workers",
                             f"is required: an integer from 1 to {MAX_WORKERS}; got {workers!r}")
    return workers


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
