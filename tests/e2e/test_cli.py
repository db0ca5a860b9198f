"""pytest-chaos, the operator's command, against the cluster's daemons."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pytest_chaos.session import ChaosSession

pytestmark = pytest.mark.usefixtures("workloads")


def pytest_chaos(kube, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_chaos.cli", *args, "--backend", "kubernetes",
                           "--kubeconfig", kube.kubeconfig], capture_output=True, text=True, timeout=120)


def test_status_lists_what_a_session_applied_and_recover_ends_it(kube):
    session = ChaosSession(kube.backend(), seed=1)
    try:
        spec = session.spec(("container-pause",), {"selector": {"pods": {"busybox": ["busybox-0"]}}, "mode": "all"})
        experiment = session.apply(spec, "tests/e2e/test_cli.py::operator")
        [target] = experiment.targets
        listed = pytest_chaos(kube, "status")
        assert listed.returncode == 0, listed.stderr
        [row] = [r for r in listed.stdout.splitlines() if target.injection_id in r]
        assert row.startswith(f"node {target.node} ") and "container-pause" in row and " active " in row
        assert "tests/e2e/test_cli.py::operator" in row
        recovered = pytest_chaos(kube, "recover", target.injection_id)
        assert recovered.returncode == 0, recovered.stderr
        assert f"{target.injection_id} container-pause {target.container_id}: recovered" in recovered.stdout
        # The session learns it ended elsewhere, and has nothing left to do.
        session.recover(experiment)
        assert "1 target" in experiment.summary() and experiment.outcome != "failed", experiment.summary()
        assert " active " not in "".join(r for r in pytest_chaos(kube, "status").stdout.splitlines()
                                         if target.injection_id in r)
    finally:
        session.close()
