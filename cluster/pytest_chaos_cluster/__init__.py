"""pytest-chaos-cluster: the project's multi-node test bed, a real kind cluster built without a registry.

Builds kind, CoreDNS, the Kubernetes and etcd binaries from the Go module proxy,
a Debian base image and a kind node image with every image kubeadm needs, then
creates a cluster of one control plane and two workers with its own pod
network (``python -m pytest_chaos_cluster build|up|down|status``). A second
bed, ``vm build|run``, boots Debian 12's stock kernel under qemu (cgroup v2 only,
netem, containerd 2.x) and runs one command in it. Standard library only; drives
go, mmdebstrap, docker, kind and qemu as programs.

Modules: settings (pins, paths), build (binaries), images (images made here),
kind.images (kind, the base and node images), kind.network (the pod network),
kind.bed (up/down/status), vm (the VM bed: vm.image, vm.machine, vm/guest_init.sh),
cli (argparse), native/ (runc-bounded-caps).
"""

from .settings import ETCD_VERSION, K8S_VERSION

__all__ = ["ETCD_VERSION", "K8S_VERSION"]
