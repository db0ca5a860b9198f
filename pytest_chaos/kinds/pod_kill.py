"""pod-kill: delete the selected pods through the Kubernetes API, as Chaos Mesh's PodChaos pod-kill.

One-shot, and the plugin's alone: no daemon is involved. Each pod is deleted
once, however many of its containers were picked; its controller (a
Deployment, a StatefulSet, ...) replaces it, a bare pod stays gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ChaosError, ChaosSpecError
from ..model import Target
from .base import InjectContext


class PodKill:
    name = "pod-kill"
    recoverable = False
    backends: tuple[str, ...] = ("kubernetes",)
    uses_daemon = False

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(params) - {"grace_period"})
        if unknown:
            names = ", ".join(unknown)
            raise ChaosSpecError(names, f"kind 'pod-kill' takes only 'grace_period' (got {names})")
        grace_period = params.get("grace_period", 0)
        if not isinstance(grace_period, int) or isinstance(grace_period, bool) or grace_period < 0:
            raise ChaosSpecError("grace_period", f"must be an integer number of seconds >= 0 (0: at once); "
                                                 f"got {grace_period!r}")
        return {"grace_period": grace_period}

    def inject(self, ctx: InjectContext, target: Target, params: Mapping[str, Any]) -> None:
        grace_period = params["grace_period"]
        pod = f"{target.namespace}/{target.pod}"
        # The pod's first picked container deletes it; the others share its outcome.
        first = next((t for t in ctx.targets if (t.namespace, t.pod) == (target.namespace, target.pod)), target)
        if first is target:
            pods = ctx.backend.pod_api()
            if pods is None:
                raise ChaosError(f"kind '{self.name}' deletes pods, and the {ctx.backend.name} backend's targets are "
                                 "not pods: use --chaos-backend=kubernetes")
            pods.delete_pod(target.namespace or "", target.pod or "", target.pod_uid or "", grace_period)
            target.detail = f"deleted pod {pod} (grace period {grace_period}s)"
        else:
            target.detail = f"pod {pod} deleted once, with its container {first.container}"
        target.output = target.detail
        target.state = "applied"
