"""The kind test bed's pod network, our own in place of kindnetd (which no registry here serves).

Each node gets a bridge (``cni0``) whose pods take addresses from the node's
``spec.podCIDR`` (host-local IPAM, Debian's CNI plugins), and a route to every
other node's pod CIDR through that node's address on Docker's ``kind``
network. The host gets the same routes, so the plugin reaches a daemon pod on
any node by its pod IP, as it does on a flat cluster network. Nothing is
masqueraded: every pod CIDR is routed, from the nodes and from the host.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from ..util import ClusterError, run

#: Apart from pytest-chaos-cluster's 10.244.0.0/24 on the host, so both beds can run at once.
POD_SUBNET = "10.245.0.0/16"
SERVICE_SUBNET = "10.97.0.0/16"
CNI_CONFIG_PATH = "/etc/cni/net.d/10-pytest-chaos-kind.conflist"


@dataclass(frozen=True)
class Node:
    name: str
    ip: str
    pod_cidr: str


def cni_config(node: Node) -> str:
    return json.dumps({
        "cniVersion": "0.4.0",
        "name": "pytest-chaos-kind",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": node.pod_cidr}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }, indent=2) + "\n"


def configure_nodes(nodes: list[Node]) -> None:
    """Write each node's CNI config and its routes to the other nodes' pods."""
    for node in nodes:
        routes = [f"ip route replace {other.pod_cidr} via {other.ip}" for other in nodes if other is not node]
        script = "\n".join([
            "set -eu",
            # Traffic between two pods of one bridge goes through iptables too (kube-proxy's Service DNAT).
            "sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true",
            "sysctl -qw net.ipv4.ip_forward=1",
            *routes,
            f"mkdir -p /etc/cni/net.d && cat > {CNI_CONFIG_PATH}.tmp && mv {CNI_CONFIG_PATH}.tmp {CNI_CONFIG_PATH}",
        ])
        proc = run(["docker", "exec", "-i", node.name, "sh", "-c", script], input=cni_config(node), check=False)
        if proc.returncode != 0:
            raise ClusterError(f"configuring the pod network on {node.name} failed: {proc.stderr.strip()}")


def add_host_routes(nodes: list[Node]) -> None:
    for node in nodes:
        run(["ip", "route", "replace", node.pod_cidr, "via", node.ip])


def remove_host_routes() -> list[str]:
    """Delete the host's routes into the bed's pod subnet; return what was removed."""
    subnet = ipaddress.ip_network(POD_SUBNET)
    removed = []
    for line in run(["ip", "-4", "route", "show"]).stdout.splitlines():
        destination = line.split()[0]
        try:
            inside = ipaddress.ip_network(destination).subnet_of(subnet)  # type: ignore[arg-type]
        except ValueError:
            continue
        if inside and " via " in line:
            run(["ip", "route", "del", destination], check=False)
            removed.append(destination)
    return removed
