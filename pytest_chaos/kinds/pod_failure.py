"""pod-failure: every container's and init container's image of a pod set to a pause image, as Chaos Mesh's
PodChaos pod-failure, until recovered.

Through the Kubernetes API alone, and the plugin's to recover (see
``pytest_chaos/pod_failure.py`` for the record it keeps on the pod, and
docs/kinds/pod-failure.md for why the plugin and not a daemon): in the
test's teardown, when its ``duration`` runs out (required, as in Chaos
Mesh), or, after a runner died, ``pytest-chaos recover``. A pod is failed
once, however many of its containers were picked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .. import pod_failure
from ..backends import Backend, PodApi
from ..errors import ChaosError, ChaosSpecError
from ..model import Target
from .base import InjectContext

IMAGE = re.compile(r"[a-z0-9][a-z0-9._/:-]{0,254}(@sha256:[0-9a-f]{64})?")


class PodFailure:
    name = "pod-failure"
    recoverable = True
    backends: tuple[str, ...] = ("kubernetes",)
    uses_daemon = False
    requires_duration = True  # as in Chaos Mesh: a pod left running the pause image for ever is no test

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(params) - {"pause_image"})
        if unknown:
            names = ", ".join(unknown)
            raise ChaosSpecError(names, f"kind 'pod-failure' takes only 'pause_image' (got {names})")
        image = params.get("pause_image")
        if image is not None and (not isinstance(image, str) or not IMAGE.fullmatch(image)):
            raise ChaosSpecError("pause_image", f"must be an image reference the nodes hold, like "
                                                f"'registry.k8s.io/pause:3.10'; got {image!r}")
        return {"pause_image": image}

    def inject(self, ctx: InjectContext, target: Target, params: Mapping[str, Any]) -> None:
        api = _pods(ctx.backend)
        first = _first_of_pod(ctx.targets, target)
        pod = f"{target.namespace}/{target.pod}"
        if first is target:
            if not target.node:
                raise ChaosError(f"pod {pod} is not on a node yet: no pause image to choose")
            assert ctx.duration_s is not None  # required by the spec
            image = pod_failure.choose_pause_image(api, target.node, params.get("pause_image"))
            record = pod_failure.fail_pod(api, target.namespace or "", target.pod or "", target.pod_uid or "",
                                          target.injection_id, image, ctx.owner, ctx.duration_s)
            others = len(record.holders) - 1
            target.detail = (f"pod {pod}: every container's image set to {image}"
                             + (f" (already failed by {others} other pod-failure(s); its originals kept)"
                                if others else ""))
            target.mechanism = f"image {image} (pod annotation {pod_failure.ANNOTATION})"
        else:
            target.injection_id = first.injection_id  # the pod's one failure: recovered by its holder's id
            target.detail = f"pod {pod} failed once, with its container {first.container}"
            target.mechanism = first.mechanism
        target.output = target.detail
        target.state = "applied"

    def recover(self, backend: Backend, targets: Sequence[Target]) -> None:
        """End the failure of each pod among ``targets`` (once per pod) and settle every target."""
        by_pod: dict[tuple[str | None, str | None], list[Target]] = {}
        for target in targets:
            by_pod.setdefault((target.namespace, target.pod), []).append(target)
        for group in by_pod.values():
            holder = group[0]  # the pod's targets share its one failure's id
            try:
                detail = pod_failure.restore_pod(_pods(backend), holder.namespace or "", holder.pod or "",
                                                 holder.pod_uid or "", holder.injection_id)
                state = "recovered"
            except pod_failure.PodGone as err:  # nothing of the fault is left: as a daemon counts a gone target
                detail, state = f"{err}; counted as recovered", "recovered"
            except ChaosError as err:
                detail, state = f"not recovered: {err}", "failed"
            for target in group:
                target.state, target.detail = state, detail


def _pods(backend: Backend) -> PodApi:
    api = backend.pod_api()
    if api is None:
        raise ChaosError(f"kind 'pod-failure' changes pods, and the {backend.name} backend's targets are not pods: "
                         "use --chaos-backend=kubernetes")
    return api


def _first_of_pod(targets: Sequence[Target], target: Target) -> Target:
    return next((t for t in targets if (t.namespace, t.pod) == (target.namespace, target.pod)), target)
