"""Fault kinds, one module per kind.

Every kind goes through ``Apply``: it implements ``base.Fault`` and is
registered here. HelloWorld (``helloworld.py``) also keeps an RPC of its own,
the tutorial's ExecHelloWorldChaos.
"""

from __future__ import annotations

from .base import Fault, FaultContext, Output, Plan
from .container_kill import ContainerKill
from .container_pause import ContainerPause
from .dns import Dns
from .helloworld import HelloWorld
from .network_bandwidth import NetworkBandwidth
from .network_emulation import NetworkEmulation, NetworkNetem
from .network_partition import NetworkPartition
from .process_kill import ProcessKill
from .stress import Stress
from .time_offset import TimeOffset

NETWORK_EMULATION = tuple(NetworkEmulation(f"network-{name}", f"network_{name}")
                          for name in ("loss", "delay", "duplicate", "corrupt"))
_ALL: tuple[Fault, ...] = (HelloWorld(), ContainerKill(), ContainerPause(), ProcessKill(), Stress(), NetworkPartition(),
                           *NETWORK_EMULATION, NetworkNetem(), NetworkBandwidth(), Dns(), TimeOffset())
FAULTS: dict[str, Fault] = {fault.kind: fault for fault in _ALL}
# The ApplyRequest field that names each kind.
BY_FIELD: dict[str, Fault] = {fault.field: fault for fault in FAULTS.values()}

__all__ = ["BY_FIELD", "FAULTS", "Fault", "FaultContext", "Output", "Plan"]
