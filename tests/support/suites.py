"""A user's test suite, run by pytest with the plugin, as a user would run it: the one way the tests do it."""

from __future__ import annotations

import pytest


def run_suite(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    """Write ``source`` as the user's test module (test_user.py) and run ``pytest -p chaos *args`` on it, in a
    subprocess (the plugin starts threads and daemons a test process must not keep)."""
    pytester.makepyfile(test_user=source)
    return pytester.runpytest_subprocess("-p", "chaos", *args)


def collect_suite(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    """As ``run_suite``, but in this process, for a suite whose run must end at collection (a bad marker): the
    plugin starts nothing before its first chaos test runs, and a subprocess costs half a second per test.
    A marker the plugin wrongly accepted would run the test here: the source's test must touch nothing."""
    pytester.makepyfile(test_user=source)
    return pytester.runpytest_inprocess("-p", "chaos", *args)
