"""pod-failure on the real cluster, checked through the API: each container runs the pause image (its status's
image and imageID), the originals are back after recovery, overlapping pod-failures end on the originals, and
a runner killed mid-test leaves a failed pod that ``pytest-chaos status`` shows and ``recover`` restores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pytest_chaos.errors import ChaosError
from pytest_chaos.pod_failure import ANNOTATION, LABEL
from pytest_chaos.session import ChaosSession
from pytest_chaos_cluster.settings import PAUSE_IMAGE
from tests.support.targets import wait_for

NAMESPACE = "chaos-e2e-podfail"
BUSYBOX = "localhost/pytest-chaos/busybox:1"
MANIFEST = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: failing, namespace: {NAMESPACE}, labels: {{app: failing}}}}
spec:
  terminationGracePeriodSeconds: 1
  initContainers:
    - name: init
      image: {BUSYBOX}
      imagePullPolicy: IfNotPresent
      args: ["true"]
  containers:
    - name: main
      image: {BUSYBOX}
      imagePullPolicy: IfNotPresent
      args: [sleep, "3600"]
    - name: sidecar
      image: {BUSYBOX}
      imagePullPolicy: IfNotPresent
      args: [sleep, "3600"]
"""
# ``args``, not ``command``: busybox has no entrypoint, so they are its command, and the pause image's
# entrypoint takes them as arguments it ignores. A pod that sets ``command`` cannot start it under the pause
# image at all: its containers fail instead (as in Chaos Mesh), which the test could not tell from a crash.
SELECTOR = {"pods": {NAMESPACE: ["failing"]}}


@pytest.fixture(scope="module")
def failing(kube, tmp_path_factory):
    manifest = tmp_path_factory.mktemp("podfail") / "pod.yaml"
    manifest.write_text(MANIFEST)
    kube.kubectl("apply", "-f", str(manifest))
    kube.kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", "pod/failing", "--timeout=120s")
    yield
    kube.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=120s")


def pod(kube) -> dict:
    return json.loads(kube.kubectl("-n", NAMESPACE, "get", "pod", "failing", "-o", "json"))


def image_ids(kube) -> dict[str, str]:
    """The image ID of every image the node holds, by name, as the node reports it."""
    node = pod(kube)["spec"]["nodeName"]
    found = json.loads(kube.kubectl("get", "node", node, "-o", "json"))["status"]["images"]
    return {name: image["names"][0] for image in found for name in image["names"]}


def running(kube, image: str) -> dict | None:
    """The pod, once each of its containers runs ``image`` and is ready (from its status); else None."""
    current = pod(kube)
    statuses = current["status"].get("containerStatuses") or []
    done = len(statuses) == 2 and all(s["image"].endswith(image.split("/", 1)[-1]) and s.get("ready")
                                      and "running" in s.get("state", {}) for s in statuses)
    return current if done else None


def spec_images(current: dict) -> dict[str, str]:
    return {c["name"]: c["image"] for section in ("initContainers", "containers") for c in current["spec"][section]}


def apply(session: ChaosSession, test: str, duration: str = "120s"):
    spec = session.spec(("pod-failure",), {"selector": SELECTOR, "mode": "all", "duration": duration,
                                           "container_names": ["main", "sidecar"]})
    return session.apply(spec, test)


