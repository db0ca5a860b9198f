"""pytest-chaos-cluster: a single-node Kubernetes cluster from upstream components.

Builds the Kubernetes and etcd binaries from the Go module proxy, runs them with
Debian's containerd, and brings a node Ready for the project's end-to-end tests
(``python -m pytest_chaos_cluster up|down|status|build``). Standard library only.

Modules: settings (pins, paths), build (binaries), pki (certs, kubeconfigs),
images (local OCI/Docker images), containerd (CRI config), network (CNI, teardown),
components (component flags, start/stop, health), procs (process handling),
cleanup (mounts, leftovers), cluster (up/down/status), cli (argparse).
"""

from .settings import ETCD_VERSION, K8S_VERSION

__all__ = ["ETCD_VERSION", "K8S_VERSION"]
