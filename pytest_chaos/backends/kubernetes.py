"""The ``kubernetes`` backend: pods selected with Chaos Mesh's selector, one daemon per node.

Targets are containers of the selected pods. Each target is sent to the
chaos daemon pod running on the target's node (a DaemonSet, see
daemon/deploy/), reached directly at its pod IP where this machine can route
there, otherwise through the API server's port-forward.

Pods are listed a page at a time and read as the API's plain JSON: the
client's models cost several times the API call, and a page bounds the memory
a selection holds, whatever the number of pods in the cluster.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..defaults import ACCESS_MODES, DEFAULT_DAEMON_NAMESPACE
from ..errors import ChaosError
from ..model import Target
from .base import PodApi, PodConflict, PodPatchRefused
from .pod_selector import (
    SELECTOR_KEYS,
    annotations_match,
    check_pod_selector,
    field_selector,
    label_selector,
    phase_matches,
)

if TYPE_CHECKING:  # gRPC loads with the first call to a daemon, not with the backend
    from ..transport import ClientTls

DAEMON_LABELS = "app.kubernetes.io/name=chaos-daemon"
CLIENT_TLS_SECRET = "chaos-daemon-client-tls"
DAEMON_PORT = 31767
PROBE_TIMEOUT_S = 1.0
STARTING_S = 3.0  # how long a routed pod IP that refuses connections is given to start listening
PAGE_SIZE = 500  # pods per list request

# A pod as the API's JSON (camelCase keys, absent fields left out).
Pod = dict[str, Any]


class KubernetesBackend:
    name = "kubernetes"
    selector_keys = SELECTOR_KEYS

    def __init__(
        self,
        kubeconfig: str | None = None,
        context: str | None = None,
        daemon_namespace: str = DEFAULT_DAEMON_NAMESPACE,
        access: str = "auto",
        page_size: int = PAGE_SIZE,
    ) -> None:
        if access not in ACCESS_MODES:
            raise ValueError(f"access must be one of {ACCESS_MODES}")
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self._page_size = page_size
        self._kubeconfig = kubeconfig
        self._context = context
        self.daemon_namespace = daemon_namespace
        self._access = access
        self._core: Any = None
        self._lock = threading.Lock()
        self._addresses: dict[str, str] = {}  # daemon pod uid -> address
        self._daemon_by_node: dict[str, str] = {}  # node -> its daemon's address, as last looked up
        self._relays: list[Any] = []
        self._tls: ClientTls | None = None

    def describe(self) -> str:
        kubeconfig = self._kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        return (
            f"kubernetes (kubeconfig {kubeconfig}, context {self._context or 'current'}, "
            f"daemons in namespace {self.daemon_namespace}, access {self._access})"
        )

    def check_selector(self, selector: Mapping[str, Any], container_names: Sequence[str] | None) -> dict[str, Any]:
        return check_pod_selector(selector)

    def candidates(self, selector: Mapping[str, Any], container_names: Sequence[str] | None) -> list[list[Target]]:
        """One unit per selected pod (modes pick pods, as in Chaos Mesh), holding its chosen containers."""
        units = []
        for pod in self._selected_pods(selector):
            targets = _containers(pod, container_names)
            if targets:
                units.append(targets)
        return units

    def daemon_address(self, target: Target, refresh: bool = False) -> str:
        """The node's daemon, looked up once per node and run: a replaced daemon pod is found again when a call
        cannot reach the old one (``refresh``)."""
        node = target.node or ""
        with self._lock:
            known = None if refresh else self._daemon_by_node.get(node)
        if known is not None:
            return known
        daemon = self._daemon_on(node)
        with self._lock:
            uid = daemon["metadata"]["uid"]
            if uid not in self._addresses:
                self._addresses[uid] = self._reach(daemon)
            self._daemon_by_node[node] = self._addresses[uid]
            return self._addresses[uid]

    def client_tls(self) -> ClientTls:
        """The plugin's client certificate, read from the Secret beside the daemons."""
        with self._lock:
            if self._tls is None:
                self._tls = self._read_client_tls()
            return self._tls

    def _read_client_tls(self) -> ClientTls:
        import base64

        from kubernetes.client.exceptions import ApiException

        from ..transport import ClientTls

        try:
            secret = self.core.read_namespaced_secret(CLIENT_TLS_SECRET, self.daemon_namespace, _request_timeout=30)
        except ApiException as err:
            raise ChaosError(
                f"the daemons require mutual TLS, and the client certificate Secret "
                f"{self.daemon_namespace}/{CLIENT_TLS_SECRET} cannot be read ({err.status} {err.reason}); "
                "create it as the README's Kubernetes section shows (pytest-chaos-daemon-certs)"
            ) from None
        data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        missing = {"ca.crt", "tls.crt", "tls.key"} - set(data)
        if missing:
            raise ChaosError(f"Secret {self.daemon_namespace}/{CLIENT_TLS_SECRET} lacks {', '.join(sorted(missing))}")
        return ClientTls(cert=data["tls.crt"], key=data["tls.key"], ca=data["ca.crt"])

    def pod_api(self) -> PodApi:
        return self

    def delete_pod(self, namespace: str, name: str, uid: str, grace_period_s: int) -> None:
        """Delete the pod ``name`` if it is still the one selected (``uid``), with this grace period
        (pod-kill); raises ChaosError when the API refuses, a replacement of the same name included."""
        from kubernetes.client import V1DeleteOptions, V1Preconditions

        options = V1DeleteOptions(grace_period_seconds=grace_period_s, preconditions=V1Preconditions(uid=uid or None))
        self._call(self.core.delete_namespaced_pod, name, namespace, body=options)

    def read_pod(self, namespace: str, name: str) -> Pod | None:
        from kubernetes.client.exceptions import ApiException

        try:
            pod: Pod = self._json(self.core.read_namespaced_pod, name, namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise ChaosError(f"the Kubernetes API refused read_namespaced_pod: {err.status} {err.reason}") from None
        return pod

    def patch_pod(self, namespace: str, name: str, operations: list[dict[str, Any]]) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            self.core.patch_namespaced_pod(name, namespace, operations, _content_type="application/json-patch+json",
                                           _request_timeout=30, _preload_content=False)
        except ApiException as err:
            if err.status == 409:
                raise PodConflict(f"pod {namespace}/{name} changed while it was patched") from None
            # A failed ``test`` operation is a 422 that does not say which operation failed, as an invalid
            # patch is: the caller tells them apart by reading the pod again.
            if err.status == 422:
                raise PodPatchRefused(f"the Kubernetes API refused patch_namespaced_pod: {err.status} "
                                      f"{err.reason}: {err.body}") from None
            raise ChaosError(f"the Kubernetes API refused patch_namespaced_pod: {err.status} {err.reason}: "
                             f"{err.body}") from None
        except HTTPError as err:
            raise ChaosError(f"the Kubernetes API is unreachable ({self.describe()}): {err}") from None

    def marked_pods(self, label: str) -> list[Pod]:
        return list(self._pods(None, label_selector=label))

    def node_images(self, node: str) -> list[str]:
        found = self._json(self.core.read_node, node)
        return [name for image in found.get("status", {}).get("images") or [] for name in image.get("names") or []]

    def close(self) -> None:
        for relay in self._relays:
            relay.close()
        self._relays.clear()
        self._addresses.clear()
        self._daemon_by_node.clear()

    # -- selection ---------------------------------------------------------

    def _selected_pods(self, selector: Mapping[str, Any]) -> list[Pod]:
        if "pods" in selector:
            return [pod for pod in self._named_pods(selector["pods"]) if _alive(pod)]
        query = {}
        if labels := label_selector(selector):
            query["label_selector"] = labels
        if fields := field_selector(selector):
            query["field_selector"] = fields
        nodes = self._allowed_nodes(selector)
        annotations = selector.get("annotationSelectors", {})
        phases = selector.get("podPhaseSelectors", [])
        # Filtered as each page arrives: only the matches outlive their page.
        return [
            pod
            for namespace in selector.get("namespaces") or [None]
            for pod in self._pods(namespace, **query)
            if _alive(pod)
            and annotations_match(pod["metadata"].get("annotations"), annotations)
            and phase_matches(pod.get("status", {}).get("phase") or "Unknown", phases)
            and (nodes is None or pod["spec"].get("nodeName") in nodes)
        ]

    def _named_pods(self, names: Mapping[str, Sequence[str]]) -> list[Pod]:
        from kubernetes.client.exceptions import ApiException

        pods = []
        for namespace, pod_names in names.items():
            for name in pod_names:
                try:
                    pods.append(self._json(self.core.read_namespaced_pod, name, namespace))
                except ApiException as err:
                    if err.status != 404:
                        raise
        return pods

    def _pods(self, namespace: str | None, **query: str) -> Iterator[Pod]:
        """Pods of ``namespace`` (None: every namespace) matching ``query``, read ``page_size`` at a time."""
        method, args = (
            (self.core.list_pod_for_all_namespaces, ()) if namespace is None else (self.core.list_namespaced_pod, (namespace,))
        )
        token = None
        while True:
            page = self._json(method, *args, limit=self._page_size, _continue=token, **query)
            token = page["metadata"].get("continue")
            # Popped, so that a page is freed before the next one is read.
            yield from page.pop("items")
            if not token:
                return

    def _allowed_nodes(self, selector: Mapping[str, Any]) -> set[str] | None:
        """Nodes named in ``nodes`` united with those matching ``nodeSelectors``; None: no constraint."""
        if "nodes" not in selector and "nodeSelectors" not in selector:
            return None
        allowed = set(selector.get("nodes", []))
        if node_labels := selector.get("nodeSelectors"):
            terms = ",".join(f"{k}={v}" for k, v in node_labels.items())
            allowed |= {node.metadata.name for node in self._call(self.core.list_node, label_selector=terms).items}
        return allowed

    # -- daemons -----------------------------------------------------------

    def daemons(self) -> list[tuple[str, str]]:
        """(node, address) of every running daemon: for the operator's command."""
        running = [p for p in self._pods(self.daemon_namespace, label_selector=DAEMON_LABELS) if _serving(p)]
        found = []
        for pod in sorted(running, key=lambda p: p["spec"].get("nodeName") or ""):
            uid = pod["metadata"]["uid"]
            with self._lock:
                if uid not in self._addresses:
                    self._addresses[uid] = self._reach(pod)
                found.append((pod["spec"].get("nodeName") or "?", self._addresses[uid]))
        return found

    def _daemon_on(self, node: str) -> Pod:
        pods = self._pods(self.daemon_namespace, label_selector=DAEMON_LABELS, field_selector=f"spec.nodeName={node}")
        running = [p for p in pods if _serving(p)]
        if not running:
            raise ChaosError(
                f"no chaos daemon is running on node {node!r}: found no running pod labeled {DAEMON_LABELS} "
                f"in namespace {self.daemon_namespace!r} there (deploy it with `kubectl apply -k daemon/deploy`, "
                "or set --chaos-daemon-namespace)"
            )
        return running[0]

    def _reach(self, daemon: Pod) -> str:
        ip = daemon["status"]["podIP"]
        if self._access == "direct" or (self._access == "auto" and _reachable(ip, DAEMON_PORT)):
            return f"{ip}:{DAEMON_PORT}"
        from ..portforward import PortForwardRelay

        relay = PortForwardRelay(self.core, daemon["metadata"]["namespace"], daemon["metadata"]["name"], DAEMON_PORT)
        self._relays.append(relay)
        return relay.address

    # -- API access --------------------------------------------------------

    @property
    def core(self) -> Any:
        if self._core is None:
            self._core = self._connect()
        return self._core

    def _connect(self) -> Any:
        try:
            from kubernetes import client, config
        except ImportError:
            raise ChaosError(
                "the kubernetes backend needs the kubernetes client: pip install 'pytest-chaos[kubernetes]'"
            ) from None
        try:
            if self._kubeconfig or os.environ.get("KUBECONFIG") or os.path.exists(os.path.expanduser("~/.kube/config")):
                api = config.new_client_from_config(config_file=self._kubeconfig, context=self._context)
            else:
                config.load_incluster_config()
                api = client.ApiClient()
        except Exception as err:  # noqa: BLE001 - the client raises several unrelated types here
            raise ChaosError(f"cannot load the Kubernetes configuration ({self.describe()}): {err}") from None
        return client.CoreV1Api(api)

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return method(*args, _request_timeout=30, **kwargs)
        except ApiException as err:
            if err.status == 404 and method.__name__ == "read_namespaced_pod":
                raise
            raise ChaosError(f"the Kubernetes API refused {method.__name__}: {err.status} {err.reason}: {err.body}") from None
        except HTTPError as err:
            raise ChaosError(f"the Kubernetes API is unreachable ({self.describe()}): {err}") from None

    def _json(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """``method``'s response as plain JSON, without the client's models."""
        data = self._call(method, *args, _preload_content=False, **kwargs).data
        with _collection_paused():
            return json.loads(data)


def _containers(pod: Pod, container_names: Sequence[str] | None) -> list[Target]:
    """Targets for ``container_names`` of ``pod`` (default: its first container) that have started."""
    metadata, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
    declared = [c["name"] for c in spec["containers"]]
    wanted = list(container_names) if container_names else declared[:1]
    container_ids = {s["name"]: s.get("containerID") for s in status.get("containerStatuses") or []}
    targets = []
    for name in wanted:
        container_id = container_ids.get(name)
        if name in declared and container_id:
            targets.append(
                Target(
                    container_id=container_id,
                    name=f"{metadata['namespace']}/{metadata['name']}/{name}",
                    namespace=metadata["namespace"],
                    pod=metadata["name"],
                    pod_uid=metadata["uid"],
                    container=name,
                    node=spec.get("nodeName"),
                    address=status.get("podIP"),
                )
            )
    return targets


def _alive(pod: Pod) -> bool:
    """Pods being deleted are left out: chaos on them would not tell anything."""
    return pod["metadata"].get("deletionTimestamp") is None


def _serving(daemon: Pod) -> bool:
    """A daemon pod that can take requests: running, with an address, and not being deleted."""
    status = daemon.get("status", {})
    return status.get("phase") == "Running" and bool(status.get("podIP")) and _alive(daemon)


@contextlib.contextmanager
def _collection_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a response is parsed: every object the parse makes survives
    it, which sets off full collections of the whole heap (most of a page's parse time otherwise), and
    parsed JSON holds no cycles for it to find."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _reachable(host: str, port: int, starting_s: float = STARTING_S) -> bool:
    """Whether ``host:port`` takes a TCP connection from here. Refused means the address is routed and nothing
    listens yet (a daemon pod just started, as when one was replaced): asked again for up to ``starting_s``
    before the port-forward is chosen for the pod's lifetime."""
    deadline = time.monotonic() + starting_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
                return True
        except ConnectionRefusedError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        except OSError:
            return False
