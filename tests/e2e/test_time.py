"""time on the real cluster, through the DaemonSet's daemon: a pod's long-running Python program writes what its
clocks read every 0.2 s, and the test reads that file through /proc/<pid>/root on this host (the kind nodes
share its kernel). The shift is seen within 2 s of apply, a process exec'd in the pod afterwards is unaffected,
and recovery puts it back, also when the daemon container that applied it was SIGKILLed and its restarted
successor on the node's journal recovers it. The pod runs the daemon image: it has the Python the busybox
image lacks."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.support.targets import container_init_pid, wait_for

NAMESPACE = "chaos-e2e-time"
HOURS_2 = -2 * 3600
SEEN_WITHIN_S = 2.0
TOLERANCE_S = 1.0
PROBE = """
import os, select, sys, threading, time
threading.Thread(target=lambda: [select.select([], [], [], 0.05) for _ in iter(int, 1)], daemon=True).start()
out = sys.argv[1]
while True:
    with open(out + ".new", "w") as f:
        f.write(f"{time.time()} {time.monotonic()}\\n")
    os.replace(out + ".new", out)
    select.select([], [], [], 0.2)
"""
COMMAND = json.dumps(["/usr/bin/python3", "-c", PROBE, "/tmp/time.txt"])
MANIFEST = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: clock, namespace: {NAMESPACE}, labels: {{app: clock}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: localhost/pytest-chaos/daemon:dev
      imagePullPolicy: IfNotPresent
      command: {COMMAND}
"""
SELECTOR = {"namespaces": [NAMESPACE], "labelSelectors": {"app": "clock"}}


@pytest.fixture(scope="module")
def clock_pod(kube, tmp_path_factory) -> int:
    """The probe's host PID."""
    manifest = tmp_path_factory.mktemp("time") / "clock.yaml"
    manifest.write_text(MANIFEST)
    kube.kubectl("apply", "-f", str(manifest))
    kube.kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", "pod/clock", "--timeout=120s")
    pid = container_init_pid(kube.kubectl("-n", NAMESPACE, "get", "pod", "clock", "-o",
                                          "jsonpath={.status.containerStatuses[0].containerID}"))
    wait_for(lambda: skews(pid) is not None, "the probe to write", timeout=30)
    yield pid
    kube.kubectl("delete", "namespace", NAMESPACE, "--wait=false", "--ignore-not-found")



def daemon_process(container_id: str) -> int:
    """This host's PID of the daemon in the container ``container_id``: the pod shares its node's pid namespace
    (hostPID), so it is no PID 1; it is the container's topmost process running pytest-chaos-daemon."""
    bare = container_id.split("://", 1)[-1]
    found: dict[int, int] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cgroup") as f:
                if bare not in f.read():
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"pytest-chaos-daemon" not in f.read():
                    continue
            with open(f"/proc/{entry}/stat") as f:
                found[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    top = [pid for pid, parent in found.items() if parent not in found]
    assert len(top) == 1, f"want one daemon process in container {container_id}, found {found}"
    return top[0]


def skews(pid: int) -> tuple[float, float] | None:
    try:
        with open(f"/proc/{pid}/root/tmp/time.txt") as f:
            wall, mono = (float(v) for v in f.read().split())
    except (OSError, ValueError):
        return None
    return wall - time.time(), mono - time.monotonic()


def wait_skews(pid: int, wall: float, mono: float = 0.0, within: float = SEEN_WITHIN_S) -> float:
    start, last = time.monotonic(), None
    while time.monotonic() - start < within:
        last = skews(pid)
        if last is not None and abs(last[0] - wall) < TOLERANCE_S and abs(last[1] - mono) < TOLERANCE_S:
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"the pod's clocks are off by {last} s (wall, monotonic), not ({wall}, {mono}) "
                         f"within {within} s")


def test_a_pods_running_program_sees_the_offset_a_later_one_does_not_and_recovery_undoes_it(
        session, kube, clock_pod):
    wait_skews(clock_pod, 0.0)
    spec = session.spec(("time",), {"selector": SELECTOR, "mode": "all", "time_offset": "-2h"})
    start = time.monotonic()
    experiment = session.apply(spec)
    apply_s = time.monotonic() - start
    seen_s = wait_skews(clock_pod, HOURS_2)
    later = kube.kubectl("-n", NAMESPACE, "exec", "clock", "--", "/usr/bin/python3", "-c",
                         "import time; print(time.time())")
    assert abs(float(later) - time.time()) < TOLERANCE_S + 2, later
    start = time.monotonic()
    session.recover(experiment)
    recover_s = time.monotonic() - start
    assert experiment.outcome == "recovered", experiment.summary()
    back_s = wait_skews(clock_pod, 0.0)
    print(f"\ntime on the kind bed: apply {apply_s * 1000:.0f} ms (through the plugin), seen {seen_s:.2f} s later; "
          f"recover {recover_s * 1000:.0f} ms, back {back_s:.2f} s later")


def test_a_sigkilled_daemon_containers_successor_recovers_the_shift_from_the_journal(session, kube, clock_pod):
    wait_skews(clock_pod, 0.0)
    node = kube.kubectl("-n", NAMESPACE, "get", "pod", "clock", "-o", "jsonpath={.spec.nodeName}")
    daemon_pod = kube.daemon_pod_on(node)

    def restarts() -> int:
        return int(kube.kubectl("-n", "chaos-testing", "get", daemon_pod, "-o",
                                "jsonpath={.status.containerStatuses[0].restartCount}") or 0)

    before = restarts()
    spec = session.spec(("time",), {"selector": SELECTOR, "mode": "all", "time_offset": "-2h"})
    experiment = session.apply(spec)
    wait_skews(clock_pod, HOURS_2)
    os.kill(daemon_process(kube.kubectl("-n", "chaos-testing", "get", daemon_pod, "-o",
                                        "jsonpath={.status.containerStatuses[0].containerID}")), signal.SIGKILL)
    wait_for(lambda: restarts() > before, "the kubelet to restart the daemon container", timeout=120)
    kube.kubectl("-n", "chaos-testing", "wait", "--for=condition=Ready", daemon_pod, "--timeout=120s")
    wait_skews(clock_pod, HOURS_2)  # the jumps live in the pod's process: still shifted
    session.recover(experiment)
    assert experiment.outcome == "recovered", experiment.summary()
    wait_skews(clock_pod, 0.0)
    logs = kube.kubectl("-n", "chaos-testing", "logs", daemon_pod, "--tail=500")
    assert '"adopted from the journal"' in logs and '"kind": "time"' in logs