def test_the_pods_containers_run_the_pause_image_and_the_originals_come_back(kube, failing):
    session = ChaosSession(kube.backend(), seed=1)
    try:
        started = time.monotonic()
        experiment = apply(session, "podfail::basic")
        applied_s = time.monotonic() - started
        failed = wait_for(lambda: running(kube, PAUSE_IMAGE), "the pause image in every container", timeout=90,
                          interval=0.5)
        pause_id = image_ids(kube)[PAUSE_IMAGE]
        assert {s["imageID"] for s in failed["status"]["containerStatuses"]} == {pause_id}
        assert spec_images(failed) == {"init": PAUSE_IMAGE, "main": PAUSE_IMAGE, "sidecar": PAUSE_IMAGE}
        record = json.loads(failed["metadata"]["annotations"][ANNOTATION])
        assert record["originals"] == {"containers": {"main": BUSYBOX, "sidecar": BUSYBOX},
                                       "initContainers": {"init": BUSYBOX}}
        assert list(record["holders"]) == [experiment.targets[0].injection_id]
        started = time.monotonic()
        session.recover(experiment)
        recovered_s = time.monotonic() - started
        assert experiment.outcome == "recovered", experiment.summary()
        back = wait_for(lambda: running(kube, BUSYBOX), "busybox in every container again", timeout=90, interval=0.5)
        assert {s["imageID"] for s in back["status"]["containerStatuses"]} == {image_ids(kube)[BUSYBOX]}
        assert spec_images(back) == {"init": BUSYBOX, "main": BUSYBOX, "sidecar": BUSYBOX}
        assert ANNOTATION not in (back["metadata"].get("annotations") or {})
        assert LABEL not in (back["metadata"].get("labels") or {})
        print(f"pod-failure apply {applied_s * 1000:.0f} ms, recover {recovered_s * 1000:.0f} ms (API calls)")
    finally:
        session.close()


@pytest.mark.parametrize("first_ends", ["first", "second"])
def test_overlapping_pod_failures_end_on_the_original_images(kube, failing, first_ends):
    sessions = [ChaosSession(kube.backend(), seed=1), ChaosSession(kube.backend(), seed=2)]
    try:
        experiments = [apply(session, f"podfail::overlap{i}") for i, session in enumerate(sessions)]
        current = pod(kube)
        assert spec_images(current)["main"] == PAUSE_IMAGE
        record = json.loads(current["metadata"]["annotations"][ANNOTATION])
        assert record["originals"]["containers"] == {"main": BUSYBOX, "sidecar": BUSYBOX}  # not the pause image
        assert len(record["holders"]) == 2
        order = [0, 1] if first_ends == "first" else [1, 0]
        sessions[order[0]].recover(experiments[order[0]])
        assert experiments[order[0]].outcome == "recovered"
        assert "stays failed" in experiments[order[0]].targets[0].detail
        assert set(spec_images(pod(kube)).values()) == {PAUSE_IMAGE}  # the other one still holds it
        sessions[order[1]].recover(experiments[order[1]])
        assert experiments[order[1]].outcome == "recovered"
        back = pod(kube)
        assert spec_images(back) == {"init": BUSYBOX, "main": BUSYBOX, "sidecar": BUSYBOX}
        assert ANNOTATION not in (back["metadata"].get("annotations") or {})
        wait_for(lambda: running(kube, BUSYBOX), "busybox in every container again", timeout=90, interval=0.5)
    finally:
        for session in sessions:
            session.close()


def test_duration_recovers_it_and_the_experiment_says_expired(kube, failing):
    session = ChaosSession(kube.backend(), seed=3)
    try:
        experiment = apply(session, "podfail::duration", duration="3s")
        assert spec_images(pod(kube))["main"] == PAUSE_IMAGE
        wait_for(lambda: experiment.outcome == "expired", "the duration's recovery", timeout=30, interval=0.2)
        assert spec_images(pod(kube)) == {"init": BUSYBOX, "main": BUSYBOX, "sidecar": BUSYBOX}
        session.recover(experiment)  # nothing left to do
        assert experiment.outcome == "expired"
    finally:
        session.close()


def cli(kube, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_chaos.cli", *args, "--backend", "kubernetes",
                           "--kubeconfig", kube.kubeconfig], capture_output=True, text=True, timeout=120)


