"""The pytest surface of pytest-chaos: options, the ``chaos`` marker and fixture, and hooks.

Loaded with ``pytest -p chaos``, and by every pytest run of an environment the
plugin is installed in: so at import it loads nothing heavy, and a run pays for
chaos only once it is a chaos run (``activate``), when a chaos test is
collected or a chaos option is on the command line. The machinery lives in
``session.py`` (applying and recovering), ``fixture.py`` (what a test is
given), ``backends/`` (finding targets), ``kinds/`` (fault kinds),
``transport.py`` (gRPC) and ``reporting.py``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from . import keys
from .defaults import DEFAULT_LEASE_S, DEFAULT_RPC_TIMEOUT_S
from .errors import ChaosError
from .markers import is_chaos_test, is_marked, marker_help, markers_in_order
from .options import add_options, flag, given, option

if TYPE_CHECKING:
    from .fixture import ChaosFixture
    from .model import ExperimentSpec
    from .session import ChaosSession


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    kinds = None
    if config.option.markers:  # the kinds are listed where shown: listing them loads every kind
        from .kinds import KINDS

        kinds = list(KINDS)
    config.addinivalue_line("markers", marker_help(kinds))
    try:
        # A pytest-xdist worker takes the controller's seed: one seed reproduces every worker's picks.
        worker_seed = getattr(config, "workerinput", {}).get("chaos_seed")
        seed = int(worker_seed if worker_seed is not None
                   else option(config, "chaos_seed", str(random.SystemRandom().randrange(2**32))))
        timeout = float(option(config, "chaos_timeout", str(DEFAULT_RPC_TIMEOUT_S)))
        lease = float(option(config, "chaos_lease", str(DEFAULT_LEASE_S)))
    except ValueError as err:
        raise pytest.UsageError(f"--chaos-seed must be an integer, --chaos-timeout and --chaos-lease numbers: {err}") from None
    if not (0 < timeout <= 3600 and 1 <= lease <= 3600):
        raise pytest.UsageError("--chaos-timeout must be in (0, 3600] seconds and --chaos-lease in [1, 3600]")
    config.stash[keys.SETTINGS] = keys.Settings(seed, timeout, lease)
    if given(config):
        activate(config)


def activate(config: pytest.Config) -> None:
    """Make this run a chaos run: build the backend (its options checked), report experiments, show the header.

    Until then the plugin costs a run next to nothing: no gRPC, no header, no hook doing work per test."""
    if keys.BACKEND in config.stash:
        return
    from .backends.config import from_config
    from .reported import ReportedExperiments

    config.stash[keys.BACKEND] = from_config(config)
    reported = ReportedExperiments()
    config.pluginmanager.register(reported, "chaos-reported-experiments")
    config.stash[keys.REPORTED] = reported


def chaos_session(config: pytest.Config) -> ChaosSession:
    """The run's session, built on first use: a chaos marker to check, or a chaos test to set up."""
    session = config.stash.get(keys.SESSION, None)
    if session is None:
        activate(config)
        from .session import ChaosSession

        settings = config.stash[keys.SETTINGS]
        session = config.stash[keys.SESSION] = ChaosSession(config.stash[keys.BACKEND], settings.seed,
                                                            settings.timeout_s, settings.lease_s)
    return session


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(keys.SESSION, None)
    if session is not None:
        session.close()
    embedded = config.stash.get(keys.EMBEDDED, None)
    if embedded is not None:
        embedded.stop()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    # A pytest-xdist controller collects nothing: its workers do, with its seed, which its header must show.
    if session.config.pluginmanager.has_plugin("dsession"):
        activate(session.config)


def _header(config: pytest.Config) -> str:
    config.stash[keys.HEADER_SHOWN] = True
    backend = config.stash[keys.BACKEND]
    header = f"chaos: seed={config.stash[keys.SETTINGS].seed} backend={backend.describe()}"
    if backend.name == "local":
        header += " daemon=" + (option(config, "chaos_daemon", "") or "started with the first chaos test (private unix socket)")
    if flag(config, "chaos_dry_run"):
        header += " dry-run (nothing is injected; chaos tests are skipped)"
    return header


def pytest_report_header(config: pytest.Config) -> str | None:
    return _header(config) if keys.BACKEND in config.stash else None


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> str | None:
    """A run that became a chaos run at collection: the header, after the collection's line."""
    if keys.BACKEND not in config.stash or keys.HEADER_SHOWN in config.stash:
        return None
    if config.option.verbose < 0 or config.option.no_header:  # as pytest's own header
        return None
    return _header(config)


def pytest_itemcollected(item: pytest.Item) -> None:
    """A chaos test makes the run a chaos run; at the first, the local backend's daemon starts booting."""
    if not is_chaos_test(item):
        return
    config = item.config
    activate(config)
    if is_marked(item) and isinstance(item, pytest.Function):
        _use_chaos_fixture(item)
    embedded = config.stash.get(keys.EMBEDDED, None)
    if embedded is not None and not config.option.collectonly and not flag(config, "chaos_dry_run"):
        embedded.start_soon()


