"""The pytest surface of pytest-chaos: options, the ``chaos`` marker and fixture, and hooks.

Loaded with ``pytest -p chaos``. The machinery lives in ``session.py``
(applying and recovering), ``backends/`` (finding targets), ``kinds/`` (fault
kinds), ``transport.py`` (gRPC) and ``reporting.py``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import re
from collections.abc import Generator, Iterator, Mapping, Sequence
from typing import Any

import pytest

from .api.contract import CONTAINERD_SOCKET, DOCKER_SOCKET
from .backends import BACKENDS, Backend
from .backends.kubernetes import ACCESS_MODES, DEFAULT_DAEMON_NAMESPACE, KubernetesBackend
from .backends.local import LocalBackend
from .embedded import EMBEDDED_STATE_DIR, EmbeddedDaemon
from .errors import ChaosError, ChaosSpecError
from .kinds import KINDS
from .model import Experiment, ExperimentSpec
from .modes import MODES
from .reporting import SECTION_KEY, experiment_text, html_extras, junit_properties, summary_text
from .session import DEFAULT_LEASE_S, ChaosSession
from .timeline import experiment_entry, write_timeline
from .transport import DEFAULT_RPC_TIMEOUT_S, ClientTls

MARKER_HELP = (
    "chaos(kind, *, selector, mode='one', value=None, duration=None, container_names=None, **params): "
    "apply a chaos experiment before the test runs and recover it after. "
    f"kinds: {', '.join(KINDS)}; modes: {', '.join(MODES)}. "
    "Or chaos(manifest='path.yaml'): Chaos Mesh resources (HelloWorldChaos, PodChaos, StressChaos, NetworkChaos, "
    "DNSChaos), one experiment per document, the path relative to the test file. "
    "Several markers apply top to bottom and recover in reverse. See the `chaos` fixture for results."
)
OPTIONS: list[tuple[str, dict[str, Any], str]] = [
    # (option, argparse kwargs, help)
    ("--chaos-backend", {"choices": BACKENDS}, "where targets come from. Default: local"),
    ("--chaos-daemon", {"metavar": "ADDRESS"},
     "use the chaos daemon already running at ADDRESS (unix:///PATH or HOST:PORT) instead of "
     "starting one on a private unix socket for this run"),
    ("--chaos-daemon-certs", {"metavar": "DIR"},
     "with --chaos-daemon over TCP: mutual TLS with the client certificate in DIR "
     "(ca.crt, client.crt, client.key, as pytest-chaos-daemon-certs writes them)"),
    # store_const, not store_true: an absent flag must be None, so the ini value applies.
    ("--chaos-daemon-insecure", {"action": "store_const", "const": "true"},
     "with --chaos-daemon=HOST:PORT: talk plaintext to a daemon started with --insecure (no mutual TLS); "
     "for trusted test machines only. Ini: true/1/yes"),
    ("--chaos-seed", {"metavar": "INT"},
     "seed for the random picks of modes one/fixed/fixed-percent/random-max-percent; the seed in use "
     "is printed in the header, so a run can be repeated. Default: a fresh random seed"),
    ("--chaos-timeout", {"metavar": "SECONDS"}, f"per-call timeout talking to a daemon. Default: {DEFAULT_RPC_TIMEOUT_S:g}"),
    ("--chaos-lease", {"metavar": "SECONDS"},
     "a daemon recovers a fault by itself when this run stops renewing it for this long (this run died, "
     f"say); renewed every third of it while the run lives. Default: {DEFAULT_LEASE_S:g}"),
    ("--chaos-report", {"metavar": "PATH"},
     "write the run's experiment timeline to PATH: one self-contained HTML page, a row per test and a bar per "
     "experiment from applied to recovered, its targets and output on click"),
    ("--chaos-dry-run", {"action": "store_const", "const": "true"},
     "select and report the targets each chaos experiment would hit, inject nothing, and skip its test "
     "(a test whose chaos did not happen must not pass). Ini: true/1/yes"),
    ("--chaos-containerd-socket", {"metavar": "PATH"},
     f"local backend, the daemon it starts: containerd's socket. Default: {CONTAINERD_SOCKET}"),
    ("--chaos-containerd-namespace", {"metavar": "NAMES"},
     "local backend, the daemon it starts: comma-separated containerd namespaces to select containers from. "
     "Default: all"),
    ("--chaos-docker-socket", {"metavar": "PATH"},
     f"local backend, the daemon it starts: Docker Engine's socket. Default: {DOCKER_SOCKET}"),
    ("--chaos-kubeconfig", {"metavar": "PATH"},
     "kubernetes backend: kubeconfig file. Default: $KUBECONFIG, then ~/.kube/config, then in-cluster"),
    ("--chaos-context", {"metavar": "NAME"}, "kubernetes backend: kubeconfig context. Default: the current one"),
    ("--chaos-daemon-namespace", {"metavar": "NAME"},
     f"kubernetes backend: namespace of the chaos daemon DaemonSet. Default: {DEFAULT_DAEMON_NAMESPACE}"),
    ("--chaos-daemon-access", {"choices": ACCESS_MODES},
     "kubernetes backend: reach each node's daemon at its pod IP (direct), through the API server "
     "(port-forward), or direct when routable and port-forward otherwise (auto). Default: auto"),
]
SESSION_KEY = pytest.StashKey[ChaosSession]()
EMBEDDED_KEY = pytest.StashKey[EmbeddedDaemon]()
# What the daemon the plugin starts is told about the container runtimes (with --chaos-daemon, that daemon's own).
RUNTIME_OPTIONS = ("chaos_containerd_socket", "chaos_containerd_namespace", "chaos_docker_socket")
EXPERIMENTS_KEY = pytest.StashKey[list[Experiment]]()  # every experiment of an item, for pytest-html
HTML_EXTRAS_KEY = pytest.StashKey[list[dict[str, Any]]]()  # what its row was given
SPECS_KEY = pytest.StashKey[list[ExperimentSpec]]()  # an item's markers' experiments, built at collection
PHASE_KEY = pytest.StashKey[str]()
# Summaries of experiments run elsewhere (pytest-xdist workers), from their reports: (test id, summary).
REPORTED_KEY = pytest.StashKey["ReportedExperiments"]()
_SUMMARY_PROPERTY = re.compile(r"chaos\[\d+\]")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chaos", "chaos experiments (pytest-chaos)")
    for option, kwargs, help_text in OPTIONS:
        name = option.removeprefix("--").replace("-", "_")
        group.addoption(option, dest=name, help=help_text, **kwargs)
        parser.addini(name, f"same as {option}: {help_text}")


def _option(config: pytest.Config, name: str, default: str) -> str:
    value = config.getoption(name)
    if value is None:
        value = config.getini(name) or default
    return str(value)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    try:
        # A pytest-xdist worker takes the controller's seed: one seed reproduces every worker's picks.
        worker_seed = getattr(config, "workerinput", {}).get("chaos_seed")
        seed = int(worker_seed if worker_seed is not None
                   else _option(config, "chaos_seed", str(random.SystemRandom().randrange(2**32))))
        timeout = float(_option(config, "chaos_timeout", str(DEFAULT_RPC_TIMEOUT_S)))
        lease = float(_option(config, "chaos_lease", str(DEFAULT_LEASE_S)))
    except ValueError as err:
        raise pytest.UsageError(f"--chaos-seed must be an integer, --chaos-timeout and --chaos-lease numbers: {err}") from None
    if not (0 < timeout <= 3600 and 1 <= lease <= 3600):
        raise pytest.UsageError("--chaos-timeout must be in (0, 3600] seconds and --chaos-lease in [1, 3600]")
    config.stash[SESSION_KEY] = ChaosSession(_backend(config), seed, timeout, lease)
    reported = ReportedExperiments()
    config.pluginmanager.register(reported, "chaos-reported-experiments")
    config.stash[REPORTED_KEY] = reported


def _backend(config: pytest.Config) -> Backend:
    name = _option(config, "chaos_backend", "local")
    if name not in BACKENDS:
        raise pytest.UsageError(f"--chaos-backend={name!r}: accepted backends: {', '.join(BACKENDS)}")
    external = _option(config, "chaos_daemon", "")
    if name == "kubernetes":
        if external:
            raise pytest.UsageError("--chaos-daemon applies to the local backend; the kubernetes backend "
                                    "finds the daemon on each target's node (see --chaos-daemon-namespace)")
        access = _option(config, "chaos_daemon_access", "auto")
        if access not in ACCESS_MODES:
            raise pytest.UsageError(f"chaos_daemon_access={access!r}: accepted: {', '.join(ACCESS_MODES)}")
        return KubernetesBackend(
            kubeconfig=_option(config, "chaos_kubeconfig", "") or None,
            context=_option(config, "chaos_context", "") or None,
            daemon_namespace=_option(config, "chaos_daemon_namespace", DEFAULT_DAEMON_NAMESPACE),
            access=access,
        )
    containerd_socket = _option(config, "chaos_containerd_socket", CONTAINERD_SOCKET)
    namespaces = [n for n in _option(config, "chaos_containerd_namespace", "*").split(",") if n]
    docker_socket = _option(config, "chaos_docker_socket", DOCKER_SOCKET)
    if external:
        if given := [f"--{o.replace('_', '-')}" for o in RUNTIME_OPTIONS if _option(config, o, "")]:
            raise pytest.UsageError(
                f"{', '.join(given)} configure the daemon the plugin starts; with --chaos-daemon={external}, "
                "that daemon lists and resolves containers with its own settings (pytest-chaos-daemon "
                "--containerd-socket, --containerd-namespace, --docker-socket)"
            )
        daemon_address = lambda: external  # noqa: E731
    else:
        # pid:// targets are the local backend's own: its daemon accepts them.
        embedded = EmbeddedDaemon(
            # No one restarts it: what is in force when it stops is recovered then.
            ["--allow-pid-targets", "--recover-on-exit", "--state-dir", EMBEDDED_STATE_DIR,
             "--containerd-socket", containerd_socket,
             "--docker-socket", docker_socket]
            + [arg for ns in namespaces for arg in ("--containerd-namespace", ns)]
        )
        config.stash[EMBEDDED_KEY] = embedded
        daemon_address = embedded.ensure_started
    certs = _option(config, "chaos_daemon_certs", "")
    if certs and not external:
        raise pytest.UsageError("--chaos-daemon-certs applies with --chaos-daemon (a daemon listening on TCP)")
    if external and not external.startswith("unix://") and not certs and not _insecure(config):
        raise pytest.UsageError(
            f"--chaos-daemon={external} is TCP, and TCP means mutual TLS: pass --chaos-daemon-certs=DIR "
            "(ca.crt, client.crt, client.key from pytest-chaos-daemon-certs), or --chaos-daemon-insecure "
            "to talk plaintext to a daemon started with --insecure on a trusted test machine"
        )
    runtimes = (f"the daemon at {external}" if external else
                f"containerd {containerd_socket} namespaces {','.join(namespaces)}; docker {docker_socket}")
    return LocalBackend(daemon_address, tls=_client_tls(certs), runtimes=runtimes)


def _insecure(config: pytest.Config) -> bool:
    return _flag(config, "chaos_daemon_insecure")


def _flag(config: pytest.Config, name: str) -> bool:
    value = _option(config, name, "false").strip().lower()
    if value not in ("true", "1", "yes", "false", "0", "no", ""):
        raise pytest.UsageError(f"{name}={value!r}: accepted: true/1/yes or false/0/no")
    return value in ("true", "1", "yes")


def _client_tls(directory: str) -> ClientTls | None:
    if not directory:
        return None
    try:
        read = {name: open(os.path.join(directory, name), "rb").read() for name in ("ca.crt", "client.crt", "client.key")}
    except OSError as err:
        raise pytest.UsageError(f"--chaos-daemon-certs={directory}: {err}") from None
    return ClientTls(cert=read["client.crt"], key=read["client.key"], ca=read["ca.crt"])


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.close()
    embedded = config.stash.get(EMBEDDED_KEY, None)
    if embedded is not None:
        embedded.stop()


def pytest_report_header(config: pytest.Config) -> str:
    session = config.stash[SESSION_KEY]
    header = f"chaos: seed={session.seed} backend={session.backend.describe()}"
    if session.backend.name == "local":
        header += " daemon=" + (_option(config, "chaos_daemon", "") or "started with the first chaos test (private unix socket)")
    if _flag(config, "chaos_dry_run"):
        header += " dry-run (nothing is injected; chaos tests are skipped)"
    return header


def pytest_itemcollected(item: pytest.Item) -> None:
    """At the first chaos test collected, start the local backend's daemon: it boots during collection."""
    embedded = item.config.stash.get(EMBEDDED_KEY, None)
    if embedded is None or item.config.option.collectonly or _flag(item.config, "chaos_dry_run"):
        return
    if item.get_closest_marker("chaos") is not None or "chaos" in getattr(item, "fixturenames", ()):
        embedded.start_soon()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Validate every chaos marker at collection, so a bad one fails the run before anything is injected."""
    session = config.stash[SESSION_KEY]
    problems = []
    # Markers repeat (a module's pytestmark, a parametrized test's): each distinct one is checked once.
    checked: dict[tuple[str, str, str], list[ExperimentSpec]] = {}
    for item in items:
        specs = []
        for mark in markers_in_order(item):
            key = (repr(mark.args), repr(mark.kwargs), str(item.path.parent))
            try:
                if key not in checked:
                    checked[key] = session.specs(mark.args, dict(mark.kwargs), key[2])
                specs += checked[key]
            except ChaosSpecError as err:
                problems.append(f"{item.nodeid}: @pytest.mark.chaos {err.field}: {err.message}")
        if specs:
            item.stash[SPECS_KEY] = specs  # what setup applies: checked once, here
    if problems:
        raise pytest.UsageError("invalid chaos marker(s):\n  " + "\n  ".join(problems))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    item.stash[PHASE_KEY] = "setup"
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    item.stash[PHASE_KEY] = "call"
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    item.stash[PHASE_KEY] = "teardown"
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                                             pytest.TestReport]:
    report = yield
    # A chaos failure is about the experiment, not the code: its message says
    # it all, a traceback through the plugin's frames would only bury it.
    if call.excinfo is not None and call.excinfo.errisinstance(ChaosError):
        report.longrepr = f"ChaosError: {call.excinfo.value}"
    if getattr(item.config.option, "htmlpath", None):
        _add_html_extras(item, report)
    if report.when == "teardown" and hasattr(item.config, "workerinput") and _option(item.config, "chaos_report", ""):
        # A pytest-xdist worker: the controller draws the timeline, and a report's plain attributes travel to it.
        report.chaos_timeline = [experiment_entry(e) for e in item.stash.get(EXPERIMENTS_KEY, [])]  # type: ignore[attr-defined]
    return report


def _add_html_extras(item: pytest.Item, report: pytest.TestReport) -> None:
    """pytest-html: the test's experiments on its row (the call's report, or setup's when setup failed).

    pytest-html renders a test's rows once its teardown is reported: the extras
    given with the row are brought up to date then, so a fault recovered in
    teardown shows as recovered. (Under xdist the row travels before teardown,
    and shows each experiment as it was during the test.)"""
    experiments = item.stash.get(EXPERIMENTS_KEY, [])
    given = item.stash.get(HTML_EXTRAS_KEY, None)
    if report.when == "teardown" and given is not None:
        for extra, now in zip(given, html_extras(experiments), strict=False):
            extra.update(now)  # the very dicts the row holds
    elif experiments and (report.when == "call" or report.failed):
        given = item.stash[HTML_EXTRAS_KEY] = html_extras(experiments)
        report.extras = [*getattr(report, "extras", []), *given]  # type: ignore[attr-defined]


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
        self._dry_run = _flag(item.config, "chaos_dry_run")
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
            phase = self._item.stash.get(PHASE_KEY, "teardown")
            self._item.add_report_section(phase, SECTION_KEY, summary_text(experiment) + "\n")
        summary_key = f"chaos[{number}]"
        properties = self._item.user_properties
        properties[:] = [(k, summary_text(experiment) if k == summary_key else v) for k, v in properties]

    def _report(self, number: int, experiment: Experiment) -> None:
        self._item.stash.setdefault(EXPERIMENTS_KEY, []).append(experiment)
        phase = self._item.stash.get(PHASE_KEY, "setup")
        self._item.add_report_section(phase, SECTION_KEY, experiment_text(experiment))
        self._item.user_properties.extend(junit_properties(number, experiment))

    def _apply_markers(self, request: pytest.FixtureRequest) -> None:
        specs = self._item.stash.get(SPECS_KEY, None)
        if specs is None:  # an item collection did not see (one a plugin made later)
            specs = [spec for mark in markers_in_order(self._item)
                     for spec in self._session.specs(mark.args, dict(mark.kwargs), str(self._item.path.parent))]
        for spec in specs:
            experiment = self._apply(spec)
            self.experiments.append(experiment)
            # Registered per experiment: finalizers run in reverse, so recovery is too.
            request.addfinalizer(functools.partial(self._recover, experiment))


def markers_in_order(item: pytest.Item) -> list[pytest.Mark]:
    """Chaos markers as a reader sees them: module and class ones first, then the
    test's own from top to bottom (decorators store them bottom-up)."""
    marks: list[pytest.Mark] = []
    for node in item.listchain():
        marks.extend(reversed([m for m in node.own_markers if m.name == "chaos"]))
    return marks


