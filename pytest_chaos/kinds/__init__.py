"""Fault kinds, one module per kind, each implementing ``FaultKind``."""

from __future__ import annotations

from .base import FaultKind, InjectContext
from .container_pause import ContainerPause
from .helloworld import HelloWorld

KINDS: dict[str, FaultKind] = {kind.name: kind for kind in (HelloWorld(), ContainerPause())}

__all__ = ["KINDS", "FaultKind", "InjectContext"]