def _use_chaos_fixture(item: pytest.Function) -> None:
    """A marked test sets up the ``chaos`` fixture, which applies its markers, whether or not it asks for it.

    Placed where pytest would place it had the test asked for it first: after the fixtures of a wider scope (a
    module's targets, say), before the test's other fixtures. Per item: parametrized items share their list."""
    names = item.fixturenames
    if "chaos" in names:
        return
    definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    at = next((i for i, name in enumerate(names) if name in definitions and definitions[name][-1].scope == "function"),
              len(names))
    item.fixturenames = [*names[:at], "chaos", *names[at:]]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Validate every chaos marker at collection, so a bad one fails the run before anything is injected."""
    if keys.BACKEND not in config.stash:
        return  # no chaos test collected, no chaos option given
    from .errors import ChaosSpecError

    problems = []
    # Markers repeat (a module's pytestmark, a parametrized test's): each distinct one is checked once.
    checked: dict[tuple[str, str, str], list[ExperimentSpec]] = {}
    for item in items:
        specs = []
        for mark in markers_in_order(item):
            key = (repr(mark.args), repr(mark.kwargs), str(item.path.parent))
            try:
                if key not in checked:
                    checked[key] = chaos_session(config).specs(mark.args, dict(mark.kwargs), key[2])
                specs += checked[key]
            except ChaosSpecError as err:
                problems.append(f"{item.nodeid}: @pytest.mark.chaos {err.field}: {err.message}")
        if specs:
            item.stash[keys.SPECS] = specs  # what setup applies: checked once, here
    if problems:
        raise pytest.UsageError("invalid chaos marker(s):\n  " + "\n  ".join(problems))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    item.stash[keys.PHASE] = "setup"
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    item.stash[keys.PHASE] = "call"
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    item.stash[keys.PHASE] = "teardown"
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                                             pytest.TestReport]:
    report = yield
    if keys.BACKEND not in item.config.stash:
        return report
    # A chaos failure is about the experiment, not the code: its message says
    # it all, a traceback through the plugin's frames would only bury it.
    if call.excinfo is not None and call.excinfo.errisinstance(ChaosError):
        report.longrepr = f"ChaosError: {call.excinfo.value}"
    if getattr(item.config.option, "htmlpath", None):
        _add_html_extras(item, report)
    if report.when == "teardown" and hasattr(item.config, "workerinput") and option(item.config, "chaos_report", ""):
        from .timeline import experiment_entry

        # A pytest-xdist worker: the controller draws the timeline, and a report's plain attributes travel to it.
        report.chaos_timeline = [experiment_entry(e) for e in item.stash.get(keys.EXPERIMENTS, [])]  # type: ignore[attr-defined]
    return report


def _add_html_extras(item: pytest.Item, report: pytest.TestReport) -> None:
    """pytest-html: the test's experiments on its row (the call's report, or setup's when setup failed).

    pytest-html renders a test's rows once its teardown is reported: the extras
    given with the row are brought up to date then, so a fault recovered in
    teardown shows as recovered. (Under xdist the row travels before teardown,
    and shows each experiment as it was during the test.)"""
    from .reporting import html_extras

    experiments = item.stash.get(keys.EXPERIMENTS, [])
    given = item.stash.get(keys.HTML_EXTRAS, None)
    if report.when == "teardown" and given is not None:
        for extra, now in zip(given, html_extras(experiments), strict=False):
            extra.update(now)  # the very dicts the row holds
    elif experiments and (report.when == "call" or report.failed):
        given = item.stash[keys.HTML_EXTRAS] = html_extras(experiments)
        report.extras = [*getattr(report, "extras", []), *given]  # type: ignore[attr-defined]


@pytest.fixture
def chaos(request: pytest.FixtureRequest) -> ChaosFixture:
    """Chaos experiments of this test: ``chaos.experiments`` (from markers) and ``chaos.apply(...)``."""
    from .fixture import ChaosFixture

    fixture = ChaosFixture(chaos_session(request.config), request.node)
    fixture._apply_markers(request)
    fixture.skip_if_dry_run()
    return fixture


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist, on the controller: hand the run's seed to each worker."""
    node.workerinput["chaos_seed"] = node.config.stash[keys.SETTINGS].seed


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    reported = config.stash.get(keys.REPORTED, None)
    if reported is None:
        return
    session = config.stash.get(keys.SESSION, None)
    lines: list[tuple[str, str]] = []
    if session is not None:
        from .reporting import summary_text

        lines = [(test_id, summary_text(experiment)) for test_id, experiment in session.experiments]
    lines = lines or reported.lines
    if not lines:
        return
    terminalreporter.write_sep("-", "chaos experiments")
    for test_id, summary in lines:
        terminalreporter.write_line(f"{test_id}: {summary}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    path = option(config, "chaos_report", "")
    reported = config.stash.get(keys.REPORTED, None)
    if not path or reported is None or hasattr(config, "workerinput"):
        return
    from .timeline import experiment_entry, write_timeline

    chaos = config.stash.get(keys.SESSION, None)
    entries = [(test_id, experiment_entry(experiment)) for test_id, experiment in (chaos.experiments if chaos else [])]
    write_timeline(path, entries or reported.timeline, reported.outcomes)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"chaos: experiment timeline written to {os.path.abspath(path)}")
