"""Shared fixtures: real targets for chaos experiments, started and removed by the tests.

Targets are real: a process as PID 1 of fresh mount and pid namespaces
(``unshare``), containerd containers (``ctr run`` on a busybox rootfs) and
Docker containers (``docker run`` of an image imported from the same rootfs).
``targets`` starts them for one test; ``module_targets`` for a module, which a
``@pytest.mark.chaos`` selector needs: module fixtures are set up before the
marker is applied, function fixtures after.

A target whose runtime is missing skips its test, except under CI (``CI``
set), where every runtime is .ci/run's job and a skip would hide a broken
install: there it fails.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import pytest

from tests.support.targets import Targets, make_busybox_rootfs


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_busybox_rootfs(tmp_path_factory.mktemp("busybox-rootfs"))


@pytest.fixture
def targets(busybox_rootfs: str) -> Iterator[Targets]:
    """Targets for one test, removed after it."""
    pool = Targets(busybox_rootfs)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def module_targets(busybox_rootfs: str) -> Iterator[Targets]:
    """Targets for a module, started before any chaos marker is applied."""
    pool = Targets(busybox_rootfs)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """The project's two wheels, built once per run from the working tree (tests/support/wheels.py)."""
    from tests.support.wheels import build_wheels

    return build_wheels(tmp_path_factory.mktemp("wheels"), tmp_path_factory.mktemp("source"))


_SESSION_START = pytest.StashKey[float]()


def pytest_sessionstart(session: pytest.Session) -> None:
    from tests.support.leftovers import boot_ticks_now

    session.config.stash[_SESSION_START] = boot_ticks_now()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The run fails if it left anything of its own behind (tests/support/leftovers.py).

    The sweep is machine-wide (every container in the tests' namespace, every orphan since the start): a
    second run at once on one machine sets PYTEST_CHAOS_LEFTOVER_SWEEP=0 so it does not remove the first's."""
    if os.environ.get("PYTEST_CHAOS_LEFTOVER_SWEEP") == "0":
        return
    if os.geteuid() != 0 or hasattr(session.config, "workerinput") or _SESSION_START not in session.config.stash:
        return
    from tests.support.leftovers import leftovers

    left = leftovers(session.config.stash[_SESSION_START])
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", "left behind by this run (now removed)", red=True)
            for line in left:
                reporter.write_line(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
