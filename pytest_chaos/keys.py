"""Where the plugin keeps its state on pytest's objects (their stash), shared by the hooks and the fixture."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # the types only: what they name loads when a run has chaos tests
    from .backends import Backend
    from .embedded import EmbeddedDaemon
    from .model import Experiment, ExperimentSpec
    from .reported import ReportedExperiments
    from .session import ChaosSession


class Settings:
    """The run's seed, daemon call timeout and lease: read and checked at configure, whatever the run holds."""

    # A plain class: a dataclass costs a run without chaos tests a millisecond to define.
    def __init__(self, seed: int, timeout_s: float, lease_s: float) -> None:
        self.seed = seed
        self.timeout_s = timeout_s
        self.lease_s = lease_s


# On the config.
SETTINGS = pytest.StashKey[Settings]()
BACKEND: pytest.StashKey[Backend] = pytest.StashKey()  # present once the run is a chaos run (see plugin.activate)
SESSION: pytest.StashKey[ChaosSession] = pytest.StashKey()  # built with the first chaos marker or fixture
EMBEDDED: pytest.StashKey[EmbeddedDaemon] = pytest.StashKey()  # the local backend's own daemon, when it starts one
REPORTED: pytest.StashKey[ReportedExperiments] = pytest.StashKey()
HEADER_SHOWN = pytest.StashKey[bool]()
# On an item.
EXPERIMENTS: pytest.StashKey[list[Experiment]] = pytest.StashKey()  # every experiment of an item, for pytest-html
HTML_EXTRAS = pytest.StashKey[list[dict[str, Any]]]()  # what its row was given
SPECS: pytest.StashKey[list[ExperimentSpec]] = pytest.StashKey()  # an item's markers' experiments, built at collection
PHASE = pytest.StashKey[str]()
