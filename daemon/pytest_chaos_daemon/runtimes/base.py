"""What every container runtime client offers: resolving a container to a host PID, and killing it."""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..errors import InvalidArgument

if TYPE_CHECKING:
    from ..confinement.target import HeldTarget

# Container ids and names as containerd, Docker and CRI-O accept them: a
# conservative superset that still keeps '/', '?', '%', spaces and control
# characters out of the URLs and gRPC calls built from them.
_CONTAINER_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")


@dataclasses.dataclass(frozen=True)
class RunningContainer:
    """A running container as a runtime lists it."""

    container_id: str  # with the runtime's prefix, e.g. "docker://3f2a…"
    name: str
    labels: dict[str, str]


class ContainerRuntime(Protocol):
    """A client of one container runtime, chosen by the container id's prefix."""

    prefix: str  # "containerd", "docker", "cri-o", "pid"
    endpoint: str  # what it talks to, for error messages
    kill_mechanism: str  # how ``kill`` does it, for the user: "containerd task kill (SIGKILL)"

    def pid_of(self, ref: str) -> int:
        """The host PID of the running container ``ref`` (the id without prefix).

        Raises NotFound when there is no such container, FailedPrecondition
        when it is not running, Unavailable when the runtime cannot be reached.
        """
        ...

    def kill(self, ref: str, target: HeldTarget) -> None:
        """SIGKILL the running container ``ref``, whose process ``target`` holds.

        Through the runtime where it has a kill call (containerd: every
        process of the task; Docker: the container), otherwise through the
        held pidfd. Raises NotFound when there is no such container (or it has
        exited), FailedPrecondition when it is not running, Unavailable when
        the runtime cannot be reached, PermissionDenied when the signal is refused.
        """
        ...


@runtime_checkable
class ListingRuntime(ContainerRuntime, Protocol):
    """A runtime that can also list its running containers (containerd, Docker)."""

    def list_running(self) -> list[RunningContainer]:
        """Every running container, with its name and labels. Raises Unavailable when unreachable."""
        ...


def check_container_ref(prefix: str, ref: str) -> str:
    if not _CONTAINER_REF.fullmatch(ref):
        raise InvalidArgument(
            f"container id {prefix}://{ref!r} is malformed: expected letters, digits, "
            "'_', '.' or '-' after the prefix (at most 255 characters)"
        )
    return ref
