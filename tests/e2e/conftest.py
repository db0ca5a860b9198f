"""A real cluster for end-to-end tests: the kind bed ``pytest-chaos-cluster up`` brings up.

Needs the cluster running with the daemon deployed; its kubeconfig comes from
``PYTEST_CHAOS_KUBECONFIG`` or the cluster tool's default path. Missing, the
tests skip, except under CI, where .ci/run brings the cluster up: there they fail.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from pytest_chaos.backends.kubernetes import KubernetesBackend
from pytest_chaos.session import ChaosSession
from pytest_chaos_cluster.settings import Layout
from tests.support.suites import run_suite
from tests.support.targets import require

HERE = pathlib.Path(__file__).parent
REPO = HERE.parents[1]
DEFAULT_KUBECONFIG = str(Layout().kubeconfig)
TUTORIAL = REPO / "example_tests" / "kubernetes" / "manifests" / "busybox.yaml"
WORKLOADS = HERE / "manifests" / "workloads.yaml"


class Kube:
    def __init__(self, kubeconfig: str, kubectl: str) -> None:
        self.kubeconfig = kubeconfig
        self.kubectl_path = kubectl

    def kubectl(self, *args: str, timeout: float = 180, input_text: str | None = None) -> str:
        result = subprocess.run([self.kubectl_path, f"--kubeconfig={self.kubeconfig}", *args],
                                capture_output=True, text=True, timeout=timeout, input=input_text)
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def daemon_pod_on(self, node: str) -> str:
        """``pod/NAME`` of the chaos daemon on ``node``: on a multi-node cluster, ``daemonset/chaos-daemon``
        would name any one of them."""
        name = self.kubectl("-n", "chaos-testing", "get", "pods", "-l", "app.kubernetes.io/name=chaos-daemon",
                            f"--field-selector=spec.nodeName={node}", "-o", "jsonpath={.items[*].metadata.name}")
        assert len(name.split()) == 1, f"want one chaos daemon on node {node}, found {name!r}"
        return f"pod/{name}"

    def backend(self, **kwargs) -> KubernetesBackend:
        return KubernetesBackend(kubeconfig=self.kubeconfig, **kwargs)

    def pytest_args(self, *extra: str) -> list[str]:
        return ["-p", "chaos", *self.chaos_args(), *extra]

    def chaos_args(self) -> list[str]:
        """The options that point a run at this cluster."""
        return ["--chaos-backend=kubernetes", f"--chaos-kubeconfig={self.kubeconfig}"]

    def run_suite(self, pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
        """A user's suite (``source``) run against this cluster."""
        return run_suite(pytester, source, *self.chaos_args(), *args)


def _cluster_kubectl() -> str | None:
    """The kubectl pytest-chaos-cluster built, matching the cluster's version."""
    path = Layout().binary("kubectl")
    return str(path) if path.exists() else None


@pytest.fixture(scope="session")
def kube(request) -> Kube:
    kubeconfig = os.environ.get("PYTEST_CHAOS_KUBECONFIG", DEFAULT_KUBECONFIG)
    kubectl = os.environ.get("PYTEST_CHAOS_KUBECTL") or _cluster_kubectl() or shutil.which("kubectl")
    require(os.path.exists(kubeconfig) and kubectl is not None,
            f"a running cluster (kubeconfig {kubeconfig}, kubectl): run pytest-chaos-cluster up")
    kube = Kube(kubeconfig, kubectl)
    try:
        kube.kubectl("get", "--raw=/readyz", timeout=10)
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        require(False, f"a running cluster at {kubeconfig} ({err})")
    return kube


@pytest.fixture(scope="session")
def workloads(kube: Kube) -> Iterator[None]:
    """The tutorial's busybox StatefulSet and the selector tests' pods, ready."""
    kube.kubectl("apply", "-f", str(TUTORIAL), "-f", str(WORKLOADS))
    kube.kubectl("-n", "busybox", "rollout", "status", "statefulset/busybox", "--timeout=180s")
    kube.kubectl("-n", "chaos-e2e", "wait", "--for=condition=Ready", "pod", "-l", "app=e2e", "--timeout=180s")
    kube.kubectl("-n", "chaos-e2e", "wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/done", "--timeout=180s")
    kube.kubectl("-n", "chaos-testing", "rollout", "status", "daemonset/chaos-daemon", "--timeout=180s")
    yield
    kube.kubectl("delete", "-f", str(WORKLOADS), "--wait=false", "--ignore-not-found")


@pytest.fixture
def session(kube: Kube) -> Iterator[ChaosSession]:
    """The plugin's session on the cluster; what a failed test left is recovered now, not at its lease's end."""
    chaos = ChaosSession(kube.backend(), seed=1)
    yield chaos
    for _, experiment in chaos.experiments:
        chaos.recover(experiment)
    chaos.close()
