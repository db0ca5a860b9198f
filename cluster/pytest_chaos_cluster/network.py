"""Pod networking: a bridge CNI config, the node IP, and network teardown.

Pods get addresses from ``10.244.0.0/24`` on the ``cni0`` bridge (gateway
10.244.0.1 on the host, no masquerading), so pod IPs are reachable from this
machine and pod traffic stays on it. The plugins (bridge, host-local, portmap;
containerd adds loopback itself) come from Debian's containernetworking-plugins
in ``/usr/lib/cni``.

``teardown`` removes what pod networking leaves behind once the pods are gone:
``/run/netns/cni-*`` namespaces, the ``cni0`` bridge and its veths, host-local
IP reservations, CNI result caches, and the ``CNI-*``/``KUBE-*`` iptables chains
(portmap's and the kubelet's) with the rules that jump to them, for both
iptables and ip6tables.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path

from . import settings
from .util import log, run


def cni_config() -> dict[str, object]:
    return {
        "cniVersion": "0.4.0",
        "name": settings.CNI_NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": settings.CNI_BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": settings.POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def write_cni_config() -> Path:
    """Write the conflist; other ``*.conf*`` files in the dir would win if sorted first."""
    settings.CNI_CONF_DIR.mkdir(parents=True, exist_ok=True)
    others = sorted(p.name for p in settings.CNI_CONF_DIR.iterdir()
                    if p.suffix in (".conf", ".conflist", ".json") and p != settings.CNI_CONF_FILE)
    if others:
        log(f"warning: other CNI configs in {settings.CNI_CONF_DIR}: {others} "
            "(containerd uses the first in lexical order)")
    text = json.dumps(cni_config(), indent=2) + "\n"
    if not settings.CNI_CONF_FILE.is_file() or settings.CNI_CONF_FILE.read_text() != text:
        settings.CNI_CONF_FILE.write_text(text)
    return settings.CNI_CONF_FILE


NETNS_DIR = "/run/netns"


def prepare_netns_dir() -> None:
    """Make /run/netns a shared mount of its own before any pod exists, as ``ip netns add`` does the first
    time it runs on a machine. Done later (by anyone on the node), that bind mount would hide the pods'
    namespace mounts made before it, and their removal would fail with "device or resource busy": the
    pods would hang in Terminating."""
    os.makedirs(NETNS_DIR, exist_ok=True)
    with open("/proc/self/mountinfo") as f:
        mounted = any(line.split()[4] == NETNS_DIR for line in f)
    if not mounted and not any(name.startswith("cni-") for name in os.listdir(NETNS_DIR)):  # no pod yet
        run(["mount", "--bind", NETNS_DIR, NETNS_DIR])
        run(["mount", "--make-shared", NETNS_DIR])


def node_ip() -> str:
    """The IPv4 address of the default-route interface (first global one otherwise)."""
    routes = json.loads(run(["ip", "-4", "-j", "route", "show", "default"]).stdout or "[]")
    devs = [r["dev"] for r in routes if "dev" in r]
    addrs = json.loads(run(["ip", "-4", "-j", "addr", "show"]).stdout or "[]")
    by_dev = {a["ifname"]: [i["local"] for i in a.get("addr_info", []) if i.get("scope") == "global"]
              for a in addrs}
    for dev in devs:
        if by_dev.get(dev):
            return by_dev[dev][0]
    for dev, ips in by_dev.items():
        if ips and dev != settings.CNI_BRIDGE:
            return ips[0]
    return "127.0.0.1"


def _chain_cleanup(save_cmd: str, cmd: str) -> int:
    """Remove CNI-*/KUBE-* chains and jumps to them; returns the count of chains removed."""
    if shutil.which(save_cmd) is None:
        return 0
    removed = 0
    dump = run([save_cmd], check=False).stdout
    table = None
    per_table: dict[str, tuple[list[str], list[str]]] = {}
    for line in dump.splitlines():
        if line.startswith("*"):
            table = line[1:]
            per_table[table] = ([], [])
        elif table and line.startswith(":"):
            chain = line[1:].split()[0]
            if chain.startswith(("CNI-", "KUBE-")):
                per_table[table][0].append(chain)
        elif table and line.startswith("-A "):
            per_table[table][1].append(line)
    for table, (chains, rules) in per_table.items():
        if not chains:
            continue
        ours = set(chains)
        for rule in rules:
            parts = rule.split()
            chain = parts[1]
            target = re.search(r"\s-[jg]\s+(\S+)", rule)
            if chain not in ours and target and target.group(1) in ours:
                run([cmd, "-t", table, "-D", *_split_rule(rule)], check=False)
        for chain in chains:
            run([cmd, "-t", table, "-F", chain], check=False)
        for chain in chains:
            if run([cmd, "-t", table, "-X", chain], check=False).returncode == 0:
                removed += 1
    return removed


def _split_rule(rule: str) -> list[str]:
    """``-A CHAIN spec...`` from iptables-save as argv ``CHAIN spec...`` (shell quoting)."""
    return shlex.split(rule)[1:]


def _live_netns() -> set[tuple[int, int]]:
    """(dev, inode) of every network namespace a live process is in."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                st = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            out.add((st.st_dev, st.st_ino))
    return out


def teardown() -> None:
    """Remove pod network leftovers (call after all pod sandboxes are gone)."""
    netns_dir = Path("/run/netns")
    if netns_dir.is_dir():
        in_use = _live_netns()
        for ns in sorted(netns_dir.glob("cni-*")):
            try:
                st = ns.stat()
                if (st.st_dev, st.st_ino) in in_use:
                    log(f"keeping network namespace {ns.name}: processes still use it")
                    continue
            except OSError:
                pass
            run(["umount", "-l", str(ns)], check=False)
            try:
                ns.unlink()
                log(f"removed network namespace {ns.name}")
            except OSError:
                pass
    links = json.loads(run(["ip", "-j", "link", "show"], check=False).stdout or "[]")
    for link in links:
        if link.get("master") == settings.CNI_BRIDGE:
            run(["ip", "link", "delete", link["ifname"]], check=False)
    if any(link.get("ifname") == settings.CNI_BRIDGE for link in links):
        run(["ip", "link", "delete", settings.CNI_BRIDGE], check=False)
        log(f"removed bridge {settings.CNI_BRIDGE}")
    shutil.rmtree(Path("/var/lib/cni/networks") / settings.CNI_NETWORK_NAME, ignore_errors=True)
    results = Path("/var/lib/cni/results")
    if results.is_dir():
        for f in results.glob(f"{settings.CNI_NETWORK_NAME}-*"):
            f.unlink(missing_ok=True)
    n = _chain_cleanup("iptables-save", "iptables") + _chain_cleanup("ip6tables-save", "ip6tables")
    if n:
        log(f"removed {n} CNI-*/KUBE-* iptables chains")


def conf_remove() -> None:
    """Remove our CNI config (``down --purge``)."""
    settings.CNI_CONF_FILE.unlink(missing_ok=True)