def test_a_runner_killed_mid_test_leaves_a_failed_pod_that_the_cli_shows_and_recovers(kube, failing, pytester):
    pytester.makepyfile(test_user=f"""
        import time
        import pytest

        @pytest.mark.chaos("pod-failure", selector={SELECTOR!r}, mode="all", duration="600s")
        def test_hangs():
            time.sleep(600)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    runner = subprocess.Popen([sys.executable, "-m", "pytest", *kube.pytest_args(), "-p", "no:cacheprovider",
                               "test_user.py"], cwd=pytester.path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: ANNOTATION in (pod(kube)["metadata"].get("annotations") or {}), "the runner's pod-failure",
                 timeout=120, interval=0.5)
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    [holder] = json.loads(pod(kube)["metadata"]["annotations"][ANNOTATION])["holders"]
    status = cli(kube, "status", "--expect-none")
    assert status.returncode == 1, status.stdout + status.stderr
    [row] = [line for line in status.stdout.splitlines() if holder in line]
    assert "pod-failure" in row and f"{NAMESPACE}/failing" in row and " active " in row, row
    assert spec_images(pod(kube))["main"] == PAUSE_IMAGE  # nobody recovered it
    recovered = cli(kube, "recover", holder)
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert f"{holder} pod-failure {NAMESPACE}/failing: recovered" in recovered.stdout
    back = pod(kube)
    assert spec_images(back) == {"init": BUSYBOX, "main": BUSYBOX, "sidecar": BUSYBOX}
    assert ANNOTATION not in (back["metadata"].get("annotations") or {})
    assert holder not in cli(kube, "status").stdout
    wait_for(lambda: running(kube, BUSYBOX), "busybox in every container again", timeout=90, interval=0.5)


def test_the_marker_fails_the_pod_during_the_test_and_teardown_restores_it(kube, failing, pytester):
    pytester.makepyfile(test_user=f"""
        import json
        import subprocess

        import pytest

        @pytest.mark.chaos("pod-failure", selector={SELECTOR!r}, mode="all", duration="120s")
        def test_failed(chaos):
            [experiment] = chaos.experiments
            [target] = experiment.targets
            assert experiment.outcome == "applied" and "every container's image set to" in target.detail
            pod = json.loads(subprocess.run([{kube.kubectl_path!r}, "--kubeconfig={kube.kubeconfig}", "-n",
                                             {NAMESPACE!r}, "get", "pod", "failing", "-o", "json"],
                                            capture_output=True, check=True).stdout)
            assert {{c["image"] for c in pod["spec"]["containers"]}} == {{{PAUSE_IMAGE!r}}}
    """)
    result = pytester.runpytest_subprocess(*kube.pytest_args("-rA"))
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*chaos pod-failure mode=all: 1 target * recovered*"])
    back = pod(kube)
    assert spec_images(back) == {"init": BUSYBOX, "main": BUSYBOX, "sidecar": BUSYBOX}
    assert ANNOTATION not in (back["metadata"].get("annotations") or {})
    wait_for(lambda: running(kube, BUSYBOX), "busybox in every container again", timeout=90, interval=0.5)


def test_a_pause_image_the_node_lacks_is_an_error_and_nothing_changes(kube, failing):
    session = ChaosSession(kube.backend(), seed=4)
    try:
        spec = session.spec(("pod-failure",), {"selector": SELECTOR, "mode": "all", "duration": "60s",
                                               "pause_image": "registry.example/pause:0.0"})
        with pytest.raises(ChaosError, match=r"does not hold the pause image 'registry.example/pause:0.0' "
                                             r"\(it reports: .*localhost/pytest-chaos/pause:1"):
            session.apply(spec, "podfail::missing")
    finally:
        session.close()
    current = pod(kube)
    assert spec_images(current) == {"init": BUSYBOX, "main": BUSYBOX, "sidecar": BUSYBOX}
    assert ANNOTATION not in (current["metadata"].get("annotations") or {})


def test_a_pod_deleted_while_failed_is_counted_as_recovered_saying_so(kube, failing):
    kube.kubectl("-n", NAMESPACE, "run", "doomed", f"--image={BUSYBOX}", "--image-pull-policy=IfNotPresent",
                 "--restart=Never", "--", "sleep", "3600")
    kube.kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", "pod/doomed", "--timeout=120s")
    session = ChaosSession(kube.backend(), seed=5)
    try:
        spec = session.spec(("pod-failure",), {"selector": {"pods": {NAMESPACE: ["doomed"]}}, "mode": "all",
                                               "duration": "60s"})
        experiment = session.apply(spec, "podfail::doomed")
        kube.kubectl("-n", NAMESPACE, "delete", "pod", "doomed", "--grace-period=0", "--wait=true")
        session.recover(experiment)
        assert experiment.outcome == "recovered", experiment.summary()
        assert "no longer exists" in experiment.targets[0].detail
        assert "counted as recovered" in experiment.targets[0].detail
    finally:
        session.close()
