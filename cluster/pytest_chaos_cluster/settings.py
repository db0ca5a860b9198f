"""Pinned versions, paths and defaults shared by every part of the cluster tool.

Everything the tool writes lives outside the repository:

* ``CACHE_ROOT`` (``/var/cache/pytest-chaos``) holds built binaries keyed by
  version, so a second ``build``/``up`` finds them and takes seconds;
* ``STATE_DIR`` (``/var/lib/pytest-chaos-cluster``) holds the running
  cluster's certificates, kubeconfigs, component configs, logs and pid files.

Both can be overridden with environment variables (``PYTEST_CHAOS_CACHE``,
``PYTEST_CHAOS_CLUSTER_STATE``) or CLI flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Newest Kubernetes 1.34 patch served by the Go module proxy when this was pinned.
#: 1.34 is the safest line with Debian's containerd 1.6 CRI (DESIGN.md section 6).
K8S_VERSION = "v1.34.4"
#: etcd built from go.etcd.io/etcd/server/v3 (3.6 is what Kubernetes 1.34 recommends).
ETCD_VERSION = "v3.6.16"

CACHE_ROOT = Path(os.environ.get("PYTEST_CHAOS_CACHE", "/var/cache/pytest-chaos"))
STATE_DIR = Path(os.environ.get("PYTEST_CHAOS_CLUSTER_STATE", "/var/lib/pytest-chaos-cluster"))

#: Images built locally and imported into containerd's ``k8s.io`` namespace.
PAUSE_IMAGE = "localhost/pytest-chaos/pause:1"
BUSYBOX_IMAGE = "localhost/pytest-chaos/busybox:1"
DAEMON_IMAGE = "localhost/pytest-chaos/daemon:dev"
#: Base image for daemon/Dockerfile (a Debian bookworm rootfs made with mmdebstrap).
DAEMON_BASE_IMAGE = "localhost/pytest-chaos/debian-python:bookworm"

CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
CONTAINERD_CONFIG = Path("/etc/containerd/config.toml")
CNI_BIN_DIR = "/usr/lib/cni"
CNI_CONF_DIR = Path("/etc/cni/net.d")
CNI_CONF_FILE = CNI_CONF_DIR / "10-pytest-chaos-bridge.conflist"
CNI_BRIDGE = "cni0"
CNI_NETWORK_NAME = "pytest-chaos"

POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
CLUSTER_DOMAIN = "cluster.local"

ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
APISERVER_PORT = 6443
KUBELET_PORT = 10250


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
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def run(self) -> Path:
        return self.state / "run"

    @property
    def config(self) -> Path:
        return self.state / "config"

    @property
    def etcd_data(self) -> Path:
        return self.state / "etcd"

    @property
    def kubelet_root(self) -> Path:
        """The kubelet's --root-dir (not /var/lib/kubelet: ours alone, removed by ``down``)."""
        return self.state / "kubelet"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.state / "admin.kubeconfig"

    @property
    def kind_kubeconfig(self) -> Path:
        """The kind bed's admin kubeconfig (``pytest-chaos-cluster kind up``)."""
        return self.state / "kind" / "kubeconfig"

    def binary(self, name: str) -> Path:
        """Path of a cached binary (``etcd`` or a Kubernetes component)."""
        if name == "etcd":
            return self.etcd_bin / "etcd"
        return self.k8s_bin / name
