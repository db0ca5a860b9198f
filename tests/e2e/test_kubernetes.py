"""End to end on a real cluster: selector → pods → the daemon on each pod's node →
container id → PID → output in the test report."""

from __future__ import annotations

import json
import pathlib

import pytest

from pytest_chaos.errors import ChaosError
from pytest_chaos.session import ChaosSession

pytestmark = pytest.mark.usefixtures("workloads")
E2E = ["chaos-e2e"]


def selected(kube, selector, container_names=None, **backend_args) -> list[tuple[str, str]]:
    """(pod, container) pairs the backend's selection yields, before any mode."""
    backend = kube.backend(**backend_args)
    try:
        units = backend.candidates(backend.check_selector(selector, container_names), container_names)
    finally:
        backend.close()
    return sorted((t.pod, t.container) for unit in units for t in unit)



def test_tutorial_scenario_through_the_marker(pytester, kube):
    result = kube.run_suite(pytester, """
        import pytest

        @pytest.mark.chaos("helloworld", selector={"namespaces": ["busybox"]}, mode="all")
        def test_busybox(chaos):
            [experiment] = chaos.experiments
            assert sorted(t.pod for t in experiment.targets) == ["busybox-0", "busybox-1"]
            for t in experiment.targets:
                assert t.namespace == "busybox" and t.container == "busybox" and t.node
                assert t.container_id.startswith("containerd://")
                assert t.pid > 0
                assert [(p.pid, p.command) for p in t.processes] == [(1, "sleep 3600")]
                print("TARGET", t.container_id, t.node)
    """, "-rA", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*Captured chaos setup*", "*--- busybox/busybox-*/busybox on *", "*sleep 3600*"])
    # The daemon's log on the node holds the request, with the caller's certificate, and the command it ran
    # (the process list itself only at debug level).
    targets = [line.split("TARGET ")[1].split() for line in result.outlines if "TARGET " in line]
    assert len(targets) == 2
    for container_id, node in targets:
        logs = kube.kubectl("-n", "chaos-testing", "logs", kube.daemon_pod_on(node), "--tail=2000")
        entries = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        mine = [e for e in entries if e.get("container_id") == container_id
                or e.get("request", {}).get("container_id") == container_id]
        # HelloWorld is a one-shot kind of Apply (ExecHelloWorldChaos stays for callers of the tutorial's RPC).
        assert {"Apply", "command ran"} <= {e["msg"] for e in mine}
        request = next(e for e in mine if e["msg"] == "Apply" and e.get("kind") == "helloworld")
        assert request["subject"] == "pytest-chaos-client"
        ran = next(e for e in mine if e["msg"] == "command ran")
        assert ran["argv"][-4:] == ["--", "sh", "-c", "ps aux"] and ran["returncode"] == 0


def test_modes_over_pods(pytester, kube):
    result = kube.run_suite(pytester, """
        import pytest

        SEL = {"namespaces": ["chaos-e2e"], "labelSelectors": {"app": "e2e"}}

        @pytest.mark.chaos("helloworld", selector=SEL, mode="one")
        @pytest.mark.chaos("helloworld", selector=SEL, mode="all")
        @pytest.mark.chaos("helloworld", selector=SEL, mode="fixed", value=2)
        @pytest.mark.chaos("helloworld", selector=SEL, mode="fixed-percent", value=34)
        @pytest.mark.chaos("helloworld", selector=SEL, mode="random-max-percent", value=100)
        def test_modes(chaos):
            one, every, fixed, percent, random_max = chaos.experiments
            assert len(one.targets) == 1
            assert sorted(t.pod for t in every.targets) == ["pod-a", "pod-b", "pod-c"]
            assert len({t.pod for t in fixed.targets}) == 2
            assert len({t.pod for t in percent.targets}) == 2   # ceil(3 * 34 / 100)
            assert 1 <= len(random_max.targets) <= 3
            for experiment in chaos.experiments:
                for t in experiment.targets:
                    assert t.container == "main"
                    assert [p.command for p in t.processes] == ["sleep 3600"]
    """, "--chaos-seed=3")
    result.assert_outcomes(passed=1)


def test_container_names_pick_containers_and_modes_pick_pods(pytester, kube):
    result = kube.run_suite(pytester, """
        import pytest

        @pytest.mark.chaos("helloworld", selector={"pods": {"chaos-e2e": ["pod-a", "pod-b"]}},
                           mode="one", container_names=["main", "sidecar"])
        @pytest.mark.chaos("helloworld", selector={"namespaces": ["chaos-e2e"], "labelSelectors": {"app": "e2e"}},
                           mode="all", container_names=["sidecar"])
        def test_containers(chaos):
            both, sidecars = chaos.experiments
            assert len({t.pod for t in both.targets}) == 1
            assert sorted(t.container for t in both.targets) == ["main", "sidecar"]
            assert {t.container for t in sidecars.targets} == {"sidecar"}
            assert all([p.command for p in t.processes] == ["sleep 1800"] for t in sidecars.targets)
    """)
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    "selector, container_names, expected",
    [
        ({"namespaces": E2E, "labelSelectors": {"tier": "back"}}, None, ["pod-b", "pod-c"]),
        ({"namespaces": E2E, "expressionSelectors": [{"key": "env", "operator": "In", "values": ["canary"]}]}, None, ["pod-c"]),
        ({"namespaces": E2E, "labelSelectors": {"app": "e2e"},
          "expressionSelectors": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}, None, ["pod-b", "pod-c"]),
        ({"namespaces": E2E, "expressionSelectors": [{"key": "env", "operator": "Exists"}]}, None, ["pod-c"]),
        ({"namespaces": E2E, "labelSelectors": {"app": "e2e"},
          "expressionSelectors": [{"key": "env", "operator": "DoesNotExist"}]}, None, ["pod-a", "pod-b"]),
        ({"namespaces": E2E, "annotationSelectors": {"chaos.example/target": "yes"}}, None, ["pod-a"]),
        ({"namespaces": E2E, "fieldSelectors": {"metadata.name": "pod-b"}}, None, ["pod-b"]),
        ({"namespaces": E2E, "podPhaseSelectors": ["Running"]}, None, ["pod-a", "pod-b", "pod-c"]),
        ({"namespaces": E2E, "podPhaseSelectors": ["!Running"]}, None, ["done"]),
        ({"namespaces": E2E, "podPhaseSelectors": ["Succeeded", "Running", "!Succeeded"]}, None, ["pod-a", "pod-b", "pod-c"]),
        ({"pods": {"chaos-e2e": ["pod-a", "no-such-pod"]}, "labelSelectors": {"tier": "back"}}, None, ["pod-a"]),
        ({"namespaces": E2E, "labelSelectors": {"app": "e2e"}}, ["sidecar", "nope"], ["pod-a", "pod-b", "pod-c"]),
        ({"namespaces": E2E, "labelSelectors": {"app": "e2e"}}, ["nope"], []),
        ({"namespaces": ["no-such-namespace"]}, None, []),
    ],
)
def test_selectors(kube, selector, container_names, expected):
    pairs = selected(kube, selector, container_names)
    assert sorted({pod for pod, _ in pairs}) == expected
    if container_names:
        assert {c for _, c in pairs} <= set(container_names)


