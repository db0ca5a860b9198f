"""What chaos markers cost pytest's collection: 1,000 marked tests against the same 1,000 unmarked.

Both directories are collected with ``pytest --collect-only -q -p chaos``, so
the plugin is imported and configured in both; the marked tests carry
``@pytest.mark.chaos("helloworld", selector={"pids": [1]}, mode="all", source="proc")``,
which the plugin validates at collection (``pytest_collection_modifyitems``).
The runs alternate, the order flipping every round, so drift hits both alike.

What is timed, and why:

* The goal is judged on the collection phase alone, timed inside each pytest
  process from the ``pytest_collection`` hook to ``pytest_collection_finish``
  (module imports, marker evaluation, item creation and the plugin's
  validation, nothing else). A whole ``pytest --collect-only`` process also
  pays interpreter start-up, the imports of pytest, grpc and the plugin and
  the printing of 1,000 node ids, the same in both: most of a second that
  would only dilute the ratio towards 1. That process's wall clock is
  reported too, for what a user waits.
* The phase is timed in CPU seconds of the pytest process: collection is
  single-threaded computing, and on a shared machine its wall clock mostly
  measures the neighbours. Its wall clock is reported beside it.
* The ``pytest_collection_modifyitems`` hooks are timed on their own: the
  plugin's validation runs there, so the difference between the two
  directories there is the plugin's, the rest is pytest's own marker handling.
* Each sample is a fresh process, so every collection imports the test
  modules as a real run does: from the bytecode cache, which a dropped first
  round writes. The children get a cache of their own in the temporary
  directory (``PYTHONPYCACHEPREFIX``), written even where
  ``PYTHONDONTWRITEBYTECODE`` is set: without one, every run would compile
  and assertion-rewrite the test modules again, and the marked ones are
  longer source, a cost a user pays once per edit, not per run.

Run:  python3 -m benchmarks.collection_cost [--quick]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.report import Row, ms, run_main

TESTS = 1000
ROUNDS, QUICK_ROUNDS = 11, 3
FILES = 10
GOAL_RATIO = 1.1
TIMEOUT_S = 300
MARKER = '@pytest.mark.chaos("helloworld", selector={"pids": [1]}, mode="all", source="proc")\n'
PYTEST_ARGS = ["--collect-only", "-q", "-p", "chaos", "-p", "no:cacheprovider"]
# Runs in each measured pytest process: times the collection phase, then prints the figures as the last line.
CHILD = """
import json, sys, time
import pytest

class Timer:
    figures = {}

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session):
        self.start = (time.process_time(), time.perf_counter())

    @pytest.hookimpl(wrapper=True)
    def pytest_collection_modifyitems(self, session, config, items):
        start = time.process_time()
        try:
            return (yield)
        finally:
            self.figures["modify_cpu"] = time.process_time() - start

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_finish(self, session):
        self.figures["cpu"] = time.process_time() - self.start[0]
        self.figures["wall"] = time.perf_counter() - self.start[1]
        self.figures["items"] = len(session.items)

