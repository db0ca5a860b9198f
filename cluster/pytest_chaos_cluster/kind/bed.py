"""The test bed: a real kind cluster (one control plane, two workers) on Docker Engine.

``build`` makes and caches the binaries and images; ``up`` builds what it needs (kind, the node image: see images.py), creates the
cluster from a generated kind config, gives it a pod network (network.py),
waits for every node to be Ready, and loads the daemon and target images with
``kind load docker-image``. Deploying the daemon is left to the README's
commands (``kubectl apply -k daemon/deploy``), which scripts/setup.sh runs.
``down`` deletes the cluster, its Docker network and the host's routes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from .. import settings
from ..build import build_etcd, build_kubernetes
from ..images import build_daemon_image
from ..util import ClusterError, log, run
from . import images, network

CLUSTER_NAME = "pytest-chaos"
DOCKER_NETWORK = "kind"
WORKERS = 2
#: Docker 20.10 gives --privileged containers every capability the kernel knows.
BOUNDED_RUNTIME = "bounded-runc"


def state_dir(layout: settings.Layout) -> Path:
    return layout.kubeconfig.parent


def kubeconfig_path(layout: settings.Layout) -> Path:
    return layout.kubeconfig


def kind_config(layout: settings.Layout, workers: int) -> dict[str, object]:
    """kind's cluster config: our node image's images for kubeadm, our pod network instead of kindnetd."""
    names = images.image_names(layout)
    patch = "\n".join([
        "kind: ClusterConfiguration",
        f"imageRepository: {images.IMAGE_PREFIX}",
        "etcd:",
        "  local:",
        f"    imageTag: {names['etcd'].rsplit(':', 1)[1]}",
        "dns:",
        f"  imageTag: {names['coredns'].rsplit(':', 1)[1]}",
    ])
    return {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "networking": {"disableDefaultCNI": True, "ipFamily": "ipv4",
                       "podSubnet": network.POD_SUBNET, "serviceSubnet": network.SERVICE_SUBNET},
        "kubeadmConfigPatches": [patch],
        "nodes": [{"role": "control-plane"}] + [{"role": "worker"}] * workers,
    }


def check_docker() -> None:
    """Docker Engine runs, and can start a privileged container on this machine."""
    if run(["docker", "version", "--format", "{{.Server.Version}}"], check=False).returncode != 0:
        raise ClusterError("Docker Engine is not running: scripts/setup.sh starts it (kind runs the nodes in it)")
    with open("/proc/self/status") as f:
        bounding = next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    if bounding != (1 << (last_cap + 1)) - 1:
        runtime = run(["docker", "info", "--format", "{{.DefaultRuntime}}"]).stdout.strip()
        if runtime != BOUNDED_RUNTIME:
            raise ClusterError(
                f"this machine's capability bounding set ({bounding:#x}) lacks capabilities Docker gives every "
                f"--privileged container, so kind's nodes cannot start; run dockerd with the runtime "
                f"{BOUNDED_RUNTIME} (scripts/setup.sh does: --add-runtime {BOUNDED_RUNTIME}=<runc-bounded-caps> "
                f"--default-runtime {BOUNDED_RUNTIME}); its default runtime is {runtime!r}")


def _kind(layout: settings.Layout, *args: str, timeout: float = 600) -> str:
    return run([str(images.ensure_kind(layout)), *args], timeout=timeout).stdout


def _kubectl(layout: settings.Layout, *args: str, check: bool = True) -> str:
    return run([str(layout.binary("kubectl")), f"--kubeconfig={kubeconfig_path(layout)}", *args],
               check=check, timeout=300).stdout


def exists(layout: settings.Layout) -> bool:
    return CLUSTER_NAME in _kind(layout, "get", "clusters").split()


def nodes(layout: settings.Layout) -> list[network.Node]:
    listed = json.loads(_kubectl(layout, "get", "nodes", "-o", "json"))["items"]
    result = []
    for item in listed:
        ip = next(a["address"] for a in item["status"]["addresses"] if a["type"] == "InternalIP")
        cidr = item["spec"].get("podCIDR")
        if not cidr:
            raise ClusterError(f"node {item['metadata']['name']} has no pod CIDR yet")
        result.append(network.Node(item["metadata"]["name"], ip, cidr))
    return result


def build(layout: settings.Layout, force: bool = False) -> str:
    """Every binary and image ``up`` needs, built and cached; returns the node image."""
    t0 = time.monotonic()
    check_docker()
    build_kubernetes(layout, force)
    build_etcd(layout, force)
    images.ensure_kind(layout)
    node_image = images.ensure_node_image(layout)
    log(f"built (or found cached) in {time.monotonic() - t0:.0f}s: {node_image}")
    return node_image


def up(layout: settings.Layout, *, repo: Path, workers: int = WORKERS, timeout: float = 300) -> Path:
    """Bring the bed up (or find it up); returns the kubeconfig path."""
    t0 = time.monotonic()
    node_image = build(layout)
    state_dir(layout).mkdir(parents=True, exist_ok=True)
    if exists(layout) and kubeconfig_path(layout).is_file() and _healthy(layout, workers, node_image):
        log(f"kind cluster {CLUSTER_NAME}: already up")
    else:
        if exists(layout):
            log(f"kind cluster {CLUSTER_NAME}: not up as asked (node count, node image or API server), recreating")
            _kind(layout, "delete", "cluster", "--name", CLUSTER_NAME)
        config = state_dir(layout) / "kind-config.json"
        config.write_text(json.dumps(kind_config(layout, workers), indent=2) + "\n")
        log(f"kind create cluster --name {CLUSTER_NAME} --config {config} --image {node_image} ...")
        t1 = time.monotonic()
        _kind(layout, "create", "cluster", "--name", CLUSTER_NAME, "--config", str(config), "--image", node_image,
              "--kubeconfig", str(kubeconfig_path(layout)), "--retain")
        log(f"kind create cluster: {time.monotonic() - t1:.0f}s")
    members = _wait_for_pod_cidrs(layout, workers + 1, timeout)
    network.configure_nodes(members)
    network.add_host_routes(members)
    _kubectl(layout, "wait", "--for=condition=Ready", "node", "--all", f"--timeout={int(timeout)}s")
    log(f"nodes Ready: {', '.join(f'{n.name} ({n.ip}, pods {n.pod_cidr})' for n in members)}")
    _cluster_dns_only(layout)
    load_images(layout, repo)
    log(f"kind bed up in {time.monotonic() - t0:.0f}s; kubeconfig: {kubeconfig_path(layout)}")
    return kubeconfig_path(layout)


def _healthy(layout: settings.Layout, workers: int, node_image: str) -> bool:
    running = run(["docker", "ps", "--filter", f"label=io.x-k8s.kind.cluster={CLUSTER_NAME}",
                   "--format", "{{.Image}}"]).stdout.split()
    if running != [node_image] * (workers + 1):
        return False
    return run([str(layout.binary("kubectl")), f"--kubeconfig={kubeconfig_path(layout)}", "get", "--raw=/readyz"],
               check=False, timeout=20).returncode == 0


def _wait_for_pod_cidrs(layout: settings.Layout, count: int, timeout: float) -> list[network.Node]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            members = nodes(layout)
            if len(members) == count:
                return members
        except ClusterError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise ClusterError(f"{count} nodes with pod CIDRs did not appear within {timeout:.0f}s")
        time.sleep(1)


def _cluster_dns_only(layout: settings.Layout) -> None:
    """CoreDNS answers for cluster.local only: the nodes' resolv.conf names Docker's DNS at 127.0.0.11,
    which pods cannot reach, and forwarding there loops back into CoreDNS (its loop check then stops it)."""
    configmap = json.loads(_kubectl(layout, "-n", "kube-system", "get", "configmap", "coredns", "-o", "json"))
    corefile = configmap["data"]["Corefile"]
    cluster_only = re.sub(r"\n[ \t]*forward \. /etc/resolv\.conf \{[^}]*\}", "", corefile)
    if cluster_only != corefile:
        configmap["data"]["Corefile"] = cluster_only
        run([str(layout.binary("kubectl")), f"--kubeconfig={kubeconfig_path(layout)}", "replace", "-f", "-"],
            input=json.dumps(configmap))
        _kubectl(layout, "-n", "kube-system", "rollout", "restart", "deployment/coredns")
        log("CoreDNS: cluster.local only (no upstream here)")


def load_images(layout: settings.Layout, repo: Path) -> None:
    """The daemon image (daemon/Dockerfile) and the busybox target image, into every node. A daemon image
    that changed under a running DaemonSet gets its pods replaced: the tag is the same, the pods would not."""
    daemon_id = build_daemon_image(layout, repo)
    for image in (settings.DAEMON_IMAGE, images.ensure_busybox_docker_image(layout)):
        t0 = time.monotonic()
        _kind(layout, "load", "docker-image", "--name", CLUSTER_NAME, image)
        log(f"kind load docker-image {image}: {time.monotonic() - t0:.1f}s")
    loaded = state_dir(layout) / "daemon-image.id"
    if loaded.is_file() and loaded.read_text() != daemon_id:
        restarted = run([str(layout.binary("kubectl")), f"--kubeconfig={kubeconfig_path(layout)}", "-n",
                         "chaos-testing", "rollout", "restart", "daemonset/chaos-daemon"], check=False)
        if restarted.returncode == 0:
            log("the daemon image changed: chaos-daemon pods restarted")
    loaded.write_text(daemon_id)


def down(layout: settings.Layout) -> None:
    """Delete the cluster, its Docker network and the host's pod routes (idempotent)."""
    kind = images.kind_binary(layout)
    if kind.is_file() and run(["docker", "version"], check=False).returncode == 0:
        if CLUSTER_NAME in run([str(kind), "get", "clusters"]).stdout.split():
            run([str(kind), "delete", "cluster", "--name", CLUSTER_NAME], timeout=300)
            log(f"kind cluster {CLUSTER_NAME}: deleted")
        if run(["docker", "network", "inspect", DOCKER_NETWORK], check=False).returncode == 0:
            attached = run(["docker", "network", "inspect", "--format", "{{len .Containers}}", DOCKER_NETWORK])
            if attached.stdout.strip() == "0":
                run(["docker", "network", "rm", DOCKER_NETWORK])
                log(f"docker network {DOCKER_NETWORK}: removed")
    removed = network.remove_host_routes()
    if removed:
        log(f"host routes removed: {', '.join(removed)}")
    for written in (kubeconfig_path(layout), state_dir(layout) / "daemon-image.id"):
        if written.exists():
            os.unlink(written)