def test_node_selectors(kube):
    node = kube.kubectl("-n", "chaos-e2e", "get", "pod", "pod-a", "-o", "jsonpath={.spec.nodeName}")
    labels = json.loads(kube.kubectl("get", "node", node, "-o", "jsonpath={.metadata.labels}"))
    base = {"namespaces": E2E, "labelSelectors": {"app": "e2e"}}
    on_node = len(kube.kubectl("-n", "chaos-e2e", "get", "pods", "-l", "app=e2e", "-o", "name",
                               f"--field-selector=spec.nodeName={node},status.phase=Running").split())
    assert on_node >= 1
    assert len(selected(kube, {**base, "nodes": [node]})) == on_node
    assert selected(kube, {**base, "nodes": ["no-such-node"]}) == []
    hostname = labels["kubernetes.io/hostname"]
    assert len(selected(kube, {**base, "nodeSelectors": {"kubernetes.io/hostname": hostname}})) == on_node
    assert selected(kube, {**base, "nodeSelectors": {"kubernetes.io/hostname": "elsewhere"}}) == []
    # nodes and nodeSelectors unite
    assert len(selected(kube, {**base, "nodes": ["no-such-node"],
                               "nodeSelectors": {"kubernetes.io/hostname": hostname}})) == on_node


def test_nothing_selected_errors_the_test(pytester, kube):
    result = kube.run_suite(pytester, """
        import pytest

        @pytest.mark.chaos("helloworld", selector={"namespaces": ["chaos-e2e"], "labelSelectors": {"app": "nobody"}})
        def test_app():
            pass
    """)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["ChaosError: *no target is selected*"])


