"""An app's test suite using pytest-chaos the way a user would.

The "app" here is a set of workloads this suite starts itself: a worker
process isolated in its own mount and pid namespaces, and "web" replicas as
containerd and Docker containers labeled ``app=example-web`` (a docker compose
service would be selected the same way, by ``com.docker.compose.service``).
Each test checks, from inside every target, that the target runs what it
should and nothing of the host. The ``targets`` and ``module_targets``
fixtures come from the repository's conftest.py.

Run: pytest -p chaos example_tests
"""

from __future__ import annotations

import os

import pytest

# "run" is this process's own: parallel runs (pytest-xdist workers) each select only what they started.
WEB = {"app": "example-web", "run": str(os.getpid())}


@pytest.fixture(scope="module")
def web_replicas(module_targets):
    """Three replicas of the web service: one in containerd, two in Docker."""
    return {
        f"containerd://{module_targets.containerd('sleep', '3600', labels=WEB)}",
        f"docker://{module_targets.docker('sleep', '3600', labels=WEB)}",
        f"docker://{module_targets.docker('sleep', '3600', labels=WEB)}",
    }


@pytest.mark.chaos("helloworld", selector={"labels": WEB}, mode="all")
def test_every_web_replica_runs_only_its_server(web_replicas, chaos):
    [experiment] = chaos.experiments
    assert {t.container_id for t in experiment.targets} == web_replicas
    for target in experiment.targets:
        assert target.pid > 0
        assert [(p.pid, p.command) for p in target.processes] == [(1, "sleep 3600")]


@pytest.mark.chaos("helloworld", selector={"labels": WEB}, mode="fixed", value=2)
def test_fixed_mode_picks_two_replicas(web_replicas, chaos):
    targets = chaos.experiments[0].targets
    assert len(targets) == 2
    assert {t.container_id for t in targets} <= web_replicas


@pytest.mark.chaos("helloworld", selector={"labels": WEB}, mode="one")
@pytest.mark.chaos("helloworld", selector={"labels": WEB}, mode="fixed-percent", value=100)
def test_markers_apply_in_order(web_replicas, chaos):
    one, every = chaos.experiments
    assert len(one.targets) == 1
    assert {t.container_id for t in every.targets} == web_replicas


def test_worker_process_is_pid_1_of_its_namespace(targets, chaos):
    worker = targets.process("sleep", "3600")
    with chaos.apply("helloworld", selector={"pids": [worker]}, mode="all") as experiment:
        [target] = experiment.targets
        assert target.container_id == f"pid://{worker}"
        assert target.pid == worker
        assert [(p.pid, p.user, p.command) for p in target.processes] == [(1, "root", "sleep 3600")]
        assert "sleep 3600" in target.output


def test_container_selected_by_name_at_run_time(targets, chaos):
    name = "example-cache"
    container_id = targets.docker("sleep", "1800", name=name)
    with chaos.apply("helloworld", selector={"containers": [name]}) as experiment:
        [target] = experiment.targets
        assert target.container_id == f"docker://{container_id}"
        assert target.name == name
        assert [p.command for p in target.processes] == ["sleep 1800"]
