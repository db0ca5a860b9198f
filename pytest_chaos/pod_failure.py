"""pod-failure's record on the pod itself: the original images, who holds the failure, until when.

The record is one annotation, written in the same JSON patch that sets the
pause images (a patch applies whole or not at all), and guarded by ``test``
operations on the pod's uid and resourceVersion: so the record exists
exactly while the pause images are in force, and two writers never build on
the same stale read. A label beside it lets ``pytest-chaos status`` find
failed pods with one list call.

Overlapping pod-failures share the record: the first keeps the originals,
each one adds itself as a holder, and only the last holder's recovery puts
the originals back. (Chaos Mesh keeps one annotation per experiment, so a
second experiment records the pause image as "original", and whichever
recovers last may leave the pause image behind.)
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Mapping
from typing import Any

from .backends.base import PodApi, PodConflict, PodPatchRefused
from .errors import ChaosError

ANNOTATION = "pytest-chaos.io/pod-failure"
LABEL = "pytest-chaos.io/pod-failure"
SECTIONS = ("containers", "initContainers")
RETRIES = 8  # conditional patches retried when another writer got there first
# An image whose last path component is "pause": registry.k8s.io/pause:3.10, localhost/pytest-chaos/pause:1.
PAUSE_NAME = re.compile(r"(?:^|/)pause(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$")
# The kubelet reports at most this many images of a node by default (--node-status-max-images): a full list
# may leave out the one asked for.
NODE_STATUS_MAX_IMAGES = 50


class PodGone(ChaosError):
    """The pod failed is gone, or replaced by another of its name: its pause images went with it."""


@dataclasses.dataclass
class Holder:
    injection_id: str
    owner: str
    applied_at: float
    expires_at: float


@dataclasses.dataclass
class Record:
    """The annotation's content: each container's original image, and the pod-failures holding it."""

    originals: dict[str, dict[str, str]]
    holders: dict[str, Holder]

    def dump(self) -> str:
        return json.dumps({"originals": self.originals,
                           "holders": {i: {"owner": h.owner, "applied": h.applied_at, "expires": h.expires_at}
                                       for i, h in self.holders.items()}}, sort_keys=True)

    @classmethod
    def of(cls, pod: Mapping[str, Any]) -> Record | None:
        """The pod's record; None if it has none. Raises ChaosError for one that cannot be read, rather
        than guessing originals."""
        text = (pod["metadata"].get("annotations") or {}).get(ANNOTATION)
        if text is None:
            return None
        try:
            data = json.loads(text)
            originals = {section: dict(data["originals"].get(section, {})) for section in SECTIONS}
            holders = {i: Holder(i, str(h["owner"]), float(h["applied"]), float(h["expires"]))
                       for i, h in data["holders"].items()}
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise ChaosError(f"pod {_name(pod)}: its annotation {ANNOTATION} cannot be read ({err}); restore its "
                             f"images by hand and remove the annotation") from None
        return cls(originals, holders)


def choose_pause_image(api: PodApi, node: str, wanted: str | None) -> str:
    """``wanted`` if the node holds it, or else the first pause image the node holds; ChaosError if it has
    none (a pause image it would have to pull could fail to, and the pod would not run the pause image)."""
    images = api.node_images(node)
    complete = len(images) < NODE_STATUS_MAX_IMAGES  # a full list may leave some out
    if wanted is not None:
        if complete and wanted not in images:
            raise ChaosError(f"node {node} does not hold the pause image {wanted!r} (it reports: "
                             f"{', '.join(sorted(images)) or 'no images'}); pull it there or pass another pause_image")
        return wanted
    found = sorted(name for name in images if PAUSE_NAME.search(name) and "@" not in name)
    if not found:
        raise ChaosError(f"node {node} reports no pause image (an image named .../pause:TAG) among "
                         f"{len(images)} images{'' if complete else ' (a list the kubelet cut short)'}; "
                         f"pass pause_image='REPOSITORY:TAG' of one it holds")
    return found[0]


def fail_pod(api: PodApi, namespace: str, name: str, uid: str, injection_id: str, pause_image: str, owner: str,
             duration_s: float) -> Record:
    """Set every container's and init container's image of the pod to ``pause_image``, recording the
    originals and this holder in the same patch; an already failed pod gains a holder, its originals kept."""
    for _ in range(RETRIES):
        pod = _read(api, namespace, name, uid)
        now = time.time()
        record = Record.of(pod)
        first = record is None
        if record is None:
            record = Record({section: {c["name"]: c["image"] for c in pod["spec"].get(section) or []}
                             for section in SECTIONS}, {})
        record.holders[injection_id] = Holder(injection_id, owner, now, now + duration_s)
        operations = _guard(pod)
        operations += _images(pod, lambda section, container: pause_image)
        operations += _annotate(pod, record.dump(), label=first)
        if not _patched(api, pod, operations):
            continue
        return record
    raise ChaosError(f"pod {namespace}/{name} kept changing: {RETRIES} conditional patches were refused")


def restore_pod(api: PodApi, namespace: str, name: str, uid: str, injection_id: str) -> str:
    """End holder ``injection_id``'s failure of the pod: the last holder puts the original images back and
    removes the record. What it did, as a sentence; ChaosError if there was nothing of its to end."""
    for _ in range(RETRIES):
        pod = _read(api, namespace, name, uid)
        record = Record.of(pod)
        if record is None or injection_id not in record.holders:
            raise ChaosError(f"pod {namespace}/{name} holds no pod-failure {injection_id}: nothing was restored")
        del record.holders[injection_id]
        operations = _guard(pod)
        if record.holders:
            operations += _annotate(pod, record.dump(), label=False)
            detail = (f"pod {namespace}/{name} stays failed for {len(record.holders)} other pod-failure(s) "
                      f"({', '.join(sorted(record.holders))}); the last one restores its images")
        else:
            operations += _images(pod, lambda section, container, originals=record.originals:
                                  originals[section].get(container))
            operations.append({"op": "remove", "path": f"/metadata/annotations/{_escape(ANNOTATION)}"})
            if LABEL in (pod["metadata"].get("labels") or {}):
                operations.append({"op": "remove", "path": f"/metadata/labels/{_escape(LABEL)}"})
            detail = f"pod {namespace}/{name}: original images restored ({_describe(record.originals)})"
        if not _patched(api, pod, operations):
            continue
        return detail
    raise ChaosError(f"pod {namespace}/{name} kept changing: {RETRIES} conditional patches were refused")


def failed_pods(api: PodApi) -> list[tuple[dict[str, Any], Record]]:
    """Every pod holding a pod-failure record, with the record."""
    found = []
    for pod in api.marked_pods(LABEL):
        record = Record.of(pod)
        if record is not None:
            found.append((pod, record))
    return found


def _patched(api: PodApi, pod: Mapping[str, Any], operations: list[dict[str, Any]]) -> bool:
    """Apply ``operations`` to the pod as read; False if the pod changed since (read it again and retry)."""
    namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    try:
        api.patch_pod(namespace, name, operations)
    except PodConflict:
        return False
    except PodPatchRefused:
        # The guard's test failed if the pod moved on (the kubelet writes its status often); else the patch
        # itself was refused.
        now = api.read_pod(namespace, name)
        if now is None or now["metadata"]["resourceVersion"] == pod["metadata"]["resourceVersion"]:
            raise
        return False
    return True


def _read(api: PodApi, namespace: str, name: str, uid: str) -> dict[str, Any]:
    pod = api.read_pod(namespace, name)
    if pod is None:
        raise PodGone(f"pod {namespace}/{name} no longer exists (uid {uid}): its pod-failure went with it")
    if uid and pod["metadata"]["uid"] != uid:
        raise PodGone(f"pod {namespace}/{name} was replaced (uid {pod['metadata']['uid']}, selected {uid}): "
                      f"its pod-failure went with the pod it replaced")
    return pod


def _guard(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Tests that make the patch apply only to the pod as read."""
    return [{"op": "test", "path": "/metadata/uid", "value": pod["metadata"]["uid"]},
            {"op": "test", "path": "/metadata/resourceVersion", "value": pod["metadata"]["resourceVersion"]}]


