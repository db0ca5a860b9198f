"""The ``up``, ``down`` and ``status`` operations, composed from the other modules.

``up`` records its choices (containerd mode, node, repo) in ``<state>/cluster.json``
so that ``down`` and ``status`` act on the same instance.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

from . import build, cleanup, components, images, network, pki, settings
from .containerd import Containerd, ensure_running, pod_containers, remove_containers, stop_if_ours
from .procs import ManagedProcess
from .util import ClusterError, log, require_tools

#: executable -> Debian package providing it.
RUNTIME_TOOLS = {
    "containerd": "containerd", "ctr": "containerd", "containerd-shim-runc-v2": "containerd",
    "runc": "runc", "iptables": "iptables", "iptables-save": "iptables",
    "ip": "iproute2", "openssl": "openssl", "mount": "mount", "umount": "mount",
}
DAEMON_IMAGE_TOOLS = {"docker": "docker.io", "dockerd": "docker.io", "mmdebstrap": "mmdebstrap"}
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")


def check_prerequisites(daemon_image: bool) -> None:
    """Raise ClusterError naming each missing Debian package."""
    if os.geteuid() != 0:
        raise ClusterError("the cluster tool must run as root")
    tools = dict(RUNTIME_TOOLS)
    if daemon_image:
        tools.update(DAEMON_IMAGE_TOOLS)
    problems = []
    try:
        require_tools(tools)
    except ClusterError as exc:
        problems.append(str(exc).split("\n", 1)[1])
    for plugin in CNI_PLUGINS:
        if not (Path(settings.CNI_BIN_DIR) / plugin).is_file():
            problems.append(f"  {settings.CNI_BIN_DIR}/{plugin}: install containernetworking-plugins")
    try:
        images.busybox_path()
    except ClusterError:
        problems.append("  static /bin/busybox: install busybox-static")
    if problems:
        raise ClusterError("missing prerequisites (apt-get install the packages named):\n"
                           + "\n".join(problems))


def node_identity(node_ip: str | None) -> components.Node:
    return components.Node(name=socket.gethostname().split(".")[0].lower(),
                           ip=node_ip or network.node_ip())


def _record_path(layout: settings.Layout) -> Path:
    return layout.state / "cluster.json"


def _recorded(layout: settings.Layout) -> dict[str, str]:
    try:
        return json.loads(_record_path(layout).read_text())
    except (OSError, ValueError):
        return {}


def _instance(layout: settings.Layout, mode: str | None = None) -> Containerd:
    return Containerd.for_mode(mode or _recorded(layout).get("containerd", "system"), layout)


def deploy_dir(layout: settings.Layout, inst: Containerd, repo: Path) -> Path:
    """Where ``kubectl apply -k`` finds the daemon manifests for this cluster.

    With the system containerd that is the repository's ``daemon/deploy``; with a
    dedicated containerd, an overlay (written here) that points the DaemonSet's
    socket hostPath at the dedicated socket.
    """
    base = repo / "daemon" / "deploy"
    if inst.mode == "system":
        return base
    overlay = layout.state / "deploy"
    overlay.mkdir(parents=True, exist_ok=True)
    patch = [{"op": "replace", "path": "/spec/template/spec/volumes/0/hostPath/path",
              "value": inst.socket}]
    (overlay / "kustomization.yaml").write_text(json.dumps({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(base, overlay)],
        "patches": [{"target": {"kind": "DaemonSet", "name": "chaos-daemon"},
                     "patch": json.dumps(patch)}],
    }, indent=2) + "\n")
    return overlay


def up(layout: settings.Layout, *, repo: Path, daemon_image: bool, timeout: float,
       node_ip: str | None, containerd_mode: str, restart_containerd: bool) -> None:
    t0 = time.monotonic()
    check_prerequisites(daemon_image)
    recorded = _recorded(layout).get("containerd")
    if recorded and recorded != containerd_mode and components.processes(layout)["kubelet"].running():
        raise ClusterError(f"the running cluster uses the {recorded} containerd; run `down` first")
    build.build_all(layout)
    pause = build.build_pause(layout)
    node = node_identity(node_ip)
    log(f"node {node.name}, IP {node.ip}; state in {layout.state}")
    for d in (layout.state, layout.logs, layout.run, layout.config):
        d.mkdir(parents=True, exist_ok=True)
    inst = Containerd.for_mode(containerd_mode, layout)
    _record_path(layout).write_text(json.dumps(
        {"containerd": inst.mode, "socket": inst.socket, "node": node.name, "node_ip": node.ip,
         "repo": str(repo)}, indent=2) + "\n")
    if pki.ensure_pki(layout.pki, node.name, node.ip):
        log(f"generated CA, certificates and service-account keys in {layout.pki}")
    pki.write_admin_kubeconfig_embedded(layout.admin_kubeconfig, layout.pki, components.APISERVER_URL)
    sandbox_image = ensure_running(inst, layout, restart_containerd)
    network.write_cni_config()
    network.prepare_netns_dir()
    images.ensure_base_images(inst, layout, pause, sandbox_image)

    errors: list[BaseException] = []

    def build_daemon_image() -> None:
        try:
            images.ensure_daemon_image(inst, layout, repo)
        except BaseException as exc:  # reported after the control plane is up
            errors.append(exc)

    worker = None
    if daemon_image:
        worker = threading.Thread(target=build_daemon_image, name="daemon-image")
        worker.start()
    try:
        components.start_all(layout, node, timeout, inst.socket)
    finally:
        if worker is not None:
            worker.join()
    if errors:
        raise ClusterError(f"the cluster is up, but building the daemon image failed: {errors[0]}")
    kubectl = layout.binary("kubectl")
    log(f"cluster up in {time.monotonic() - t0:.1f}s: node {node.name} Ready")
    daemon = settings.DAEMON_IMAGE if daemon_image else "(daemon image skipped)"
    print(f"""
