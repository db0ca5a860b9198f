"""The control-plane and node processes: their flags, configs, start order and health.

Start order: etcd → kube-apiserver (wait for /readyz) → RBAC for the
apiserver's kubelet client → kube-controller-manager, kube-scheduler → kubelet.
Stop order is the reverse (kubelet first). Everything listens on 127.0.0.1
except the kubelet (node IP :10250, so the API server reaches it for logs, exec
and port-forward); the API server listens on 127.0.0.1:6443 and advertises the
node IP.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import settings
from .pki import write_kubeconfig
from .procs import ManagedProcess
from .util import ClusterError, log, run

ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")
APISERVER_URL = f"https://127.0.0.1:{settings.APISERVER_PORT}"


@dataclass(frozen=True)
class Node:
    """Identity of this machine as a Kubernetes node."""

    name: str
    ip: str


def processes(layout: settings.Layout) -> dict[str, ManagedProcess]:
    """The managed processes, by component name."""
    return {name: ManagedProcess(name, layout.binary(name), layout.run, layout.logs) for name in ORDER}


def kubeconfig(layout: settings.Layout, who: str) -> Path:
    return layout.config / f"{who}.kubeconfig"


def write_kubeconfigs(layout: settings.Layout, node: Node) -> None:
    pki = layout.pki
    write_kubeconfig(kubeconfig(layout, "controller-manager"), pki, "system:kube-controller-manager",
                     "controller-manager", APISERVER_URL)
    write_kubeconfig(kubeconfig(layout, "scheduler"), pki, "system:kube-scheduler", "scheduler",
                     APISERVER_URL)
    write_kubeconfig(kubeconfig(layout, "kubelet"), pki, f"system:node:{node.name}", "kubelet-client",
                     APISERVER_URL)


def etcd_args(layout: settings.Layout) -> list[str]:
    pki = layout.pki
    client = f"https://127.0.0.1:{settings.ETCD_CLIENT_PORT}"
    peer = f"http://127.0.0.1:{settings.ETCD_PEER_PORT}"
    return [
        "--name=default", f"--data-dir={layout.etcd_data}",
        f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=default={peer}", "--listen-metrics-urls=http://127.0.0.1:2381",
        f"--cert-file={pki / 'etcd-server.crt'}", f"--key-file={pki / 'etcd-server.key'}",
        f"--trusted-ca-file={pki / 'ca.crt'}", "--client-cert-auth=true",
        # A throw-away test cluster: durability is not worth the fsync latency.
        "--unsafe-no-fsync=true", "--snapshot-count=10000", "--log-level=warn",
    ]


def apiserver_args(layout: settings.Layout, node: Node) -> list[str]:
    pki = layout.pki
    return [
        "--bind-address=127.0.0.1", f"--secure-port={settings.APISERVER_PORT}",
        f"--advertise-address={node.ip}",
        f"--etcd-servers=https://127.0.0.1:{settings.ETCD_CLIENT_PORT}",
        f"--etcd-cafile={pki / 'ca.crt'}",
        f"--etcd-certfile={pki / 'apiserver-etcd-client.crt'}",
        f"--etcd-keyfile={pki / 'apiserver-etcd-client.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        f"--service-account-issuer=https://kubernetes.default.svc.{settings.CLUSTER_DOMAIN}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={settings.SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
        "--allow-privileged=true", "--profiling=false", "--v=1",
    ]


def controller_manager_args(layout: settings.Layout) -> list[str]:
    pki, kc = layout.pki, kubeconfig(layout, "controller-manager")
    return [
        f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
        "--bind-address=127.0.0.1", "--leader-elect=false",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
        f"--root-ca-file={pki / 'ca.crt'}", f"--service-account-private-key-file={pki / 'sa.key'}",
        "--use-service-account-credentials=true", f"--service-cluster-ip-range={settings.SERVICE_CIDR}",
        "--allocate-node-cidrs=false", "--node-monitor-period=2s", "--profiling=false", "--v=1",
    ]


def scheduler_args(layout: settings.Layout) -> list[str]:
    kc = kubeconfig(layout, "scheduler")
    return [f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false", "--v=1"]


def kubelet_config(layout: settings.Layout, node: Node, runtime_socket: str) -> dict[str, object]:
    """KubeletConfiguration (JSON is valid YAML; the kubelet reads either)."""
    pki = layout.pki
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.ip,
        "port": settings.KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki / "kubelet.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet.key"),
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{runtime_socket}",
        # containerd 1.6.20 does not pin the sandbox image: never garbage-collect images.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "clusterDomain": settings.CLUSTER_DOMAIN,
        "resolvConf": "/etc/resolv.conf",
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        # CI disks can be fuller than the kubelet's defaults tolerate.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%",
                         "nodefs.inodesFree": "2%", "imagefs.available": "2%"},
        "registerNode": True,
    }


def kubelet_args(layout: settings.Layout, node: Node, runtime_socket: str) -> list[str]:
    cfg = layout.config / "kubelet.json"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(json.dumps(kubelet_config(layout, node, runtime_socket), indent=2) + "\n")
    return [f"--config={cfg}", f"--kubeconfig={kubeconfig(layout, 'kubelet')}",
            f"--root-dir={layout.kubelet_root}", f"--hostname-override={node.name}",
            f"--node-ip={node.ip}", "--v=1"]


# --- health ---------------------------------------------------------------------------

def _admin_ssl(layout: settings.Layout) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(layout.pki / "ca.crt"))
    ctx.load_cert_chain(str(layout.pki / "admin.crt"), str(layout.pki / "admin.key"))
    return ctx


def apiserver_ready(layout: settings.Layout) -> bool:
    try:
        with urllib.request.urlopen(f"{APISERVER_URL}/readyz", context=_admin_ssl(layout),
                                    timeout=3) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def kubectl(layout: settings.Layout, *args: str, check: bool = True, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the cached kubectl with the admin kubeconfig."""
    return run([str(layout.binary("kubectl")), f"--kubeconfig={layout.admin_kubeconfig}", *args],
               check=check, input=input, timeout=timeout)