@pytest.fixture
def chaos(request: pytest.FixtureRequest) -> ChaosFixture:
    """Chaos experiments of this test: ``chaos.experiments`` (from markers) and ``chaos.apply(...)``."""
    fixture = ChaosFixture(request.config.stash[SESSION_KEY], request.node)
    fixture._apply_markers(request)
    fixture.skip_if_dry_run()
    return fixture


@pytest.fixture(autouse=True)
def _chaos_markers(request: pytest.FixtureRequest) -> None:
    """Applies a test's chaos markers even when the test does not ask for the fixture."""
    if request.node.get_closest_marker("chaos") is not None:
        request.getfixturevalue("chaos")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist, on the controller: hand the run's seed to each worker."""
    node.workerinput["chaos_seed"] = node.config.stash[SESSION_KEY].seed


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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        return
    lines = [(test_id, summary_text(experiment)) for test_id, experiment in session.experiments]
    reported = config.stash.get(REPORTED_KEY, None)
    lines = lines or (reported.lines if reported is not None else [])
    if not lines:
        return
    terminalreporter.write_sep("-", "chaos experiments")
    for test_id, summary in lines:
        terminalreporter.write_line(f"{test_id}: {summary}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    path = _option(config, "chaos_report", "")
    chaos = config.stash.get(SESSION_KEY, None)
    if not path or chaos is None or hasattr(config, "workerinput"):
        return
    reported = config.stash[REPORTED_KEY]
    entries = [(test_id, experiment_entry(experiment)) for test_id, experiment in chaos.experiments]
    write_timeline(path, entries or reported.timeline, reported.outcomes)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"chaos: experiment timeline written to {os.path.abspath(path)}")
