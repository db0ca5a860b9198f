"""network-corrupt: a share of the target's packets get one bit flipped, so the receiver drops them on
their checksum, as Chaos Mesh's NetworkChaos corrupt."""

from __future__ import annotations

from .network import PercentKind


class NetworkCorrupt(PercentKind):
    name = "network-corrupt"
    field = "network_corrupt"
    percent_field = "corrupt"
    what = "corrupted"
