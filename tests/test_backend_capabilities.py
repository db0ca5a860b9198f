"""What a kind asks of a backend beyond selecting targets: pod-kill needs the pods' API."""

from __future__ import annotations

import pytest

from pytest_chaos.backends.kubernetes import KubernetesBackend
from pytest_chaos.backends.local import LocalBackend
from pytest_chaos.errors import ChaosError
from pytest_chaos.kinds import KINDS, InjectContext
from pytest_chaos.model import Target


def test_pod_kill_on_a_backend_without_pods_is_an_error_naming_the_kind_and_the_backend():
    backend = LocalBackend(lambda: "unix:///nonexistent/daemon.sock")
    target = Target("pid://1")
    context = InjectContext(None, backend, lease_s=30, duration_s=None, owner="test", targets=(target,))
    with pytest.raises(ChaosError, match="kind 'pod-kill' deletes pods, and the local backend's targets are not pods: "
                                         "use --chaos-backend=kubernetes"):
        KINDS["pod-kill"].inject(context, target, {"grace_period": 0})


def test_the_kubernetes_backend_offers_its_pods_api():
    backend = KubernetesBackend(kubeconfig="/nonexistent")  # nothing is contacted until a call
    assert backend.pod_api() is backend
    assert LocalBackend(lambda: "").pod_api() is None
