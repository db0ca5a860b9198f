"""stress and pod-kill on the real cluster.

stress: the node's daemon runs stress-ng in a pod's container cgroups, which
this host sees: the container's ``cpuacct.usage`` climbs while it is applied,
and no stress-ng is left after. pod-kill: a StatefulSet pod is deleted once,
through the API alone, and its controller replaces it (a new UID).
"""

from __future__ import annotations

import json
import os
import time

import pytest
from pytest_chaos_daemon.confinement import procfs

from pytest_chaos.errors import ChaosError
from tests.support.load import stress_ng_pids
from tests.support.targets import container_init_pid, pid_on_node, wait_for

NAMESPACE = "chaos-e2e-stress"
MANIFEST = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: stressed, namespace: {NAMESPACE}, labels: {{app: stressed}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: localhost/pytest-chaos/busybox:1
      imagePullPolicy: IfNotPresent
      command: [sleep, "3600"]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: victim, namespace: {NAMESPACE}}}
spec:
  serviceName: victim
  replicas: 1
  selector:
    matchLabels: {{app: victim}}
  template:
    metadata:
      labels: {{app: victim}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: main
          image: localhost/pytest-chaos/busybox:1
          imagePullPolicy: IfNotPresent
          command: [sleep, "3600"]
        - name: sidecar
          image: localhost/pytest-chaos/busybox:1
          imagePullPolicy: IfNotPresent
          command: [sleep, "3600"]
"""


@pytest.fixture(scope="module")
def pods(kube, tmp_path_factory):
    """The stressed pod and the victim StatefulSet's pod, ready; the namespace is deleted after."""
    manifest = tmp_path_factory.mktemp("stress") / "pods.yaml"
    manifest.write_text(MANIFEST)
    kube.kubectl("apply", "-f", str(manifest))
    kube.kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", "pod/stressed", "--timeout=120s")
    kube.kubectl("-n", NAMESPACE, "rollout", "status", "statefulset/victim", "--timeout=120s")
    kube.kubectl("-n", "chaos-testing", "rollout", "status", "daemonset/chaos-daemon", "--timeout=180s")
    yield
    kube.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=120s")


def cpu_seconds(pid: int, interval: float) -> float:
    """CPU time the container of host PID ``pid`` used over ``interval``, from its cgroup on this host."""
    membership = next(m for m in procfs.read_cgroups(pid) if "cpuacct" in m.controllers)
    usage = os.path.join(procfs.cgroup_dir(membership, procfs.cgroup_mounts()), "cpuacct.usage")
    before = int(open(usage).read())
    time.sleep(interval)
    return (int(open(usage).read()) - before) / 1e9



def test_stress_raises_the_pods_container_cpu_usage_until_recovered(pytester, kube, pods):
    host_pid = container_init_pid(pod(kube, "stressed")["status"]["containerStatuses"][0]["containerID"])
    result = kube.run_suite(pytester, f"""
        import os
        import time

        import pytest
        from pytest_chaos_daemon.confinement import procfs

        def cgroup_of(pid, controller):
            [membership] = [m for m in procfs.read_cgroups(pid) if controller in m.controllers]
            return procfs.cgroup_dir(membership, procfs.cgroup_mounts())

        def cpu_seconds(pid, interval=1.0):
            usage = os.path.join(cgroup_of(pid, "cpuacct"), "cpuacct.usage")
            before = int(open(usage).read())
            time.sleep(interval)
            return (int(open(usage).read()) - before) / 1e9

        def stress_ng_in(pid):
            namespace = procfs.namespace_id(f"/proc/{{pid}}/ns/pid")
            return [int(p) for p in os.listdir("/proc") if p.isdigit() and os.path.exists(f"/proc/{{p}}/comm")
                    and open(f"/proc/{{p}}/comm").read().startswith("stress-ng")
                    and procfs.namespace_id(f"/proc/{{p}}/ns/pid") == namespace]

        @pytest.mark.chaos("stress", selector={{"pods": {{"{NAMESPACE}": ["stressed"]}}}}, mode="all",
                           stressors={{"cpu": {{"workers": 1}}}})
        def test_stressed(chaos):
            [target] = chaos.experiments[0].targets
            assert target.pod == "stressed" and target.mechanism.startswith("stress-ng")
            assert target.pid == {pid_on_node(host_pid)}  # as its node's daemon sees it
            busy = cpu_seconds({host_pid})
            assert busy > 0.3, busy
            stressors = stress_ng_in({host_pid})
            assert stressors
            for stressor in stressors:
                assert cgroup_of(stressor, "cpuacct") == cgroup_of({host_pid}, "cpuacct")
    """, "-rA", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*chaos stress mode=all: 1 target * recovered*"])
    assert stress_ng_pids() == []
    assert cpu_seconds(host_pid, 0.5) < 0.15


def pod(kube, name: str) -> dict:
    return json.loads(kube.kubectl("-n", NAMESPACE, "get", "pod", name, "-o", "json"))


def test_pod_kill_deletes_the_pod_once_and_its_statefulset_replaces_it(pytester, kube, pods):
    before = pod(kube, "victim-0")
    container_ids = [s["containerID"] for s in before["status"]["containerStatuses"]]
    result = kube.run_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("pod-kill", selector={{"pods": {{"{NAMESPACE}": ["victim-0"]}}}}, mode="all",
                           container_names=["main", "sidecar"], grace_period=0)
        def test_killed(chaos):
            [experiment] = chaos.experiments
            assert sorted(t.container for t in experiment.targets) == ["main", "sidecar"]
            details = sorted(t.detail for t in experiment.targets)
            assert details == ["deleted pod {NAMESPACE}/victim-0 (grace period 0s)",
                               "pod {NAMESPACE}/victim-0 deleted once, with its container main"], details
    """, "-rA")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*chaos pod-kill mode=all: 2 targets * recovered (one-shot, nothing to recover)*"])

    wait_for(lambda: _ready_uid(kube, "victim-0") not in (None, before["metadata"]["uid"]),
             "the StatefulSet to replace victim-0 with a new pod", timeout=120)
    # The plugin alone deleted it: no daemon heard of its containers.
    logs = kube.kubectl("-n", "chaos-testing", "logs", "-l", "app.kubernetes.io/name=chaos-daemon", "--tail=500")
    assert not any(container_id in logs for container_id in container_ids)


def test_pod_kill_never_deletes_a_same_name_replacement_of_the_selected_pod(kube, pods):
    backend = kube.backend()
    try:
        selector = backend.check_selector({"pods": {NAMESPACE: ["victim-0"]}}, None)
        [[selected]] = backend.candidates(selector, None)
        # The pod is replaced between selection and deletion (by hand here, by anything in life).
        kube.kubectl("-n", NAMESPACE, "delete", "pod", "victim-0", "--wait=true")
        wait_for(lambda: _ready_uid(kube, "victim-0") not in (None, selected.pod_uid), "a replacement", timeout=120)
        replacement_uid = _ready_uid(kube, "victim-0")
        with pytest.raises(ChaosError, match="409"):
            backend.delete_pod(NAMESPACE, "victim-0", selected.pod_uid or "", 0)
        assert _ready_uid(kube, "victim-0") == replacement_uid
    finally:
        backend.close()


def _ready_uid(kube, name: str) -> str | None:
    """The pod's UID once it is Ready and not being deleted; None otherwise (or between deletion and replacement)."""
    try:
        now = pod(kube, name)
    except RuntimeError:
        return None
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in now["status"].get("conditions", []))
    return now["metadata"]["uid"] if ready and not now["metadata"].get("deletionTimestamp") else None
