"""The ``chaos`` marker: its help, and reading an item's markers."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from .modes import MODES

NAME = "chaos"


def marker_help(kinds: Iterable[str] | None) -> str:
    """The marker's line in ``pytest --markers``; ``kinds``: the kind names to list (None: not listed)."""
    listed = f"kinds: {', '.join(kinds)}; " if kinds is not None else ""
    return (
        "chaos(kind, *, selector, mode='one', value=None, duration=None, container_names=None, **params): "
        "apply a chaos experiment before the test runs and recover it after. "
        f"{listed}modes: {', '.join(MODES)}. "
        "Or chaos(manifest='path.yaml'): Chaos Mesh resources (HelloWorldChaos, PodChaos, StressChaos, NetworkChaos, "
        "DNSChaos), one experiment per document, the path relative to the test file. "
        "Several markers apply top to bottom and recover in reverse. See the `chaos` fixture for results."
    )


def markers_in_order(item: pytest.Item) -> list[pytest.Mark]:
    """Chaos markers as a reader sees them: module and class ones first, then the
    test's own from top to bottom (decorators store them bottom-up)."""
    marks: list[pytest.Mark] = []
    for node in item.listchain():
        marks.extend(reversed([m for m in node.own_markers if m.name == NAME]))
    return marks


def is_marked(item: pytest.Item) -> bool:
    return item.get_closest_marker(NAME) is not None


def is_chaos_test(item: pytest.Item) -> bool:
    """A test with a chaos marker, or one that asks for the ``chaos`` fixture."""
    return is_marked(item) or NAME in getattr(item, "fixturenames", ())
