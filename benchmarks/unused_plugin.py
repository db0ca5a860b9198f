"""What the installed plugin costs a run with no chaos test: 1,000 plain tests collected with it and without.

The plugin is auto-loaded by every pytest run of an environment it is
installed in (its ``pytest11`` entry point), chaos tests or not. Both runs
are ``pytest --collect-only -q`` of the same 1,000 unmarked tests: one as a
user's run is, the plugin auto-loaded (no ``-p``), the other with
``-p no:chaos``. Each sample is a fresh process, the two alternating and the
order flipping every round, the first round dropped (it writes the bytecode
caches, see ``collection_cost.child_env``). The goal is judged on the
processes' CPU time (user and system, from the kernel's accounting of
children): start-up and collection are single-threaded computing, and on a
shared machine wall clock mostly measures the neighbours; the wall clock is
reported beside it.

Also reported: what importing the plugin costs, from ``python -X importtime``
(the ``pytest_chaos.plugin`` line's cumulative figure), with pytest already
imported as in a pytest run, and alone.

Run:  python3 -m benchmarks.unused_plugin [--quick]
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a script: the repository root is the import root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.collection_cost import child_env, write_tests  # noqa: E402
from benchmarks.report import Row, ms, run_main  # noqa: E402

TESTS = 1000
ROUNDS, QUICK_ROUNDS = 9, 3
GOAL_RATIO = 1.02
TIMEOUT_S = 300
PYTEST_ARGS = ["-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "."]
RUNS = {"installed": [], "no:chaos": ["-p", "no:chaos"]}
IMPORTS = {"with pytest imported": "import pytest; import pytest_chaos.plugin", "alone": "import pytest_chaos.plugin"}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def collect(directory: str, extra: list[str], env: dict[str, str]) -> tuple[float, float]:
    """CPU and wall seconds of one fresh ``pytest --collect-only``; raises unless it collected every test."""
    cpu, start = children_cpu(), time.perf_counter()
    result = subprocess.run([sys.executable, *PYTEST_ARGS[:2], *extra, *PYTEST_ARGS[2:]], cwd=directory, env=env,
                            capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    wall, cpu = time.perf_counter() - start, children_cpu() - cpu
    if result.returncode != 0 or f"{TESTS} tests collected" not in result.stdout:
        raise AssertionError(f"pytest --collect-only {' '.join(extra)}: exit {result.returncode}, expected {TESTS} "
                             f"tests collected:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return cpu, wall


def check_plugin_loads(directory: str, env: dict[str, str]) -> None:
    """The 'installed' runs do load the plugin (its entry point), the others do not: else the ratio means nothing."""
    for extra, expected in (([], True), (["-p", "no:chaos"], False)):
        out = subprocess.run([sys.executable, "-m", "pytest", *extra, "--markers"], cwd=directory, env=env,
                             capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL).stdout
        if ("@pytest.mark.chaos(" in out) != expected:
            raise AssertionError(f"pytest {' '.join(extra)} --markers: the plugin was {'not ' * expected}loaded; "
                                 "is pytest-chaos installed (its pytest11 entry point)?")


def import_ms(code: str, env: dict[str, str]) -> float:
    """Milliseconds ``-X importtime`` gives the top-level ``pytest_chaos.plugin`` import (cumulative)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env, capture_output=True,
                            text=True, timeout=TIMEOUT_S, check=True)
    for line in result.stderr.splitlines():
        _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        if name == "pytest_chaos.plugin":  # unindented: the top-level import
            return int(cumulative) / 1000
    raise AssertionError(f"-X importtime printed no top-level pytest_chaos.plugin line:\n{result.stderr[-2000:]}")


def rows(quick: bool) -> list[Row]:
    rounds = QUICK_ROUNDS if quick else ROUNDS
    work = tempfile.mkdtemp(prefix="bench-unused-plugin-")
    try:
        directory = os.path.join(work, "plain")
        write_tests(directory, TESTS, "")
        env = child_env(os.path.join(work, "pycache"))
        env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)  # the plugin is auto-loaded, as in a user's environment
        env.pop("PYTEST_ADDOPTS", None)
        check_plugin_loads(directory, env)
        samples: dict[str, dict[str, list[float]]] = {name: {"cpu": [], "wall": []} for name in RUNS}
        for round_number in range(rounds + 1):  # the first round writes the bytecode caches and is dropped
            for name in list(RUNS) if round_number % 2 else reversed(list(RUNS)):
                cpu, wall = collect(directory, RUNS[name], env)
                if round_number:
                    samples[name]["cpu"].append(cpu)
                    samples[name]["wall"].append(wall)
        imports = {what: statistics.median(import_ms(code, env) for _ in range(rounds)) for what, code in IMPORTS.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {name: {figure: statistics.median(values) for figure, values in figures.items()}
              for name, figures in samples.items()}
    installed, without = median["installed"], median["no:chaos"]
    ratio = installed["cpu"] / without["cpu"]
    return [
        Row(f"`pytest --collect-only -q` of {TESTS:,} plain tests, plugin installed vs -p no:chaos "
            f"(process CPU, median of {rounds})", ms(installed["cpu"]), f"-p no:chaos {ms(without['cpu'])}", ratio,
            f"<= {GOAL_RATIO}x", ratio <= GOAL_RATIO),
        Row("  the same processes, wall clock", ms(installed["wall"]), f"-p no:chaos {ms(without['wall'])}",
            installed["wall"] / without["wall"]),
        *(Row(f"  `python -X importtime`: import pytest_chaos.plugin, {what} (cumulative, median of {rounds})",
              f"{value:.1f} ms") for what, value in imports.items()),
    ]


def main() -> int:
    return run_main(__doc__, "The installed plugin in a run without chaos tests, medians of interleaved fresh processes",
                    rows, f"{QUICK_ROUNDS} rounds instead of {ROUNDS}")


if __name__ == "__main__":
    sys.exit(main())
