"""Pinned versions, paths and defaults shared by every part of the cluster tool.

Everything the tool writes lives outside the repository:

* ``CACHE_ROOT`` (``/var/cache/pytest-chaos``) holds built binaries and image
  tarballs keyed by version or digest, so a second ``build``/``up`` finds them
  and takes seconds;
* ``STATE_DIR`` (``/var/lib/pytest-chaos-cluster``) holds the running
  cluster's kind config, kubeconfig and build logs.

Both can be overridden with environment variables (``PYTEST_CHAOS_CACHE``,
``PYTEST_CHAOS_CLUSTER_STATE``) or CLI flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Newest Kubernetes 1.34 patch served by the Go module proxy when this was pinned. 1.34 is the newest line
#: whose kubelet runs on a cgroup v1 host by default, and that accepts Debian's containerd 1.6 CRI.
K8S_VERSION = "v1.34.4"
#: etcd built from go.etcd.io/etcd/server/v3 (3.6 is what Kubernetes 1.34 recommends).
ETCD_VERSION = "v3.6.16"

CACHE_ROOT = Path(os.environ.get("PYTEST_CHAOS_CACHE", "/var/cache/pytest-chaos"))
STATE_DIR = Path(os.environ.get("PYTEST_CHAOS_CLUSTER_STATE", "/var/lib/pytest-chaos-cluster"))

#: Images built here: the sandbox image (in the node image), the target and the daemon (loaded with kind).
PAUSE_IMAGE = "localhost/pytest-chaos/pause:1"
BUSYBOX_IMAGE = "localhost/pytest-chaos/busybox:1"
DAEMON_IMAGE = "localhost/pytest-chaos/daemon:dev"
#: Base image for daemon/Dockerfile (a Debian bookworm rootfs made with mmdebstrap).
DAEMON_BASE_IMAGE = "localhost/pytest-chaos/debian-python:bookworm"


@dataclass(frozen=True)
class Layout:
    """File locations for one cluster instance (derived from a state dir)."""

    state: Path = STATE_DIR
    cache: Path = CACHE_ROOT
    k8s_version: str = K8S_VERSION
    etcd_version: str = ETCD_VERSION

    @property
    def k8s_bin(self) -> Path:
        return self.cache / f"k8s-{self.k8s_version}" / "bin"

    @property
    def etcd_bin(self) -> Path:
        return self.cache / f"etcd-{self.etcd_version}" / "bin"

    @property
    def images_cache(self) -> Path:
        return self.cache / "images"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def kubeconfig(self) -> Path:
        """The cluster's admin kubeconfig, written by ``pytest-chaos-cluster up``."""
        return self.state / "kind" / "kubeconfig"

    def binary(self, name: str) -> Path:
        """Path of a cached binary (``etcd`` or a Kubernetes component)."""
        if name == "etcd":
            return self.etcd_bin / "etcd"
        return self.k8s_bin / name
