"""Faults that stay until recovered, on the real cluster: a paused pod's counter stops and
resumes, a duration ends the fault mid-test, and a daemon pod replaced while a fault is in
force leaves it to its successor, which recovers it from the journal on the node."""

from __future__ import annotations

import time

import pytest

from tests.support.targets import container_init_pid, pid_on_node

NAMESPACE = "chaos-e2e-lifecycle"
COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.05; done"
MANIFEST = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: counter, namespace: {NAMESPACE}, labels: {{app: counter}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: localhost/pytest-chaos/busybox:1
      imagePullPolicy: IfNotPresent
      command: [sh, -c, "{COUNTER}"]
"""


@pytest.fixture(scope="module")
def counter_pod(kube, tmp_path_factory):
    manifest = tmp_path_factory.mktemp("lifecycle") / "counter.yaml"
    manifest.write_text(MANIFEST)
    kube.kubectl("apply", "-f", str(manifest))
    kube.kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", "pod/counter", "--timeout=120s")
    yield
    kube.kubectl("delete", "namespace", NAMESPACE, "--wait=false", "--ignore-not-found")


def counter_pid(kube) -> int:
    """The counter container's PID on this host, by the pod's container id."""
    return container_init_pid(kube.kubectl("-n", NAMESPACE, "get", "pod", "counter", "-o",
                                           "jsonpath={.status.containerStatuses[0].containerID}"))


def count(pid: int) -> int:
    return int(open(f"/proc/{pid}/root/tmp/counter").read().strip() or 0)


def advancing(pid: int, interval: float = 0.6) -> bool:
    before = count(pid)
    time.sleep(interval)
    return count(pid) > before



def test_a_paused_pod_stops_and_resumes(pytester, kube, counter_pod):
    pid = counter_pid(kube)
    assert advancing(pid)
    result = kube.run_suite(pytester, f"""
        import time, pytest

        def count():
            return int(open("/proc/{pid}/root/tmp/counter").read().strip() or 0)

        @pytest.mark.chaos("container-pause", selector={{"namespaces": ["{NAMESPACE}"]}}, mode="all")
        def test_paused(chaos):
            [target] = chaos.experiments[0].targets
            assert target.pid == {pid_on_node(pid)} and target.mechanism.startswith("cgroup")
            before = count()
            time.sleep(0.6)
            assert count() == before
    """, "-rA")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*container-pause mode=all: 1 target * recovered*"])
    assert advancing(pid)


def test_a_duration_ends_the_pause_while_the_test_runs(pytester, kube, counter_pod):
    pid = counter_pid(kube)
    result = kube.run_suite(pytester, f"""
        import time, pytest

        @pytest.mark.chaos("container-pause", selector={{"namespaces": ["{NAMESPACE}"]}}, mode="all", duration="2s")
        def test_heals(chaos):
            [experiment] = chaos.experiments
            deadline = time.monotonic() + 15
            while experiment.outcome == "applied" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert experiment.outcome == "expired", experiment.summary()
            assert "duration" in experiment.targets[0].detail
    """)
    result.assert_outcomes(passed=1)
    assert advancing(pid)


def replace_daemon(kube) -> str:
    """A test body's line: delete the daemon pod and wait for the DaemonSet's new one."""
    kubectl = [str(kube.kubectl_path), f"--kubeconfig={kube.kubeconfig}", "-n", "chaos-testing"]
    delete = [*kubectl, "delete", "pod", "-l", "app.kubernetes.io/name=chaos-daemon", "--wait=true"]
    replaced = [*kubectl, "rollout", "status", "daemonset/chaos-daemon", "--timeout=120s"]
    return "; ".join(f"subprocess.run({argv!r}, check=True, capture_output=True)" for argv in (delete, replaced))


def test_a_replaced_daemon_pod_recovers_what_its_predecessor_applied(pytester, kube, counter_pod):
    pid = counter_pid(kube)
    result = kube.run_suite(pytester, f"""
        import subprocess, time, pytest

        def count():
            return int(open("/proc/{pid}/root/tmp/counter").read().strip() or 0)

        @pytest.mark.chaos("container-pause", selector={{"namespaces": ["{NAMESPACE}"]}}, mode="all")
        def test_daemon_replaced(chaos):
            {replace_daemon(kube)}
            before = count()
            time.sleep(0.6)
            assert count() == before  # still paused: the new daemon kept it
    """, "--chaos-lease=60")
    result.assert_outcomes(passed=1)
    assert advancing(pid)  # teardown reached the new daemon, which thawed it
    logs = kube.kubectl("-n", "chaos-testing", "logs", "-l", "app.kubernetes.io/name=chaos-daemon", "--tail=200")
    assert '"adopted from the journal"' in logs and '"kind": "container-pause"' in logs


def test_the_next_experiment_finds_a_replaced_daemon_pod(pytester, kube, counter_pod):
    # The backend remembers each node's daemon: the second test's call fails to connect to the old pod's
    # address, and goes to the new pod's instead.
    result = kube.run_suite(pytester, f"""
        import subprocess, pytest

        @pytest.mark.chaos("helloworld", selector={{"namespaces": ["{NAMESPACE}"]}}, mode="all", source="proc")
        def test_1_then_the_daemon_is_replaced(chaos):
            {replace_daemon(kube)}

        @pytest.mark.chaos("helloworld", selector={{"namespaces": ["{NAMESPACE}"]}}, mode="all", source="proc")
        def test_2_applies_through_the_new_daemon(chaos):
            assert chaos.experiments[0].targets[0].processes
    """)
    result.assert_outcomes(passed=2)

