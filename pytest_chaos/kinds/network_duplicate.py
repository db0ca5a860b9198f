"""network-duplicate: a share of the target's packets is sent twice, as Chaos Mesh's NetworkChaos duplicate."""

from __future__ import annotations

from .network import PercentKind


class NetworkDuplicate(PercentKind):
    name = "network-duplicate"
    field = "network_duplicate"
    percent_field = "duplicate"
    what = "sent twice"
