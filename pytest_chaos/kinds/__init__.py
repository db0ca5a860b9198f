"""Fault kinds, one module per kind, each implementing ``FaultKind``."""

from __future__ import annotations

from .base import FaultKind, InjectContext
from .container_kill import ContainerKill
from .container_pause import ContainerPause
from .dns import Dns
from .helloworld import HelloWorld
from .http import KINDS as HTTP_KINDS
from .network_bandwidth import NetworkBandwidth
from .network_corrupt import NetworkCorrupt
from .network_delay import NetworkDelay
from .network_duplicate import NetworkDuplicate
from .network_loss import NetworkLoss
from .network_partition import NetworkPartition
from .pod_kill import PodKill
from .process_kill import ProcessKill
from .stress import Stress

KINDS: dict[str, FaultKind] = {kind.name: kind for kind in (
    HelloWorld(), ContainerPause(), ContainerKill(), ProcessKill(), Stress(), PodKill(), NetworkPartition(),
    NetworkLoss(), NetworkDelay(), NetworkDuplicate(), NetworkCorrupt(), NetworkBandwidth(), Dns(), *HTTP_KINDS)}

__all__ = ["KINDS", "FaultKind", "InjectContext"]
