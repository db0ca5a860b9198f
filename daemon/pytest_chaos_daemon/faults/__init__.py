"""Fault kinds, one module per kind.

Every kind goes through ``Apply``: it implements ``base.Fault`` and is
registered here. HelloWorld (``helloworld.py``) also keeps an RPC of its own,
the tutorial's ExecHelloWorldChaos.
"""

from __future__ import annotations

from ..api.v1 import chaos_daemon_pb2 as pb
from .base import Fault, FaultContext, Output, Plan
from .container_kill import ContainerKill
from .container_pause import ContainerPause
from .dns import Dns
from .helloworld import HelloWorld
from .http import HTTP_FAULTS
from .network_bandwidth import NetworkBandwidth
from .network_emulation import NetworkEmulation, NetworkNetem
from .network_partition import NetworkPartition
from .process_kill import ProcessKill
from .stress import Stress
from .tcp_toxic import TCP_TOXICS
from .time_offset import TimeOffset

NETWORK_EMULATION = tuple(NetworkEmulation(f"network-{name}", f"network_{name}")
                          for name in ("loss", "delay", "duplicate", "corrupt"))
_ALL: tuple[Fault, ...] = (HelloWorld(), ContainerKill(), ContainerPause(), ProcessKill(), Stress(), NetworkPartition(),
                           *NETWORK_EMULATION, NetworkNetem(), NetworkBandwidth(), Dns(), TimeOffset(), *TCP_TOXICS,
                           *HTTP_FAULTS)
FAULTS: dict[str, Fault] = {fault.kind: fault for fault in _ALL}
# The ApplyRequest field that names each kind; kinds that share a field (the TCP toxics, the HTTP kinds) are told
# apart by
# ``fault_for``.
BY_FIELD: dict[str, Fault] = {fault.field: fault for fault in FAULTS.values()}


def fault_for(field: str, request: pb.ApplyRequest) -> Fault:
    """The kind an Apply request asks for: the one of ``field``, or, where several kinds share that field, the
    one its message names (``kind_of``); raises InvalidArgument when it names none."""
    fault = BY_FIELD[field]
    kind_of = getattr(fault, "kind_of", None)
    return FAULTS[kind_of(request)] if kind_of is not None else fault

__all__ = ["BY_FIELD", "FAULTS", "fault_for", "Fault", "FaultContext", "Output", "Plan"]
