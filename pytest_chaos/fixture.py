"""What the ``chaos`` fixture gives a test: its markers' experiments, and more applied from its body."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from . import keys
from .errors import ChaosError
from .kinds import KINDS
from .markers import markers_in_order
from .model import Experiment, ExperimentSpec
from .options import flag
from .reporting import SECTION_KEY, experiment_text, junit_properties, summary_text
from .session import ChaosSession


class ChaosFixture:
    """What the ``chaos`` fixture gives a test.

    ``experiments``: the experiments the test's markers applied, in marker
    order. ``apply(...)``: a context manager applying one more experiment.
    """

    def __init__(self, session: ChaosSession, item: pytest.Item) -> None:
        self._session = session
        self._item = item
        self.experiments: list[Experiment] = []
        self._count = 0
        self._numbers: dict[int, int] = {}  # id(experiment) -> its number in the report
        self._dry_run = flag(item.config, "chaos_dry_run")
        self._planned: list[Experiment] = []

    @contextlib.contextmanager
    def apply(
        self,
        kind: str,
        *,
        selector: Mapping[str, Any],
        mode: str = "one",
        value: float | int | str | None = None,
        duration: float | str | None = None,
        container_names: Sequence[str] | None = None,
        **params: Any,
    ) -> Iterator[Experiment]:
        """Apply ``kind`` to the targets ``selector`` and ``mode`` pick; recover on exit.

        Takes the marker's arguments. Raises ChaosSpecError for bad arguments
        and ChaosError when nothing is selected or the daemon fails.
        """
        arguments = {"selector": selector, "mode": mode, "value": value, "duration": duration,
                     "container_names": container_names, **params}
        spec = self._session.spec((kind,), arguments)
        experiment = self._apply(spec)
        self.skip_if_dry_run()
        try:
            yield experiment
        finally:
            self._recover(experiment)

    @contextlib.contextmanager
    def apply_manifest(self, source: str | os.PathLike[str] | Mapping[str, Any]) -> Iterator[list[Experiment]]:
        """Apply a Chaos Mesh manifest (a file relative to the test's, YAML text, or a mapping), one experiment
        per document in order; recover them in reverse on exit."""
        specs = self._session.specs((), {"manifest": source}, str(self._item.path.parent))
        with contextlib.ExitStack() as recoveries:  # each one runs, last applied first, even if one fails
            applied: list[Experiment] = []
            for spec in specs:
                applied.append(self._apply(spec))
                recoveries.callback(self._recover, applied[-1])
            self.skip_if_dry_run()
            yield applied

    def _apply(self, spec: ExperimentSpec) -> Experiment:
        self._count += 1
        number = self._count
        if self._dry_run:
            return self._plan(spec, number)
        try:
            experiment = self._session.apply(spec, self._item.nodeid, number)
            self._numbers[id(experiment)] = number
        except ChaosError as err:
            self._report(number, self._session.experiments[-1][1])
            raise ChaosError(f"chaos experiment {spec.describe()} could not be applied: {err}") from None
        self._report(number, experiment)
        return experiment

    def _plan(self, spec: ExperimentSpec, number: int) -> Experiment:
        """--chaos-dry-run: what the experiment would hit, reported; then the test is skipped."""
        try:
            experiment = self._session.plan(spec, self._item.nodeid, number)
        except ChaosError as err:
            self._report(number, self._session.experiments[-1][1])
            raise ChaosError(f"chaos experiment {spec.describe()} would select nothing: {err}") from None
        self._report(number, experiment)
        self._planned.append(experiment)
        return experiment

    def skip_if_dry_run(self) -> None:
        if self._planned:
            hits = "; ".join(f"{e.spec.describe()} -> {', '.join(t.describe() for t in e.targets)}"
                             for e in self._planned)
            pytest.skip(f"chaos dry run, nothing injected: {hits}")

    def _recover(self, experiment: Experiment) -> None:
        if experiment.outcome == "planned":
            return
        try:
            self._session.recover(experiment)
        finally:
            self._report_ending(experiment)

    def _report_ending(self, experiment: Experiment) -> None:
        """How it ended: the JUnit summary updated, and for a fault that stayed, a section for this phase."""
        number = self._numbers[id(experiment)]
        if KINDS[experiment.kind].recoverable:
            phase = self._item.stash.get(keys.PHASE, "teardown")
            self._item.add_report_section(phase, SECTION_KEY, summary_text(experiment) + "\n")
        summary_key = f"chaos[{number}]"
        properties = self._item.user_properties
        properties[:] = [(k, summary_text(experiment) if k == summary_key else v) for k, v in properties]

    def _report(self, number: int, experiment: Experiment) -> None:
        self._item.stash.setdefault(keys.EXPERIMENTS, []).append(experiment)
        phase = self._item.stash.get(keys.PHASE, "setup")
        self._item.add_report_section(phase, SECTION_KEY, experiment_text(experiment))
        self._item.user_properties.extend(junit_properties(number, experiment))

    def _apply_markers(self, request: pytest.FixtureRequest) -> None:
        specs = self._item.stash.get(keys.SPECS, None)
        if specs is None:  # an item collection did not see (one a plugin made later)
            specs = [spec for mark in markers_in_order(self._item)
                     for spec in self._session.specs(mark.args, dict(mark.kwargs), str(self._item.path.parent))]
        for spec in specs:
            experiment = self._apply(spec)
            self.experiments.append(experiment)
            # Registered per experiment: finalizers run in reverse, so recovery is too.
            request.addfinalizer(functools.partial(self._recover, experiment))
