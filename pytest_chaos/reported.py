"""Experiments as the run's reports carry them: the summary and timeline of tests run in other processes."""

from __future__ import annotations

import re
from typing import Any

import pytest

_SUMMARY_PROPERTY = re.compile(r"chaos\[\d+\]")


class ReportedExperiments:
    """Each test's outcome and final experiment summaries, from its reports (the JUnit properties travel with
    them), and with --chaos-report the experiments' timeline entries: for the terminal summary and the timeline
    of a run whose tests ran in other processes (pytest-xdist workers)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.outcomes: dict[str, str] = {}  # test id -> passed, failed, error (setup or teardown), skipped
        self.timeline: list[tuple[str, dict[str, Any]]] = []  # (test id, experiment_entry), from workers

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:
            self.outcomes[report.nodeid] = "failed" if report.when == "call" else "error"
        elif report.skipped and report.nodeid not in self.outcomes:
            self.outcomes[report.nodeid] = "skipped"
        elif report.when == "call" and report.passed:
            self.outcomes.setdefault(report.nodeid, "passed")
        if report.when == "teardown":
            self.lines += [(report.nodeid, str(value)) for name, value in report.user_properties
                           if _SUMMARY_PROPERTY.fullmatch(name)]
            self.timeline += [(report.nodeid, entry) for entry in getattr(report, "chaos_timeline", [])]