def _images(pod: Mapping[str, Any], image: Any) -> list[dict[str, Any]]:
    operations = []
    for section in SECTIONS:
        for index, container in enumerate(pod["spec"].get(section) or []):
            new = image(section, container["name"])
            if new is not None and new != container["image"]:
                operations.append({"op": "replace", "path": f"/spec/{section}/{index}/image", "value": new})
    return operations


def _annotate(pod: Mapping[str, Any], text: str, label: bool) -> list[dict[str, Any]]:
    metadata = pod["metadata"]
    operations: list[dict[str, Any]] = []
    if metadata.get("annotations") is None:
        operations.append({"op": "add", "path": "/metadata/annotations", "value": {}})
    operations.append({"op": "add", "path": f"/metadata/annotations/{_escape(ANNOTATION)}", "value": text})
    if label:
        if metadata.get("labels") is None:
            operations.append({"op": "add", "path": "/metadata/labels", "value": {}})
        operations.append({"op": "add", "path": f"/metadata/labels/{_escape(LABEL)}", "value": "true"})
    return operations


def _escape(key: str) -> str:
    """A map key as a JSON pointer's token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _describe(originals: Mapping[str, Mapping[str, str]]) -> str:
    return ", ".join(f"{name}={image}" for section in SECTIONS for name, image in originals[section].items())


def _name(pod: Mapping[str, Any]) -> str:
    return f"{pod['metadata'].get('namespace')}/{pod['metadata'].get('name')}"
