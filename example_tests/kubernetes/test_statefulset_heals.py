"""The tutorial's StatefulSet keeps serving through faults, as an app team would test it:
a killed pod is replaced, and a paused replica comes back when the pause ends.

Against the same cluster and workload as test_tutorial.py.
"""

from __future__ import annotations

import time

import pytest

NAMESPACE = "busybox"


@pytest.fixture(scope="module")
def core(request):
    from kubernetes import client, config

    config.load_kube_config(config_file=request.config.getoption("chaos_kubeconfig") or None,
                            context=request.config.getoption("chaos_context") or None)
    return client.CoreV1Api()


def wait_ready(core, name: str, created_after: float, timeout: float = 120.0):
    """The pod ``name``, once a replacement created after ``created_after`` is Ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = {p.metadata.name: p for p in core.list_namespaced_pod(NAMESPACE).items}
        pod = pods.get(name)
        if (pod is not None and pod.metadata.creation_timestamp.timestamp() >= created_after - 1
                and pod.metadata.deletion_timestamp is None
                and any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))):
            return pod
        time.sleep(0.5)
    raise AssertionError(f"{NAMESPACE}/{name} was not replaced and Ready within {timeout:g}s")


@pytest.mark.chaos("pod-kill", selector={"namespaces": [NAMESPACE]}, mode="one")
def test_a_killed_replica_is_replaced(chaos, core):
    [experiment] = chaos.experiments
    [target] = experiment.targets
    replacement = wait_ready(core, target.pod, experiment.applied_at)
    assert replacement.status.container_statuses[0].container_id != target.container_id


@pytest.mark.chaos("container-pause", selector={"namespaces": [NAMESPACE]}, mode="one", duration="2s")
def test_a_paused_replica_comes_back(chaos):
    [experiment] = chaos.experiments
    deadline = time.monotonic() + 30
    while experiment.outcome == "applied" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert experiment.outcome == "expired", experiment.summary()