timer = Timer()
code = pytest.main(sys.argv[1:], plugins=[timer])
print(json.dumps(timer.figures))
sys.exit(int(code))
"""
FIGURES = ("cpu", "wall", "modify_cpu", "process")


def write_tests(directory: str, count: int, marker: str) -> None:
    os.makedirs(directory)
    with open(os.path.join(directory, "pytest.ini"), "w") as ini:  # the run's rootdir, whatever is above it
        ini.write("[pytest]\n")
    per_file = -(-count // FILES)
    for first in range(0, count, per_file):
        tests = "".join(f"\n\n{marker}def test_{n:04d}():\n    pass\n" for n in range(first, min(first + per_file, count)))
        with open(os.path.join(directory, f"test_collect_{first // per_file:02d}.py"), "w") as f:
            f.write("import pytest\n" + tests)


def child_env(pycache: str) -> dict[str, str]:
    """This environment, with bytecode cached in ``pycache`` (see the module's docstring)."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = pycache
    return env


def collect(directory: str, env: dict[str, str]) -> tuple[dict[str, float], subprocess.CompletedProcess[str]]:
    """The figures of one fresh ``pytest --collect-only`` (``process``: its wall seconds) and the process."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", CHILD, *PYTEST_ARGS, "."], cwd=directory, env=env,
                            capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    lines = result.stdout.strip().splitlines()
    try:
        figures: dict[str, float] = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise AssertionError(f"pytest --collect-only in {directory} printed no figures:\n"
                             f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}") from None
    figures["process"] = elapsed
    return figures, result


def check_validation_runs(work: str, env: dict[str, str]) -> None:
    """A bad marker fails collection: the timed runs did validate theirs."""
    bad = os.path.join(work, "bad")
    write_tests(bad, 1, MARKER.replace('"pids": [1]', '"pids": [-1]'))
    _, result = collect(bad, env)
    if result.returncode == 0 or "invalid chaos marker" not in result.stdout + result.stderr:
        raise AssertionError(f"an invalid chaos marker was not refused at collection:\n{result.stdout[-2000:]}\n"
                             f"{result.stderr[-2000:]}")


def rows(quick: bool) -> list[Row]:
    rounds = QUICK_ROUNDS if quick else ROUNDS
    work = tempfile.mkdtemp(prefix="bench-collection-")
    try:
        dirs = {"marked": os.path.join(work, "marked"), "unmarked": os.path.join(work, "unmarked")}
        write_tests(dirs["marked"], TESTS, MARKER)
        write_tests(dirs["unmarked"], TESTS, "")
        env = child_env(os.path.join(work, "pycache"))
        check_validation_runs(work, env)
        samples = {name: {figure: [] for figure in FIGURES} for name in dirs}
        for round_number in range(rounds + 1):  # the first round writes the bytecode caches and is dropped
            order = list(dirs) if round_number % 2 else list(reversed(dirs))
            for name in order:
                figures, result = collect(dirs[name], env)
                if result.returncode != 0 or figures.get("items") != TESTS:
                    raise AssertionError(f"{name}: collected {figures.get('items')} of {TESTS} (exit "
                                         f"{result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
                if round_number:
                    for figure in FIGURES:
                        samples[name][figure].append(figures[figure])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    marked, unmarked = ({figure: statistics.median(values) for figure, values in samples[name].items()}
                        for name in dirs)

    def versus(figure: str, what: str, goal: bool = False) -> Row:
        ratio = marked[figure] / unmarked[figure]
        return Row(what, ms(marked[figure]), f"unmarked {ms(unmarked[figure])}", ratio,
                   f"<= {GOAL_RATIO}x" if goal else "", ratio <= GOAL_RATIO if goal else None)

    plugin_us = (marked["modify_cpu"] - unmarked["modify_cpu"]) / TESTS * 1e6
    other_us = (marked["cpu"] - unmarked["cpu"]) / TESTS * 1e6 - plugin_us
    return [
        versus("cpu", f"collection of {TESTS:,} marked tests vs {TESTS:,} unmarked (CPU, median of {rounds})", goal=True),
        versus("wall", "  the same collection phase, wall clock"),
        versus("process", "  whole `pytest --collect-only -q -p chaos` process, wall clock"),
        versus("modify_cpu", "  of the phase: pytest_collection_modifyitems hooks (the plugin validates there)"),
        Row("  per marker: the plugin's validation / the rest (pytest's marker handling)",
            f"{plugin_us:.1f} us / {other_us:.1f} us"),
    ]


def main() -> int:
    return run_main(__doc__, "Collection cost of chaos markers, medians of interleaved fresh pytest processes", rows,
                    f"{QUICK_ROUNDS} rounds instead of {ROUNDS}")


if __name__ == "__main__":
    sys.exit(main())
