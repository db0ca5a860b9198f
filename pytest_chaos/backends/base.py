"""The interface a backend implements: validate selectors, list candidate targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ChaosError, ChaosSpecError
from ..model import Target

if TYPE_CHECKING:  # the transport loads gRPC: a backend is built before the run knows it needs one
    from ..transport import ClientTls


class PodConflict(ChaosError):
    """A conditional pod patch found the pod changed since it was read: read it again and retry."""


class PodPatchRefused(ChaosError):
    """The API refused a pod patch as unprocessable: one of its ``test`` operations failed (the pod changed),
    or the patch is invalid; the API does not say which."""


class PodApi(Protocol):
    """What a backend whose targets are pods offers the kinds that act on a pod itself (pod-kill, pod-failure)."""

    def delete_pod(self, namespace: str, name: str, uid: str, grace_period_s: int) -> None:
        """Delete pod ``name`` if it is still the one selected (``uid``); raises ChaosError when refused."""
        ...

    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The pod as the API's JSON; None if there is none of that name."""
        ...

    def patch_pod(self, namespace: str, name: str, operations: list[dict[str, Any]]) -> None:
        """Apply a JSON patch (RFC 6902) to the pod; raises PodConflict on a conflict, PodPatchRefused when it
        is unprocessable (a failed ``test`` operation among others), ChaosError when the API refuses it."""
        ...

    def marked_pods(self, label: str) -> list[dict[str, Any]]:
        """Every pod, in every namespace, that carries the label ``label``."""
        ...

    def node_images(self, node: str) -> list[str]:
        """The image names the node reports holding (its status.images; the kubelet reports at most 50)."""
        ...


class Backend(Protocol):
    name: str

    @property
    def selector_keys(self) -> Mapping[str, str]:
        """Selector keys the backend understands, with a one-line meaning each."""
        ...

    def check_selector(self, selector: Mapping[str, Any], container_names: Sequence[str] | None) -> dict[str, Any]:
        """A validated copy of ``selector``; raises ChaosSpecError naming the bad field."""
        ...

    def candidates(self, selector: Mapping[str, Any], container_names: Sequence[str] | None) -> list[list[Target]]:
        """What the selector matches, before the mode picks: units the mode picks whole
        (a pod with its chosen containers; a single container or process)."""
        ...

    def daemon_address(self, target: Target, refresh: bool = False) -> str:
        """The address of the daemon that can reach ``target``; raises ChaosError if none can.

        A backend may remember it per node; ``refresh`` looks it up again (the node's daemon was replaced)."""
        ...

    def client_tls(self) -> ClientTls | None:
        """Credentials for mutual TLS with the daemons; None for plaintext."""
        ...

    def pod_api(self) -> PodApi | None:
        """The pods' API where targets are pods of a cluster; None where they are not."""
        ...

    def describe(self) -> str:
        """One line for the run's header."""
        ...

    def close(self) -> None: ...


def check_selector_keys(selector: Mapping[str, Any], accepted: Mapping[str, str], backend: str) -> None:
    """Reject unknown and empty selectors, naming the accepted keys."""
    unknown = sorted(map(str, set(selector) - set(accepted)))  # keys of any type: YAML's 1, true, null
    if unknown:
        raise ChaosSpecError(
            f"selector.{unknown[0]}",
            f"unknown selector key for the {backend} backend; accepted keys: {', '.join(accepted)}",
        )
    if not selector:
        raise ChaosSpecError("selector", f"is empty; give at least one of: {', '.join(accepted)}")
