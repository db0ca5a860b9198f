"""Fault kinds, one module per kind, each implementing ``FaultKind``."""

from __future__ import annotations

from .base import FaultKind, InjectContext
from .container_kill import ContainerKill
from .container_pause import ContainerPause
from .helloworld import HelloWorld
from .pod_kill import PodKill
from .process_kill import ProcessKill
from .stress import Stress

KINDS: dict[str, FaultKind] = {kind.name: kind for kind in (HelloWorld(), ContainerPause(), ContainerKill(), ProcessKill(),
                                                          Stress(), PodKill())}

__all__ = ["KINDS", "FaultKind", "InjectContext"]
