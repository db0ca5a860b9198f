"""pytest-chaos: chaos experiments from pytest markers, applied by a per-node daemon.

The public interface is the ``chaos`` marker and fixture (see ``plugin.py``)
and the objects they hand a test, exported here. They load on first use:
pytest imports this package in every run of the environment, chaos tests or
not.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import ChaosError, ChaosSpecError
    from .fixture import ChaosFixture
    from .model import Experiment, ExperimentSpec, Process, Target

_EXPORTS = {
    "ChaosError": "errors", "ChaosSpecError": "errors", "ChaosFixture": "fixture",
    "Experiment": "model", "ExperimentSpec": "model", "Process": "model", "Target": "model",
}

__all__ = ["ChaosError", "ChaosFixture", "ChaosSpecError", "Experiment", "ExperimentSpec", "Process", "Target"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