Kubernetes {layout.k8s_version} is running (node {node.name}, {node.ip}).
containerd: {inst.mode}, {inst.socket}
  export KUBECONFIG={layout.admin_kubeconfig}
  export PATH={kubectl.parent}:$PATH
images: {settings.BUSYBOX_IMAGE} (targets), {daemon}
deploy the daemon: kubectl apply -k {deploy_dir(layout, inst, repo)}
logs: {layout.logs}/<component>.log    stop: python -m pytest_chaos_cluster down
kubeconfig:""")
    print(layout.admin_kubeconfig)


def _known_pod_uids(layout: settings.Layout) -> set[str]:
    """UIDs of pods this cluster ran: from the API (if up), the kubelet's pods dir,
    and what an earlier, interrupted ``down`` recorded. Persisted for a re-run."""
    uids: set[str] = set()
    record = layout.run / "pod-uids"
    if record.is_file():
        uids |= set(record.read_text().split())
    pods_dir = layout.kubelet_root / "pods"
    if pods_dir.is_dir():
        uids |= {p.name for p in pods_dir.iterdir()}
    if components.processes(layout)["kube-apiserver"].running() and components.apiserver_ready(layout):
        out = components.kubectl(layout, "get", "pods", "--all-namespaces", "-o",
                                 "jsonpath={.items[*].metadata.uid}", check=False, timeout=30)
        uids |= set(out.stdout.split())
    if uids:
        layout.run.mkdir(parents=True, exist_ok=True)
        record.write_text("\n".join(sorted(uids)) + "\n")
    return uids


def down(layout: settings.Layout, *, keep_data: bool, purge: bool) -> None:
    t0 = time.monotonic()
    inst = _instance(layout)
    procs = components.processes(layout)
    pod_uids = _known_pod_uids(layout)
    if (procs["kubelet"].running() and procs["kube-apiserver"].running()
            and components.apiserver_ready(layout)):
        # Controllers off first so nothing is re-created, then let the kubelet tear
        # pods down properly (CNI DEL releases IPs, veths and portmap rules).
        procs["kube-controller-manager"].stop()
        procs["kube-scheduler"].stop()
        log("deleting all pods through the API (the kubelet stops them) ...")
        components.kubectl(layout, "delete", "pods", "--all", "--all-namespaces",
                           "--grace-period=1", "--wait=true", "--timeout=60s",
                           check=False, timeout=90)
    stopped = components.stop_all(layout)
    if stopped:
        log(f"stopped {', '.join(stopped)}")
    pod_uids |= _known_pod_uids(layout)
    leftovers = pod_containers(inst, None if inst.mode == "dedicated" else pod_uids)
    remove_containers(inst, leftovers)
    if leftovers:
        log(f"removed {len(leftovers)} leftover pod containers/sandboxes from containerd (k8s.io)")
    cleanup.kill_strays(layout, inst, None if inst.mode == "dedicated" else set(leftovers))
    unmounted = cleanup.unmount_all(layout, inst)
    if unmounted:
        log(f"unmounted {unmounted} leftover mounts")
    network.teardown()
    stop_if_ours(inst, layout)
    if (layout.run / "dockerd.pid").is_file():
        ManagedProcess("dockerd", shutil.which("dockerd") or "/usr/sbin/dockerd",
                       layout.run, layout.logs).stop()
    cleanup.unmount_all(layout, inst)
    cleanup.remove_dirs(layout, inst, keep_data,
                        None if inst.mode == "dedicated" else set(leftovers), pod_uids)
    cleanup.remove_cgroups()
    (layout.run / "pod-uids").unlink(missing_ok=True)
    if purge:
        network.conf_remove()
        shutil.rmtree(layout.state, ignore_errors=True)
        if inst.mode == "dedicated":
            shutil.rmtree(Path(inst.socket).parent, ignore_errors=True)
        log(f"purged {layout.state} and {settings.CNI_CONF_FILE}")
    log(f"cluster down in {time.monotonic() - t0:.1f}s")


def status(layout: settings.Layout) -> bool:
    """Print what runs and whether the node is Ready; returns True if all is well."""
    inst = _instance(layout)
    procs = components.processes(layout)
    ok = True
    print(f"state dir: {layout.state}")
    for name in components.ORDER:
        pid = procs[name].pid()
        ok = ok and pid is not None
        print(f"  {name:24} {f'running (pid {pid})' if pid else 'not running'}")
    serving = inst.serving_pids(inst.process(layout))
    ours = inst.process(layout).pid()
    desc = (f"running (pid {serving[0]}{', ours' if serving[0] == ours else ''}; {inst.mode}, {inst.socket})"
            if serving else f"not running ({inst.mode}, {inst.socket})")
    ok = ok and bool(serving)
    print(f"  {'containerd':24} {desc}")
    if procs["kube-apiserver"].running() and components.apiserver_ready(layout):
        node = node_identity(_recorded(layout).get("node_ip"))
        ready, why = components.node_status(layout, node)
        print(f"  node {node.name:19} {why}")
        ok = ok and ready
        pods = components.kubectl(layout, "get", "pods", "-A", "--no-headers", check=False).stdout
        print(f"  {'pods':24} {len(pods.splitlines())}")
        print(f"kubeconfig: {layout.admin_kubeconfig}")
    else:
        print("  kube-apiserver not ready")
        ok = False
    return ok


def build_only(layout: settings.Layout, force: bool) -> None:
    build.build_all(layout, force)
