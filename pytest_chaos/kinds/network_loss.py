"""network-loss: a share of the target's packets is dropped, as Chaos Mesh's NetworkChaos loss."""

from __future__ import annotations

from .network import PercentKind


class NetworkLoss(PercentKind):
    name = "network-loss"
    field = "network_loss"
    percent_field = "loss"
    what = "dropped"
