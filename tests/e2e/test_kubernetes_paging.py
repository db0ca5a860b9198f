"""The kubernetes backend lists pods a page at a time: with pages of 2, selection over 7 pods of a real
cluster finds every matching pod and no other, by label (the API server filters) and by annotation (the
backend filters).

The pods never run: their scheduler does not exist, so no node is assigned and deletion is immediate. They
are given a running container's status by hand, so the selection yields them as targets."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_chaos.backends.kubernetes import KubernetesBackend

NAMESPACE = f"chaos-e2e-paging-{uuid.uuid4().hex[:6]}"
PODS = [f"pod-{i}" for i in range(7)]
MATCHING = ["pod-0", "pod-2", "pod-3", "pod-6"]  # the 1st, 2nd and 4th pages hold matches, the 2nd two
RUN_LABEL = {"chaos-e2e-paging": NAMESPACE}  # this run's pods, for a selection over every namespace
TARGET = {"chaos.example/paged": "yes"}


def pod(name: str) -> dict[str, Any]:
    matching = name in MATCHING
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {**RUN_LABEL, **(TARGET if matching else {})},
                     "annotations": TARGET if matching else {}},
        "spec": {"schedulerName": "pytest-chaos-test-unscheduled", "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "main", "image": "busybox"}]},
    }


RUNNING = {"status": {"phase": "Running", "containerStatuses": [{
    "name": "main", "image": "busybox", "imageID": "", "ready": True, "restartCount": 0,
    "containerID": "containerd://" + "0" * 64, "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}]}}


@pytest.fixture(scope="module")
def pods(kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Seven pods that never run, four of them labelled and annotated to match; their namespace is deleted after."""
    manifest = tmp_path_factory.mktemp("paging") / "pods.json"
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [pod(name) for name in PODS]}))
    try:
        kube.kubectl("create", "namespace", NAMESPACE)
        # Pods are refused until the namespace's default service account exists.
        kube.kubectl("-n", NAMESPACE, "wait", "--for=create", "serviceaccount/default", "--timeout=60s")
        kube.kubectl("create", "-f", str(manifest))
        for name in PODS:
            kube.kubectl("-n", NAMESPACE, "patch", "pod", name, "--subresource=status", "--type=merge",
                         "-p", json.dumps(RUNNING))
        yield
    finally:
        kube.kubectl("delete", "namespace", NAMESPACE, "--wait=false", "--ignore-not-found")


def select(kube, selector: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[int]]:
    """The pods a backend with pages of 2 selects, and the page size of each list request it made."""
    backend: KubernetesBackend = kube.backend(page_size=2)
    limits: list[int] = []
    for name in ("list_namespaced_pod", "list_pod_for_all_namespaces"):
        original = getattr(backend.core, name)

        @functools.wraps(original)
        def counted(*args: Any, original: Any = original, **kwargs: Any) -> Any:
            limits.append(kwargs.get("limit"))
            return original(*args, **kwargs)

        monkeypatch.setattr(backend.core, name, counted)
    try:
        units = backend.candidates(backend.check_selector(selector, None), None)
    finally:
        backend.close()
    return sorted(t.pod or "" for unit in units for t in unit), limits


def test_by_annotation_every_page_is_read_and_filtered(kube, pods, monkeypatch):
    found, limits = select(kube, {"namespaces": [NAMESPACE], "annotationSelectors": TARGET}, monkeypatch)
    assert found == MATCHING
    assert limits == [2, 2, 2, 2]  # 7 pods: 2 + 2 + 2 + 1


def test_by_label_the_api_server_filters_each_page(kube, pods, monkeypatch):
    found, limits = select(kube, {"namespaces": [NAMESPACE], "labelSelectors": TARGET}, monkeypatch)
    assert found == MATCHING
    assert len(limits) >= 2 and set(limits) == {2}


def test_over_every_namespace_pages_are_followed_too(kube, pods, monkeypatch):
    found, limits = select(kube, {"labelSelectors": RUN_LABEL, "annotationSelectors": TARGET}, monkeypatch)
    assert found == MATCHING
    assert len(limits) >= 4 and set(limits) == {2}


def test_the_pods_selector_names_pods_without_listing(kube, pods, monkeypatch):
    found, limits = select(kube, {"pods": {NAMESPACE: ["pod-1", "pod-2", "no-such-pod"]}}, monkeypatch)
    assert found == ["pod-1", "pod-2"]
    assert limits == []


def test_the_page_size_is_at_least_one():
    with pytest.raises(ValueError, match="page_size must be at least 1"):
        KubernetesBackend(page_size=0)
