"""The soak's kind bed (``benchmarks/soak.py --kind``): busybox pods as targets, served by the DaemonSet's
daemons (one per node) over mutual TLS, as the plugin's kubernetes backend reaches them.

Its events, at seeded moments, beside the soak's runner SIGKILLs:

* a daemon pod deleted, gracefully (SIGTERM, its grace period) or forced (``--grace-period=0 --force``): the
  DaemonSet starts a new pod on the node, which adopts the node's journal (a hostPath);
* a daemon's container SIGKILLed: the kubelet starts it again in the same pod;
* a node's containerd stalled (SIGSTOP) for a few seconds, while its daemon looks containers up and recovers.

Everything is seen from this host: a kind node is a container here, so a pod's processes, network namespace,
cgroups and a node's journal directory are this host's too (``/proc/<node pid>/root``). Beyond the soak's own
checks, each target pod must still be the same pod, unrestarted, with its images and annotations as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import random
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from typing import Any

from benchmarks.report import Row
from benchmarks.soak import KILL_DAEMON_EVERY, STALL_RUNTIME_EVERY, STALL_S, Event, Reach, Stall, containerd_pid, read_records

NAMESPACE = "pytest-chaos-soak"
DAEMON_NAMESPACE = "chaos-testing"
DAEMON_LABELS = "app.kubernetes.io/name=chaos-daemon"
JOURNAL = "var/lib/pytest-chaos/daemon/injections"  # the DaemonSet's --state-dir, a hostPath on each node
SERVING_TIMEOUT_S = 180.0
# A daemon container restarted this often is replaced (its pod deleted) instead of killed again: the kubelet
# waits 10 s, 20 s, 40 s... (up to 5 min) before restarting a container that keeps dying.
MAX_CONTAINER_RESTARTS = 2


class Kubectl:
    def __init__(self, kubeconfig: str, binary: str) -> None:
        self.kubeconfig, self.binary = kubeconfig, binary

    def kubectl(self, *args: str, timeout: float = 180) -> str:
        result = subprocess.run([self.binary, f"--kubeconfig={self.kubeconfig}", *args], capture_output=True,
                                text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json"))


class KindWorld:
    name = "kind"

    def __init__(self, pods: int, kubeconfig: str | None) -> None:
        from pytest_chaos.backends.kubernetes import KubernetesBackend
        from pytest_chaos_cluster.settings import Layout
        from tests.support.pods import busybox_pods

        layout = Layout()
        self.kubeconfig = kubeconfig or str(layout.kubeconfig)
        binary = layout.binary("kubectl")
        self.kube = Kubectl(self.kubeconfig, str(binary) if binary.exists() else "kubectl")
        self.backend = KubernetesBackend(kubeconfig=self.kubeconfig)
        tls = self.backend.client_tls()
        self.tls = {"cert": tls.cert.decode(), "key": tls.key.decode(), "ca": tls.ca.decode()}
        self.directory = tempfile.mkdtemp(prefix="pytest-chaos-soak-kind-")
        self.stack = contextlib.ExitStack()
        names = [f"soak-{n}" for n in range(pods)]
        try:
            by_name = self.stack.enter_context(busybox_pods(self.kube, NAMESPACE, names, pathlib.Path(self.directory)))
        except BaseException:
            self.stack.close()
            raise
        self.targets = list(by_name.values())
        pods_now = self.pods()
        self.node_of = {t.container_id: pods_now[t.name]["node"] for t in self.targets}
        self.pods_before = pods_now
        self.nodes = sorted({node["metadata"]["name"] for node in self.kube.json("get", "nodes")["items"]})
        self.stall = Stall()
        self.recovering: list[threading.Thread] = []  # each waits for a node's daemon to serve again
        self.back_to_serving: dict[str, list[float]] = {}  # event -> seconds until a daemon served again
        self.errors: list[str] = []

    # -- what runners are given ---------------------------------------------------------------------------

    def reach(self, target: Any) -> dict[str, Any]:
        return {"node": self.node_of[target.container_id], "kubeconfig": self.kubeconfig, "tls": self.tls}

    def peer(self, peer: Any) -> dict[str, list[str]]:
        return {"peers": [peer.ip]}  # possibly on another node: by its pod IP

    # -- events ----------------------------------------------------------------------------------------

    def events(self) -> list[Event]:
        return [(1 / KILL_DAEMON_EVERY, self.delete_daemon_pod), (1 / KILL_DAEMON_EVERY, self.kill_daemon_container),
                (1 / STALL_RUNTIME_EVERY, self.stall_node_runtime)]

    def target_nodes(self) -> list[str]:
        return sorted(set(self.node_of.values()))

    def delete_daemon_pod(self, rng: random.Random) -> str | None:
        node = rng.choice(self.target_nodes())
        forced = rng.random() < 0.5
        try:
            pod = self.daemon_pod(node)
            begun = time.monotonic()
            self.kube.kubectl("-n", DAEMON_NAMESPACE, "delete", "pod", pod["metadata"]["name"], "--wait=false",
                              *(["--grace-period=0", "--force"] if forced else []))
        except (LookupError, RuntimeError):  # its pod is being replaced just now: another time
            return None
        what = f"daemon pod deleted ({'forced' if forced else 'graceful'})"
        self.await_serving(what, node, begun, pod)
        return what

    def kill_daemon_container(self, rng: random.Random) -> str | None:
        node = rng.choice(self.target_nodes())
        try:
            pod = self.daemon_pod(node)
        except LookupError:  # its pod is being replaced just now: another time
            return None
        statuses = pod["status"].get("containerStatuses") or []
        if not statuses or not statuses[0].get("containerID"):
            return None
        if restarts(pod) >= MAX_CONTAINER_RESTARTS:  # the kubelet's back-off would soon keep it down for minutes
            return self.delete_daemon_pod(rng)
        pid = container_main_pid(statuses[0]["containerID"])
        if pid is None:
            return None
        begun = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        what = "daemon container SIGKILLed (the kubelet restarts it)"
        self.await_serving(what, node, begun, pod)
        return what

    def stall_node_runtime(self, rng: random.Random) -> str | None:
        node = rng.choice(self.target_nodes())
        pid = containerd_pid(node_pid(node))
        if pid is None or not self.stall.start(pid, rng.uniform(*STALL_S)):
            return None
        return "a node's containerd stalled (SIGSTOP for 2-8 s)"

    def await_serving(self, what: str, node: str, begun: float, old: dict[str, Any]) -> None:
        """In the background: time until the node's daemon serves again, after ``old`` (its pod as it was) was
        deleted or its container killed: a new pod, or the same pod's container restarted."""
        def wait() -> None:
            deadline = begun + SERVING_TIMEOUT_S
            while time.monotonic() < deadline:
                with contextlib.suppress(Exception):
                    pod = self.daemon_pod(node)
                    new = pod["metadata"]["uid"] != old["metadata"]["uid"] or restarts(pod) > restarts(old)
                    if new and self.serves(node):
                        self.back_to_serving.setdefault(what, []).append(time.monotonic() - begun)
                        return
                time.sleep(0.2)
            self.errors.append(f"{what} on {node}: no daemon served there within {SERVING_TIMEOUT_S:.0f} s")

        thread = threading.Thread(target=wait, name=f"await {node}", daemon=True)
        self.recovering.append(thread)
        thread.start()

    # -- looking ---------------------------------------------------------------------------------------

    def daemon_pod(self, node: str) -> dict[str, Any]:
        """The node's daemon pod that is not being deleted (a deleted one may linger in its grace period)."""
        pods = self.kube.json("-n", DAEMON_NAMESPACE, "get", "pods", "-l", DAEMON_LABELS,
                              f"--field-selector=spec.nodeName={node}")["items"]
        current = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        if not current:
            raise LookupError(f"no daemon pod on {node}")
        return current[0]

    def serves(self, node: str) -> bool:
        from pytest_chaos.api.v1 import chaos_daemon_pb2 as pb

        try:
            self.reach_node(node).call(lambda stub: stub.GetInfo(pb.GetInfoRequest(), timeout=5), patience_s=0)
        except Exception:  # noqa: BLE001 - not serving, for whatever reason
            return False
        return True

    def reach_node(self, node: str) -> Reach:
        return Reach({"node": node, "kubeconfig": self.kubeconfig, "tls": self.tls}, self.backend)

    def settle(self) -> None:
        self.stall.end()
        for thread in self.recovering:
            thread.join()
        self.recovering.clear()

    def live(self) -> list[str]:
        from pytest_chaos.api.v1 import chaos_daemon_pb2 as pb

        found = []
        for node in self.nodes:
            try:
                reply = self.reach_node(node).call(
                    lambda stub: stub.ListInjections(pb.ListInjectionsRequest(), timeout=30))
            except Exception as err:  # noqa: BLE001 - a daemon that does not answer cannot say it holds nothing
                found.append(f"node {node}: its daemon did not answer ({err})"[:300])
                continue
            found += [f"{s.injection_id} ({s.kind} on {s.container_id}, node {node})" for s in reply.injections]
        return found

    def records(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for node in self.nodes:
            root = f"/proc/{node_pid(node)}/root/{JOURNAL}"
            found.update(read_records([os.path.join(root, name) for name in os.listdir(root)]
                                      if os.path.isdir(root) else []))
        return found

    def pods(self) -> dict[str, dict[str, Any]]:
        """What a fault must not change in a target pod's API object: it is the same pod, on its node, its
        containers unrestarted and their images as they were, its annotations too."""
        found = {}
        for pod in self.kube.json("-n", NAMESPACE, "get", "pods")["items"]:
            found[pod["metadata"]["name"]] = {
                "uid": pod["metadata"]["uid"], "node": pod["spec"]["nodeName"],
                "annotations": pod["metadata"].get("annotations", {}),
                "images": [c["image"] for c in pod["spec"]["containers"]],
                "restarts": [s.get("restartCount", 0) for s in pod["status"].get("containerStatuses", [])]}
        return found

    def changed(self) -> list[str]:
        now = self.pods()
        return [f"pod {NAMESPACE}/{name}: {key} was {before[key]!r}, is {now.get(name, {}).get(key)!r}"
                for name, before in self.pods_before.items() for key in before
                if now.get(name, {}).get(key) != before[key]]

    def problems(self) -> list[str]:
        return self.errors

    def rows(self) -> list[Row]:
        rows = [Row("daemons that did not serve again", str(len(self.errors)), goal="0", met=not self.errors)]
        for what, seconds in sorted(self.back_to_serving.items()):
            ordered = sorted(seconds)
            rows.append(Row(f"{what}: until its node's daemon served", f"max {ordered[-1]:.2f} s",
                            f"median {statistics.median(ordered):.2f} s of {len(ordered)}"))
        return rows

    def close(self) -> None:
        self.settle()
        self.stack.close()  # the pods' namespace goes
        shutil.rmtree(self.directory, ignore_errors=True)
        self.backend.close()

    def keep(self) -> str:
        return "the daemons' logs: kubectl -n chaos-testing logs -l app.kubernetes.io/name=chaos-daemon"


def restarts(pod: dict[str, Any]) -> int:
    """How often the kubelet restarted the pod's (first) container."""
    return int((pod["status"].get("containerStatuses") or [{}])[0].get("restartCount", 0))


def container_main_pid(container_id: str) -> int | None:
    """This host's pid of a container's first process: of the processes in its cgroup, the one whose parent is
    not. (The daemon's pod shares its node's pid namespace, hostPID: its process is not pid 1 of its own.)"""
    bare = container_id.split("://", 1)[-1]
    members: dict[int, int] = {}  # pid -> parent
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry}/cgroup") as f:
                if bare not in f.read():
                    continue
            with open(f"/proc/{entry}/stat") as f:
                members[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
    first = [pid for pid, parent in members.items() if parent not in members]
    return first[0] if len(first) == 1 else None


def node_pid(node: str) -> int:
    """This host's pid of a kind node container's init: its filesystem is ``/proc/<pid>/root``."""
    out = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", node], capture_output=True, text=True,
                         check=True).stdout
    return int(out.strip())
