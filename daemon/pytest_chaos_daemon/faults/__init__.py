"""Fault kinds, one module per kind.

HelloWorld (``helloworld.py``) has an RPC of its own. Every other kind goes
through ``Apply``: it implements ``base.Fault`` and is registered here.
"""

from __future__ import annotations

from .base import Fault, FaultContext, Plan
from .container_kill import ContainerKill
from .container_pause import ContainerPause
from .process_kill import ProcessKill
from .stress import Stress

FAULTS: dict[str, Fault] = {fault.kind: fault for fault in (ContainerKill(), ContainerPause(), ProcessKill(), Stress())}
# The ApplyRequest field that names each kind.
BY_FIELD: dict[str, Fault] = {fault.field: fault for fault in FAULTS.values()}

__all__ = ["BY_FIELD", "FAULTS", "Fault", "FaultContext", "Plan"]
