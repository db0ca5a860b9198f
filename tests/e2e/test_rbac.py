"""Who may talk to the daemons: daemon/deploy/runner-rbac.yaml, on the real cluster.

The Secret chaos-daemon-client-tls is the daemons' client certificate, root on
every node. The shipped ServiceAccount pytest-chaos-runner may read it and
nothing else secret, and has exactly what the plugin asks of the API: a test
run with a token of that account alone works end to end.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.e2e.conftest import REPO

RUNNER = "system:serviceaccount:chaos-testing:pytest-chaos-runner"


def can(kube, verb: str, resource: str, namespace: str) -> bool:
    """``kubectl auth can-i`` as the runner account (it exits 1 for "no")."""
    scope = ["-n", namespace] if namespace else []
    result = subprocess.run([kube.kubectl_path, f"--kubeconfig={kube.kubeconfig}", "auth", "can-i", verb,
                             *resource.split(), *scope, f"--as={RUNNER}"], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    return result.stdout.strip() == "yes"


@pytest.mark.parametrize("verb, resource, namespace, allowed", [
    ("get", "secret/chaos-daemon-client-tls", "chaos-testing", True),
    ("get", "secret/chaos-daemon-tls", "chaos-testing", False),  # the daemons' own key
    ("list", "secrets", "chaos-testing", False),
    ("get", "secret/chaos-daemon-client-tls", "default", False),
    ("create", "pods --subresource=portforward", "chaos-testing", True),
    ("list", "pods", "busybox", True),
    ("delete", "pods", "busybox", True),  # pod-kill
    ("create", "pods", "busybox", False),
    ("list", "nodes", "", True),
])
def test_the_runner_account_may_read_the_client_secret_and_nothing_else_secret(kube, verb, resource, namespace,
                                                                              allowed):
    assert can(kube, verb, resource, namespace) is allowed


def test_a_run_with_the_runner_accounts_token_alone_works(pytester, kube, workloads):
    admin = yaml.safe_load(open(kube.kubeconfig))
    token = kube.kubectl("-n", "chaos-testing", "create", "token", "pytest-chaos-runner", "--duration=10m").strip()
    cluster = admin["clusters"][0]
    runner = {"apiVersion": "v1", "kind": "Config", "clusters": [cluster],
              "users": [{"name": "runner", "user": {"token": token}}],
              "contexts": [{"name": "runner", "context": {"cluster": cluster["name"], "user": "runner"}}],
              "current-context": "runner"}
    kubeconfig = pytester.path / "runner.kubeconfig"
    kubeconfig.write_text(json.dumps(runner))
    pytester.makepyfile(test_user="""
        import pytest

        @pytest.mark.chaos("helloworld", selector={"namespaces": ["busybox"]}, mode="all")
        def test_busybox(chaos):
            [experiment] = chaos.experiments
            assert len(experiment.targets) == 2 and all(t.processes for t in experiment.targets)
    """)
    result = pytester.runpytest_subprocess("-p", "chaos", "--chaos-backend=kubernetes",
                                           f"--chaos-kubeconfig={kubeconfig}", "--chaos-daemon-access=port-forward")
    result.assert_outcomes(passed=1)


def test_the_network_policy_is_accepted_by_the_api_server(kube):
    # The bed's pod network enforces no NetworkPolicy: what can be checked here is that the API takes it.
    out = kube.kubectl("-n", "chaos-testing", "apply", "--dry-run=server", "-f",
                       str(REPO / "daemon" / "deploy" / "networkpolicy.yaml"))
    assert "networkpolicy.networking.k8s.io/chaos-daemon" in out