def leftovers() -> list[str]:
    """What of a bed is still here: node containers, the Docker network, dangling volumes, host routes into
    the pod subnet, mounts of its nodes, Kubernetes' or CNI's iptables chains and rules on the host."""
    found = []
    if run(["docker", "version"], check=False).returncode == 0:
        containers = run(["docker", "ps", "-a", "--filter", f"label=io.x-k8s.kind.cluster={CLUSTER_NAME}",
                          "--format", "{{.Names}}"]).stdout.split()
        found += [f"container {name}" for name in containers]
        if run(["docker", "network", "inspect", DOCKER_NETWORK], check=False).returncode == 0:
            found.append(f"docker network {DOCKER_NETWORK}")
        dangling = run(["docker", "volume", "ls", "-q", "--filter", "dangling=true"]).stdout.split()
        found += [f"docker volume {v}" for v in dangling]
    subnet = network.POD_SUBNET.rsplit(".", 2)[0] + "."
    found += [f"route {line.split()[0]}" for line in run(["ip", "-4", "route", "show"]).stdout.splitlines()
              if line.startswith(subnet)]
    with open("/proc/self/mountinfo") as f:
        found += [f"mount {line.split()[4]}" for line in f if f"{CLUSTER_NAME}-" in line.split()[4]]
    # Kubernetes' and the CNI plugins' chains belong in the nodes' network namespaces, never on the host.
    for save in ("iptables-save", "iptables-legacy-save"):
        listed = run([save], check=False).stdout if shutil.which(save) else ""
        found += [f"iptables chain {line.split()[0][1:]} ({save})" for line in listed.splitlines()
                  if re.match(r":(KUBE|CNI|KIND)-", line)]
        found += [f"iptables rule {line!r} ({save})" for line in listed.splitlines() if subnet in line]
    return found


def status(layout: settings.Layout) -> bool:
    if not kubeconfig_path(layout).is_file():
        print(f"kind cluster {CLUSTER_NAME}: not up (no {kubeconfig_path(layout)})")
        return False
    proc = run([str(layout.binary("kubectl")), f"--kubeconfig={kubeconfig_path(layout)}", "get", "nodes", "-o",
                "wide"], check=False, timeout=30)
    print(proc.stdout or proc.stderr)
    return proc.returncode == 0 and " NotReady " not in proc.stdout
