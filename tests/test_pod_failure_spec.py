"""pod-failure's arguments, checked at collection as a marker's are: no cluster needed."""

from __future__ import annotations

import pytest

from pytest_chaos.backends.kubernetes import KubernetesBackend
from pytest_chaos.errors import ChaosSpecError
from pytest_chaos.pod_failure import PAUSE_NAME
from pytest_chaos.spec import build_spec

KUBERNETES = KubernetesBackend(kubeconfig="/nonexistent")
SELECTOR = {"namespaces": ["shop"]}


def test_duration_is_required_as_in_chaos_mesh():
    with pytest.raises(ChaosSpecError) as raised:
        build_spec(KUBERNETES, ("pod-failure",), {"selector": SELECTOR})
    assert raised.value.field == "duration" and "is required for kind 'pod-failure'" in raised.value.message
    spec = build_spec(KUBERNETES, ("pod-failure",), {"selector": SELECTOR, "duration": "30s"})
    assert (spec.duration, spec.params) == (30.0, {"pause_image": None})


@pytest.mark.parametrize("params, field, says", [
    ({"pause_image": "Not An Image"}, "pause_image", "must be an image reference"),
    ({"pause_image": 3}, "pause_image", "must be an image reference"),
    ({"grace_period": 1}, "grace_period", "takes only 'pause_image'"),
])
def test_bad_parameters_are_refused_naming_them(params, field, says):
    with pytest.raises(ChaosSpecError) as raised:
        build_spec(KUBERNETES, ("pod-failure",), {"selector": SELECTOR, "duration": "30s", **params})
    assert raised.value.field == field and says in raised.value.message


def test_the_local_backend_refuses_it_at_collection(pytester):
    pytester.makepyfile(test_user="""
        import pytest

        @pytest.mark.chaos("pod-failure", selector={"pids": [1]}, duration="10s")
        def test_app():
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "chaos")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*kind: 'pod-failure' works with the kubernetes backend only*"])


@pytest.mark.parametrize("name, pause", [
    ("localhost/pytest-chaos/pause:1", True),
    ("registry.k8s.io/pause:3.10", True),
    ("registry.k8s.io/pause", True),
    ("docker.io/library/pause-not:1", False),
    ("localhost/pytest-chaos/busybox:1", False),
    ("example/pauser:1", False),
])
def test_the_default_pause_image_is_one_named_pause(name, pause):
    assert bool(PAUSE_NAME.search(name)) is pause
