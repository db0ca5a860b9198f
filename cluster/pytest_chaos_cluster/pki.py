"""Certificates, service-account keys and kubeconfigs for the single-node cluster.

Uses the ``openssl`` command (Debian package ``openssl``). One CA signs every
certificate; EC P-256 keys keep generation fast. The leaf set mirrors what
kubeadm creates:

* ``apiserver``: serving cert, SANs 127.0.0.1, localhost, the node's IP and
  hostname, the first service IP and the ``kubernetes.default…`` names;
* ``apiserver-kubelet-client``: the apiserver's client cert toward kubelets
  (bound to the ``system:kubelet-api-admin`` ClusterRole after start-up, so
  logs/exec/port-forward through the API server work);
* ``apiserver-etcd-client`` and ``etcd-server``: etcd listens on 127.0.0.1 with TLS;
* ``kubelet`` (serving, with the node IP) and ``kubelet-client``
  (``system:node:<hostname>`` in ``system:nodes``);
* ``admin`` (``system:masters``), ``controller-manager``, ``scheduler``;
* ``sa.key``/``sa.pub``: the service-account token signing pair.

A ``fingerprint`` file records the hostname and node IP the set was made for;
``ensure_pki`` regenerates everything when they change and otherwise reuses it.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import settings
from .util import ClusterError


@dataclass(frozen=True)
class Leaf:
    """One certificate to issue from the cluster CA."""

    name: str
    cn: str
    org: str | None = None
    server: bool = False
    client: bool = False
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()


def leaves(hostname: str, node_ip: str) -> list[Leaf]:
    """The certificates the cluster needs for this hostname and node IP."""
    api_dns = ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
               f"kubernetes.default.svc.{settings.CLUSTER_DOMAIN}", "localhost", hostname)
    return [
        Leaf("apiserver", "kube-apiserver", server=True, dns=api_dns,
             ips=tuple(dict.fromkeys(("127.0.0.1", node_ip, settings.SERVICE_IP)))),
        Leaf("apiserver-kubelet-client", "kube-apiserver-kubelet-client", client=True),
        Leaf("apiserver-etcd-client", "kube-apiserver-etcd-client", client=True),
        Leaf("etcd-server", "etcd", server=True, client=True, dns=("localhost",), ips=("127.0.0.1",)),
        Leaf("kubelet", hostname, server=True, dns=(hostname, "localhost"),
             ips=tuple(dict.fromkeys((node_ip, "127.0.0.1")))),
        Leaf("kubelet-client", f"system:node:{hostname}", org="system:nodes", client=True),
        Leaf("admin", "kubernetes-admin", org="system:masters", client=True),
        Leaf("controller-manager", "system:kube-controller-manager", client=True),
        Leaf("scheduler", "system:kube-scheduler", client=True),
    ]


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


def _ec_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(path), cwd=path.parent)
    path.chmod(0o600)


def _subject(cn: str, org: str | None) -> str:
    return (f"/O={org}" if org else "") + f"/CN={cn}"


def _issue(pki: Path, leaf: Leaf, days: int = 365) -> None:
    key, crt = pki / f"{leaf.name}.key", pki / f"{leaf.name}.crt"
    _ec_key(key)
    usages = []
    if leaf.server:
        usages.append("serverAuth")
    if leaf.client:
        usages.append("clientAuth")
    ext = ["basicConstraints=critical,CA:FALSE",
           "keyUsage=critical,digitalSignature,keyEncipherment",
           f"extendedKeyUsage={','.join(usages)}"]
    sans = [f"DNS:{d}" for d in leaf.dns] + [f"IP:{i}" for i in leaf.ips]
    if sans:
        ext.append("subjectAltName=" + ",".join(sans))
    with tempfile.TemporaryDirectory() as tmp:
        csr, extfile = Path(tmp) / "req.csr", Path(tmp) / "ext.cnf"
        extfile.write_text("\n".join(ext) + "\n")
        _openssl("req", "-new", "-key", str(key), "-subj", _subject(leaf.cn, leaf.org),
                 "-out", str(csr), cwd=pki)
        _openssl("x509", "-req", "-in", str(csr), "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", str(days), "-sha256", "-extfile", str(extfile),
                 "-out", str(crt), cwd=pki)


def ensure_pki(pki: Path, hostname: str, node_ip: str) -> bool:
    """Create the CA, leaf certs and SA keys unless a matching set exists.

    Returns True when new material was generated.
    """
    fingerprint = json.dumps({"hostname": hostname, "node_ip": node_ip, "v": 1}, sort_keys=True)
    fp_file = pki / "fingerprint"
    wanted = [f"{leaf.name}.{ext}" for leaf in leaves(hostname, node_ip) for ext in ("crt", "key")]
    if (fp_file.is_file() and fp_file.read_text() == fingerprint
            and all((pki / f).is_file() for f in [*wanted, "ca.crt", "ca.key", "sa.key", "sa.pub"])):
        return False
    pki.mkdir(parents=True, exist_ok=True)
    os.chmod(pki, 0o700)
    for old in pki.iterdir():
        old.unlink()
    _ec_key(pki / "ca.key")
    _openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=pytest-chaos-cluster-ca",
             "-days", "3650", "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
             "-out", "ca.crt", cwd=pki)
    for leaf in leaves(hostname, node_ip):
        _issue(pki, leaf)
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", "sa.key", cwd=pki)
    (pki / "sa.key").chmod(0o600)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    fp_file.write_text(fingerprint)
    return True


def write_kubeconfig(path: Path, pki: Path, user: str, cert: str, server: str) -> None:
    """Write a kubeconfig with file references to ``<cert>.crt``/``.key`` and the CA.

    Kubeconfig is YAML, and JSON is YAML: this stays stdlib-only.
    """
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "pytest-chaos", "cluster": {
            "server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": user, "user": {
            "client-certificate": str(pki / f"{cert}.crt"),
            "client-key": str(pki / f"{cert}.key")}}],
        "contexts": [{"name": "pytest-chaos", "context": {"cluster": "pytest-chaos", "user": user}}],
        "current-context": "pytest-chaos",
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)


def write_admin_kubeconfig_embedded(path: Path, pki: Path, server: str) -> None:
    """Admin kubeconfig with certificates embedded, so it can be copied elsewhere."""
    import base64

    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "pytest-chaos", "cluster": {
            "server": server, "certificate-authority-data": b64("ca.crt")}}],
        "users": [{"name": "pytest-chaos-admin", "user": {
            "client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")}}],
        "contexts": [{"name": "pytest-chaos", "context": {
            "cluster": "pytest-chaos", "user": "pytest-chaos-admin"}}],
        "current-context": "pytest-chaos",
        "preferences": {},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
