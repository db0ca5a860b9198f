"""A user's test suite, run by pytest with the plugin, as a user would run it: the one way the tests do it."""

from __future__ import annotations

import pytest


def run_suite(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    """Write ``source`` as the user's test module (test_user.py) and run ``pytest -p chaos *args`` on it, in a
    subprocess (the plugin starts threads and daemons a test process must not keep)."""
    pytester.makepyfile(test_user=source)
    return pytester.runpytest_subprocess("-p", "chaos", *args)
