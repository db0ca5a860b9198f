"""Container runtime clients, one module per runtime, chosen by container id prefix."""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import InvalidArgument
from .base import ContainerRuntime, ListingRuntime, RunningContainer

__all__ = ["ContainerRuntime", "ListingRuntime", "RunningContainer", "RuntimeRegistry"]


class RuntimeRegistry:
    """Maps a container id's prefix (``containerd://``, ...) to the runtime client."""

    def __init__(self, runtimes: Mapping[str, ContainerRuntime]) -> None:
        self._runtimes = dict(runtimes)

    @property
    def prefixes(self) -> list[str]:
        return [f"{name}://" for name in self._runtimes]

    @property
    def names(self) -> list[str]:
        return list(self._runtimes)

    def all(self) -> dict[str, ContainerRuntime]:
        """Every runtime, by name (containerd, docker, cri-o, pid)."""
        return dict(self._runtimes)

    def listing(self) -> dict[str, ListingRuntime]:
        """The runtimes that can list their running containers, by name."""
        return {name: runtime for name, runtime in self._runtimes.items() if isinstance(runtime, ListingRuntime)}

    def name_of(self, container_id: str) -> str:
        """The runtime an id belongs to (its prefix); raises InvalidArgument for an unknown one."""
        return self.split(container_id)[0].prefix

    def endpoint_of(self, container_id: str) -> str:
        return self.split(container_id)[0].endpoint

    def split(self, container_id: str) -> tuple[ContainerRuntime, str]:
        prefix, sep, ref = container_id.partition("://")
        runtime = self._runtimes.get(prefix) if sep else None
        if runtime is None:
            raise InvalidArgument(
                f"container id {container_id[:300]!r} has no known runtime prefix; "
                f"accepted prefixes: {', '.join(self.prefixes)}"
            )
        return runtime, ref

    def pid_of(self, container_id: str) -> int:
        runtime, ref = self.split(container_id)
        return runtime.pid_of(ref)