def wait_for(what: str, check: Callable[[], bool], timeout: float, proc: ManagedProcess | None,
             hint: str = "") -> None:
    """Poll ``check()`` until true; on timeout or early exit, name the log to read."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and not proc.running():
            raise ClusterError(f"{proc.name} exited while waiting for {what}; see {proc.logfile}:\n"
                               f"{proc.log_tail()}")
        time.sleep(0.5)
    where = f"; check {proc.name}'s log {proc.logfile}" if proc else ""
    tail = f":\n{proc.log_tail()}" if proc else ""
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}{where}{hint}{tail}")


def node_status(layout: settings.Layout, node: Node) -> tuple[bool, str]:
    """(ready, human-readable reason) for the node, as the API server sees it."""
    proc = kubectl(layout, "get", "node", node.name, "-o", "json", check=False, timeout=15)
    if proc.returncode != 0:
        return False, "node not registered yet"
    obj = json.loads(proc.stdout)
    conds = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
    ready = conds.get("Ready", {})
    taints = [t["key"] for t in obj.get("spec", {}).get("taints", []) or []]
    if ready.get("status") != "True":
        return False, f"Ready={ready.get('status', '?')}: {ready.get('message', '')}"
    if "node.kubernetes.io/not-ready" in taints:
        return False, "Ready, waiting for the not-ready taint to be removed"
    return True, "Ready"


KUBELET_API_BINDING = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRoleBinding",
    "metadata": {"name": "pytest-chaos:apiserver-kubelet-api-admin"},
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                "name": "system:kubelet-api-admin"},
    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                  "name": "kube-apiserver-kubelet-client"}],
}


def start_all(layout: settings.Layout, node: Node, timeout: float, runtime_socket: str) -> None:
    """Start the control plane and kubelet, then wait until the node is Ready."""
    procs = processes(layout)
    write_kubeconfigs(layout, node)
    layout.etcd_data.mkdir(parents=True, exist_ok=True, mode=0o700)
    procs["etcd"].start(etcd_args(layout))
    procs["kube-apiserver"].start(apiserver_args(layout, node))
    log("waiting for kube-apiserver /readyz ...")
    wait_for("kube-apiserver /readyz", lambda: apiserver_ready(layout), 120, procs["kube-apiserver"],
             hint=f" (and etcd's log {procs['etcd'].logfile})")
    # RBAC bootstrap policy may lag /readyz by a moment: retry the apply.
    wait_for("the kubelet-api-admin ClusterRoleBinding",
             lambda: kubectl(layout, "apply", "-f", "-", input=json.dumps(KUBELET_API_BINDING),
                             check=False).returncode == 0, 60, procs["kube-apiserver"])
    procs["kube-controller-manager"].start(controller_manager_args(layout))
    procs["kube-scheduler"].start(scheduler_args(layout))
    procs["kubelet"].start(kubelet_args(layout, node, runtime_socket))
    log(f"waiting for node {node.name} to be Ready ...")
    last = [""]

    def ready() -> bool:
        ok, why = node_status(layout, node)
        if why != last[0]:
            log(f"  node {node.name}: {why}")
            last[0] = why
        for name in ("kube-controller-manager", "kube-scheduler", "etcd", "kube-apiserver"):
            if not procs[name].running():
                raise ClusterError(f"{name} exited; see {procs[name].logfile}:\n{procs[name].log_tail()}")
        return ok

    wait_for(f"node {node.name} Ready", ready, timeout, procs["kubelet"],
             hint=" (NotReady with 'cni' in the message: check containerd's log and "
                  f"{settings.CNI_CONF_FILE}; not-ready taint staying: kube-controller-manager's log)")
    wait_for("service account default/default",
             lambda: kubectl(layout, "get", "serviceaccount", "default", "-n", "default",
                             check=False).returncode == 0, 60, procs["kube-controller-manager"])


def stop_all(layout: settings.Layout) -> list[str]:
    """Stop the components (kubelet first); returns the names that were running."""
    procs = processes(layout)
    stopped = []
    for name in reversed(ORDER):
        if procs[name].stop(30):
            stopped.append(name)
    return stopped