def test_through_the_api_servers_port_forward(pytester, kube):
    result = kube.run_suite(pytester, """
        import pytest

        @pytest.mark.chaos("helloworld", selector={"pods": {"busybox": ["busybox-0"]}})
        def test_app(chaos):
            [t] = chaos.experiments[0].targets
            assert t.daemon.startswith("127.0.0.1:")
            assert [p.command for p in t.processes] == ["sleep 3600"]
    """, "--chaos-daemon-access=port-forward")
    result.assert_outcomes(passed=1)


def test_no_daemon_on_the_node_names_the_node(kube):
    session = ChaosSession(kube.backend(daemon_namespace="no-daemons-here"), seed=1)
    spec = session.spec(("helloworld",), {"selector": {"pods": {"busybox": ["busybox-0"]}}})
    node = kube.kubectl("-n", "busybox", "get", "pod", "busybox-0", "-o", "jsonpath={.spec.nodeName}")
    try:
        with pytest.raises(ChaosError, match=f"no chaos daemon is running on node '{node}'"):
            session.apply(spec)
    finally:
        session.close()


def test_bad_kubernetes_selector_fails_at_collection(pytester, kube):
    result = kube.run_suite(pytester, """
        import pytest

        @pytest.mark.chaos("helloworld", selector={"labels": {"app": "x"}})
        def test_app():
            pass
    """)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*selector.labels: unknown selector key for the kubernetes backend; "
                                 "accepted keys: namespaces, labelSelectors*"])


def test_native_listing_of_pods_matches_ps(pytester, kube):
    result = kube.run_suite(pytester, """
        import pytest

        SEL = {"namespaces": ["busybox"]}

        @pytest.mark.chaos("helloworld", selector=SEL, mode="all", source="proc")
        @pytest.mark.chaos("helloworld", selector=SEL, mode="all", source="ps")
        def test_sources_agree(chaos):
            native, probe = chaos.experiments
            listed = lambda e: {t.pod: [(p.pid, p.user, p.command) for p in t.processes] for t in e.targets}
            assert listed(native) == listed(probe)
            assert listed(native)["busybox-0"] == [(1, "root", "sleep 3600")]
            assert native.targets[0].output.splitlines()[0].split()[:2] == ["USER", "PID"]
    """)
    result.assert_outcomes(passed=1)


def test_the_tutorials_hello_world_chaos_manifest_through_the_marker(pytester, kube):
    """The tutorial's HelloWorldChaos resource, exactly as Chaos Mesh's documentation writes it."""
    tutorial = pathlib.Path(__file__).parents[1] / "manifests" / "hello-world.yaml"
    (pytester.path / "hello.yaml").write_text(tutorial.read_text())
    result = kube.run_suite(pytester, """
        import pytest

        @pytest.mark.chaos(manifest="hello.yaml")
        def test_busybox(chaos):
            [experiment] = chaos.experiments
            assert experiment.kind == "helloworld" and experiment.spec.duration == 3600
            assert sorted(t.pod for t in experiment.targets) == ["busybox-0", "busybox-1"]
            assert all([(p.pid, p.command) for p in t.processes] == [(1, "sleep 3600")] for t in experiment.targets)
    """, "-rA")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*chaos helloworld mode=all: 2 targets*"])
