"""Chaos Mesh's HelloWorldChaos tutorial, as a test. Against a cluster with the
chaos daemon deployed (kubectl apply -k daemon/deploy) and the tutorial's
workload applied (kubectl apply -f example_tests/kubernetes/manifests/busybox.yaml):

    pytest -p chaos --chaos-backend=kubernetes --chaos-kubeconfig=KUBECONFIG example_tests
"""

from __future__ import annotations

import pytest


@pytest.mark.chaos("helloworld", selector={"namespaces": ["busybox"]}, mode="all")
def test_both_busybox_pods_run_sleep_as_pid_1(chaos):
    [experiment] = chaos.experiments
    assert sorted(t.pod for t in experiment.targets) == ["busybox-0", "busybox-1"]
    for target in experiment.targets:
        assert target.namespace == "busybox" and target.container == "busybox" and target.node
        assert target.container_id.startswith("containerd://")
        assert [(p.pid, p.command) for p in target.processes] == [(1, "sleep 3600")]
