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
from .network_netem import NetworkNetem
from .network_partition import NetworkPartition
from .pod_failure import PodFailure
from .pod_kill import PodKill
from .process_kill import ProcessKill
from .stress import Stress
from .tcp import TCP_TOXICS
from .time import Time

_ALL: tuple[FaultKind, ...] = (
    HelloWorld(), ContainerPause(), ContainerKill(), ProcessKill(), Stress(), PodKill(), NetworkPartition(),
    NetworkLoss(), NetworkDelay(), NetworkDuplicate(), NetworkCorrupt(), NetworkBandwidth(), NetworkNetem(), Dns(),
    Time(), PodFailure(), *TCP_TOXICS, *HTTP_KINDS)
KINDS: dict[str, FaultKind] = {kind.name: kind for kind in _ALL}

__all__ = ["KINDS", "FaultKind", "InjectContext"]
