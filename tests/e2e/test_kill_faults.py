"""container-kill and process-kill on pods of a real cluster, through the marker; each effect is
checked through the API server and the kubelet (restart counts, ``kubectl exec ps``), not the daemon."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from tests.support.targets import wait_for

NAMESPACE = f"chaos-e2e-kill-{uuid.uuid4().hex[:6]}"
# The shell's own command line never spells "sleep 4631", so a pattern naming one sleep matches it alone.
SCRIPT = "s=sl; ${s}eep 4631 & ${s}eep 4632 & wait; exec sleep 3600"


# The kubelet and kubectl exec are slow: a long wait, polled gently.
SLOW = {"timeout": 90, "interval": 0.5}

def deployment(name: str, command: list[str]) -> dict:
    labels = {"app": name}
    container = {"name": "main", "image": "localhost/pytest-chaos/busybox:1", "imagePullPolicy": "IfNotPresent",
                 "command": command}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"terminationGracePeriodSeconds": 1, "containers": [container]}}},
    }


@pytest.fixture(scope="module")
def workload(kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A namespace of this module's own with two Deployments: ``kill-me`` (sleep 3600) and ``signal-me``
    (a shell with two sleeps); deleted afterwards."""
    manifest = tmp_path_factory.mktemp("kill-faults") / "workload.json"
    items = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
             deployment("kill-me", ["sleep", "3600"]), deployment("signal-me", ["sh", "-c", SCRIPT])]
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    kube.kubectl("-n", "chaos-testing", "rollout", "status", "daemonset/chaos-daemon", "--timeout=180s")
    try:
        kube.kubectl("apply", "-f", str(manifest))
        for name in ("kill-me", "signal-me"):
            kube.kubectl("-n", NAMESPACE, "rollout", "status", f"deployment/{name}", "--timeout=180s")
        yield
    finally:
        kube.kubectl("delete", "namespace", NAMESPACE, "--wait=false", "--ignore-not-found")


def pod_of(kube, app: str) -> dict:
    [pod] = json.loads(kube.kubectl("-n", NAMESPACE, "get", "pods", "-l", f"app={app}", "-o", "json"))["items"]
    return pod


def container_status(kube, pod: str) -> dict:
    status = json.loads(kube.kubectl("-n", NAMESPACE, "get", "pod", pod, "-o", "json"))["status"]
    return status["containerStatuses"][0]


def ps(kube, pod: str) -> list[str]:
    """The pod's commands, as ``ps`` run by the kubelet (kubectl exec) lists them."""
    lines = kube.kubectl("-n", NAMESPACE, "exec", pod, "--", "ps", "-o", "args").splitlines()[1:]
    return [line.strip() for line in lines if line.strip() not in ("ps -o args", "")]



def test_container_kill_restarts_the_pods_container_once(pytester, kube, workload):
    pod = pod_of(kube, "kill-me")["metadata"]["name"]
    before = container_status(kube, pod)
    assert "running" in before["state"]
    result = kube.run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("container-kill",
                           selector={{"namespaces": ["{NAMESPACE}"], "labelSelectors": {{"app": "kill-me"}}}})
        def test_app(chaos):
            [target] = chaos.experiments[0].targets
            assert (target.pod, target.container) == ("{pod}", "main")
            assert target.container_id == "{before['containerID']}"
            assert target.mechanism == "containerd task kill (SIGKILL)"
    """)
    result.assert_outcomes(passed=1)

    def restarted() -> dict | None:
        status = container_status(kube, pod)
        return status if status["restartCount"] == before["restartCount"] + 1 and "running" in status["state"] else None

    after = wait_for(restarted, "the kubelet to restart the killed container", **SLOW)
    assert after["containerID"] != before["containerID"]
    assert after["lastState"]["terminated"]["exitCode"] == 128 + 9  # SIGKILL
    assert pod_of(kube, "kill-me")["metadata"]["name"] == pod  # the same pod: its container restarted


def test_process_kill_kills_the_named_process_in_a_pod(pytester, kube, workload):
    pod = pod_of(kube, "signal-me")["metadata"]["name"]
    wait_for(lambda: {"sleep 4631", "sleep 4632"} <= set(ps(kube, pod)), "both sleeps to start", **SLOW)
    restarts = container_status(kube, pod)["restartCount"]
    result = kube.run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("process-kill", selector={{"pods": {{"{NAMESPACE}": ["{pod}"]}}}},
                           process="^sleep 4631$", signal="SIGTERM")
        def test_app(chaos):
            [target] = chaos.experiments[0].targets
            assert [(p.user, p.command) for p in target.processes] == [("root", "sleep 4631")]
            assert target.processes[0].pid > 1  # as the pod sees it
            assert target.mechanism == "SIGTERM to the matching processes (pidfd)"
    """)
    result.assert_outcomes(passed=1)
    commands = wait_for(lambda: (c := ps(kube, pod)) and "sleep 4631" not in c and c, "the sleep to end", **SLOW)
    assert "sleep 4632" in commands
    assert any(c.startswith("sh -c") for c in commands), commands
    assert container_status(kube, pod)["restartCount"] == restarts
