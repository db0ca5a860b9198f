"""Pods on the kind bed as network targets: busybox pods in a namespace of their own, seen from this host (each
pod's IP, its container's PID and network namespace), for tests that measure traffic between pods."""

from __future__ import annotations

import contextlib
import json
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

from tests.support.network_bed import NetTarget
from tests.support.targets import container_init_pid


def busybox_pods_manifest(namespace: str, names: Sequence[str]) -> str:
    """A namespace of its own and, in it, one pod per name running busybox's sleep (label app=<name>)."""
    pods = "---\n".join(f"""
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels: {{app: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - {{name: main, image: localhost/pytest-chaos/busybox:1, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}}
""" for name in names)
    return f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\n{pods}"


@contextlib.contextmanager
def busybox_pods(kube: Any, namespace: str, names: Sequence[str],
                 directory: pathlib.Path) -> Iterator[dict[str, NetTarget]]:
    """The pods of ``busybox_pods_manifest``, ready, as network targets (each pod's IP and network namespace,
    seen from this host); their namespace is deleted after."""
    manifest = directory / "pods.yaml"
    manifest.write_text(busybox_pods_manifest(namespace, names))
    kube.kubectl("apply", "-f", str(manifest))
    try:
        kube.kubectl("-n", namespace, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=120s")
        kube.kubectl("-n", "chaos-testing", "rollout", "status", "daemonset/chaos-daemon", "--timeout=180s")
        yield {name: pod_target(kube, namespace, name) for name in names}
    finally:
        kube.kubectl("delete", "namespace", namespace, "--ignore-not-found", "--timeout=120s")


def pod_selector(namespace: str, name: str) -> dict:
    return {"namespaces": [namespace], "labelSelectors": {"app": name}}


def pod_target(kube: Any, namespace: str, name: str) -> NetTarget:
    pod = json.loads(kube.kubectl("-n", namespace, "get", "pod", name, "-o", "json"))
    container_id = pod["status"]["containerStatuses"][0]["containerID"]
    pid = container_init_pid(container_id)
    return NetTarget(container_id, pid, pod["status"]["podIP"], f"/proc/{pid}/ns/net", pod_selector(namespace, name),
                     name=name)
