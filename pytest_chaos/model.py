"""What a test sees of an experiment: the experiment, its targets, their processes."""

from __future__ import annotations

import dataclasses
import time
from typing import Any


@dataclasses.dataclass(frozen=True)
class Process:
    """One row of a target's process list, as seen inside the target's pid namespace."""

    pid: int
    user: str
    command: str


@dataclasses.dataclass
class Target:
    """One container or process a fault was applied to."""

    container_id: str
    pid: int = 0  # host PID, as the daemon resolved it
    output: str = ""  # what the fault command printed, unchanged
    processes: list[Process] = dataclasses.field(default_factory=list)
    name: str = ""  # container name where the runtime has one
    namespace: str | None = None  # Kubernetes fields; None outside Kubernetes
    pod: str | None = None
    pod_uid: str | None = None  # the selected pod's, so a same-name replacement is never mistaken for it
    container: str | None = None
    node: str | None = None
    address: str | None = None  # the pod's IP, where the backend knows it (network faults' peers)
    daemon: str = ""  # address of the daemon that applied the fault
    injection_id: str = ""
    state: str = "pending"  # applied, recovered, expired (the daemon recovered it), failed
    detail: str = ""  # how it ended, or why it failed, as the daemon said
    mechanism: str = ""  # how the fault was made on the node ("cgroup v1 freezer", ...)
    cgroup: str = ""  # the node's cgroup layout, as its daemon said: "cgroup v2", "cgroup v1 (hybrid)", ...
    daemon_version: str = ""  # "pytest-chaos-daemon 0.2.0", from the handshake with its daemon

    def describe(self) -> str:
        """``ns/pod/container on node (id, host pid N)``, ``name (id, ...)`` or ``id (host pid N)``; the pid
        once a daemon has resolved it."""
        pid = f", host pid {self.pid}" if self.pid else ""
        if self.pod:
            return f"{self.namespace}/{self.pod}/{self.container} on {self.node} ({self.container_id}{pid})"
        if self.name:
            return f"{self.name} ({self.container_id}{pid})"
        return f"{self.container_id} (host pid {self.pid})" if self.pid else self.container_id


@dataclasses.dataclass(frozen=True)
class ExperimentSpec:
    """An experiment as a marker or ``chaos.apply`` asked for it, validated."""

    kind: str
    selector: dict[str, Any]
    mode: str = "one"
    value: float | int | None = None
    duration: float | None = None
    container_names: tuple[str, ...] | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        mode = self.mode if self.value is None else f"{self.mode}={self.value:g}"
        return f"{self.kind} mode={mode}"


@dataclasses.dataclass
class Experiment:
    """One applied experiment: its spec, its targets and how it ended."""

    spec: ExperimentSpec
    targets: list[Target] = dataclasses.field(default_factory=list)
    peers: list[Target] = dataclasses.field(default_factory=list)  # what a network fault's ``target`` selected
    # pending, applied (in force), recovered (in teardown), expired (recovered by
    # the daemon: its duration or lease ran out), failed (with ``detail``).
    # Updated while the test runs, so a test can wait for a duration to pass.
    outcome: str = "pending"
    detail: str = ""
    applied_at: float | None = None  # wall clock
    ended_at: float | None = None

    @property
    def kind(self) -> str:
        return self.spec.kind

    def settle(self) -> None:
        """Derive ``outcome`` from the targets once every one has ended: any failure makes it
        ``failed``; all recovered by the daemon, ``expired``; otherwise ``recovered``."""
        if self.outcome != "applied" or any(t.state in ("applied", "pending") for t in self.targets):
            return
        failed = [t for t in self.targets if t.state == "failed"]
        if failed:
            self.outcome = "failed"
            self.detail = "; ".join(f"{t.describe()}: {t.detail}" for t in failed)
        elif all(t.state == "expired" for t in self.targets):
            self.outcome, self.detail = "expired", self.targets[0].detail
        else:
            self.outcome = "recovered"
        self.ended_at = time.time()

    def summary(self) -> str:
        n = len(self.targets)
        ids = ", ".join(t.container_id for t in self.targets)
        line = f"chaos {self.spec.describe()}: {n} target{'s' if n != 1 else ''}"
        line += f" [{ids}]" if ids else ""
        if self.peers:
            line += f" with {len(self.peers)} peer{'s' if len(self.peers) != 1 else ''} " \
                    f"[{', '.join(p.address or p.container_id for p in self.peers)}]"
        line += f" {self.outcome}"
        line = f"{line} ({self.detail})" if self.detail else line
        mechanisms = sorted({f"{t.mechanism} ({t.cgroup})" if t.cgroup else t.mechanism
                             for t in self.targets if t.mechanism})
        line = f"{line}; mechanism: {', '.join(mechanisms)}" if mechanisms else line
        daemons = sorted({t.daemon_version for t in self.targets if t.daemon_version})
        return f"{line}; daemon: {', '.join(daemons)}" if daemons else line
