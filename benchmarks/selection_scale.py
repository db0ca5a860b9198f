"""Pod selection over 500, 5,000 and 20,000 pods in the API: time by label and by annotation, and peak memory.

For each size N, N pods are created in a namespace of their own,
``chaos-bench-select-<N>``; 50 of them, spread over the list, carry the label
and the annotation the selectors ask for. The pods are real API objects that
never run: their ``schedulerName`` names no scheduler, so no node is ever
assigned, no kubelet touches them, and deleting them is immediate. The 50
matching pods get a container status by hand (the status subresource), so the
selection yields them as targets as it would running pods.

Timed: the whole selection step a marker takes before any daemon call
(``check_selector`` and ``candidates``), by label (the API server filters) and
by annotation (every pod of the namespace is listed and filtered here). All
sizes exist at once and are timed round by round, interleaved, so machine
noise hits them alike and their ratio means something on a shared machine;
medians after a warm-up. This process's CPU time is kept beside the wall
time: it is the backend's own cost, without the API server's share or the
machine's other load. Peak memory: the Python heap (tracemalloc) during one
selection by annotation, which reads every pod of its namespace. The
namespaces are deleted at the end, Ctrl-C included, and leftovers of an
interrupted run are removed first.

Run with the cluster up (scripts/setup.sh; the chaos daemon is not used):

    python3 -m benchmarks.selection_scale [--quick] [--kubeconfig PATH]
"""

from __future__ import annotations

import concurrent.futures
import json
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from benchmarks.cluster import kubeconfig as find_kubeconfig
from benchmarks.report import Row, ms, run_main
from benchmarks.timing import interleaved_medians
from pytest_chaos.backends.kubernetes import PAGE_SIZE, KubernetesBackend

NEEDS_CLUSTER = True  # benchmarks/run.py passes it the cluster's kubeconfig, or reports the row skipped
NAMESPACE_PREFIX = "chaos-bench-select-"
# Namespaces are found by this label at the start, to remove what an interrupted run left.
OWNER_LABEL = ("pytest-chaos-bench", "selection-scale")
# No scheduler has this name: the pods stay unassigned, so nothing ever runs them.
SCHEDULER = "pytest-chaos-bench-unscheduled"
MARK = "pytest-chaos-bench/selected"
MATCHING = 50
KINDS = ("label", "annotation")
SIZES = (500, 5_000, 20_000)
QUICK_SIZES = (500, 5_000)
GOAL_SIZE = 5_000
GOAL_S = 1.0
THREADS = 16
PROGRESS_EVERY = 1_000
GONE_TIMEOUT_S = 900.0


def connect(kubeconfig: str) -> Any:
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=kubeconfig)
    api.configuration.connection_pool_maxsize = THREADS  # one connection per creating thread
    return client.CoreV1Api(api)


def pod(namespace: str, index: int, selected: bool) -> dict[str, Any]:
    """A pod shaped like a Deployment's (a few labels and annotations, one container) that never runs."""
    labels = {"app": "bench", "pod-template-hash": "7d4b9c8f6", "shard": str(index % 16)}
    annotations = {"kubectl.kubernetes.io/default-container": "main"}
    if selected:
        labels[MARK] = "yes"
        annotations[MARK] = "yes"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"pod-{index:05d}", "namespace": namespace, "labels": labels, "annotations": annotations},
        "spec": {
            "schedulerName": SCHEDULER,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"]}],
        },
    }


def running_status() -> dict[str, Any]:
    """What a kubelet would report for a started container: enough for the selection to target it."""
    return {"status": {"phase": "Running", "containerStatuses": [{
        "name": "main", "image": "busybox", "imageID": "", "ready": True, "restartCount": 0,
        "containerID": "containerd://" + "0" * 64, "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}},
    }]}}


def selected_indices(size: int) -> set[int]:
    return set(range(0, size, size // MATCHING))


def create_namespace(core: Any, namespace: str) -> None:
    from kubernetes.client.exceptions import ApiException

    body = {"metadata": {"name": namespace, "labels": dict([OWNER_LABEL])}}
    core.create_namespace(body, _request_timeout=30)
    # Pods are refused until the namespace's default service account exists.
    deadline = time.monotonic() + 60
    while True:
        try:
            core.read_namespaced_service_account("default", namespace, _request_timeout=30)
            return
        except ApiException as err:
            if err.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def create_pods(core: Any, namespace: str, size: int) -> float:
    """Create ``size`` pods with a thread pool, the matching ones given a running container; seconds taken."""
    selected = selected_indices(size)
    assert len(selected) == MATCHING
    stop = threading.Event()

    def create(worker: int) -> int:
        created = 0
        for index in range(worker, size, THREADS):
            if stop.is_set():
                break
            core.create_namespaced_pod(namespace, pod(namespace, index, index in selected),
                                       _preload_content=False, _request_timeout=60)
            if index in selected:
                core.patch_namespaced_pod_status(f"pod-{index:05d}", namespace, running_status(),
                                                 _preload_content=False, _request_timeout=60)
            created += 1
            progress.tick()
        return created

    progress = Progress(namespace, size)
    start = time.perf_counter()
    executor = concurrent.futures.ThreadPoolExecutor(THREADS)
    try:
        futures = [executor.submit(create, worker) for worker in range(THREADS)]
        assert sum(f.result() for f in futures) == size
    finally:
        stop.set()  # on an error or Ctrl-C, the other workers stop at their next pod
        executor.shutdown(wait=True, cancel_futures=True)
    return time.perf_counter() - start


class Progress:
    """Created pods, on stderr every PROGRESS_EVERY."""

    def __init__(self, namespace: str, size: int) -> None:
        self._namespace = namespace
        self._size = size
        self._done = 0
        self._start = time.perf_counter()
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self._done += 1
            if self._done % PROGRESS_EVERY == 0 or self._done == self._size:
                rate = self._done / (time.perf_counter() - self._start)
                print(f"  {self._namespace}: {self._done:,}/{self._size:,} pods created ({rate:.0f}/s)", file=sys.stderr)


def delete_namespaces(core: Any, names: list[str]) -> float:
    """Delete ``names`` and wait until they are gone; seconds taken."""
    from kubernetes.client.exceptions import ApiException

    start = time.perf_counter()
    for name in names:
        try:
            core.delete_namespace(name, _request_timeout=30)
        except ApiException as err:
            if err.status != 404:
                raise
    deadline = time.monotonic() + GONE_TIMEOUT_S
    remaining = list(names)
    while remaining:
        if time.monotonic() > deadline:
            raise TimeoutError(f"namespaces {', '.join(remaining)} still exist after {GONE_TIMEOUT_S:.0f} s")
        time.sleep(0.5)
        remaining = [name for name in remaining if _exists(core, name)]
    return time.perf_counter() - start


def _exists(core: Any, namespace: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        core.read_namespace(namespace, _request_timeout=30)
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


def remove_leftovers(core: Any) -> None:
    key, value = OWNER_LABEL
    names = [ns.metadata.name for ns in core.list_namespace(label_selector=f"{key}={value}", _request_timeout=30).items]
    if names:
        print(f"removing leftovers of an earlier run: {', '.join(names)}", file=sys.stderr)
        delete_namespaces(core, names)


def pod_bytes(core: Any, namespace: str) -> float:
    """Mean size of a pod in a list response, as JSON: what the API sends per pod."""
    response = core.list_namespaced_pod(namespace, limit=500, _preload_content=False, _request_timeout=30)
    return len(response.data) / len(json.loads(response.data)["items"])


def selection(backend: KubernetesBackend, namespace: str, kind: str, size: int, cpu: list[float]) -> Callable[[], None]:
    """A timed action: select the MATCHING pods of ``namespace`` by ``kind`` (label or annotation), adding the
    CPU seconds this process spent to ``cpu``. Checked first to yield exactly the pods marked to match."""
    key = {"label": "labelSelectors", "annotation": "annotationSelectors"}[kind]
    selector = backend.check_selector({"namespaces": [namespace], key: {MARK: "yes"}}, None)
    expected = sorted(f"pod-{index:05d}" for index in selected_indices(size))

    def select() -> None:
        start = time.process_time()
        units = backend.candidates(selector, None)
        cpu.append(time.process_time() - start)
        assert len(units) == MATCHING, f"selected {len(units)} pods of {namespace} by {kind}, not {MATCHING}"

    units = backend.candidates(selector, None)
    assert sorted(unit[0].pod or "" for unit in units) == expected, f"{namespace} by {kind}: not the expected pods"
    return select


def peak_heap(select: Callable[[], None]) -> float:
    """Peak bytes the Python heap grew by during ``select``; the lower of two, as a collection mid-call inflates one."""
    peaks = []
    for _ in range(2):
        tracemalloc.start()
        select()
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return float(min(peaks))


def rows(quick: bool, kubeconfig: str | None = None) -> list[Row]:
    kubeconfig = find_kubeconfig(kubeconfig)
    sizes = QUICK_SIZES if quick else SIZES
    rounds = 3 if quick else 15
    core = connect(kubeconfig)
    remove_leftovers(core)
    results: dict[int, dict[str, float]] = {}
    created: list[str] = []
    backend = KubernetesBackend(kubeconfig=kubeconfig)
    try:
        for size in sizes:
            namespace = f"{NAMESPACE_PREFIX}{size}"
            created.append(namespace)
            create_namespace(core, namespace)
            results[size] = {"create": create_pods(core, namespace, size), "bytes": pod_bytes(core, namespace)}
        print(f"timing {rounds} interleaved rounds", file=sys.stderr)
        names = {f"{kind} {size}": (size, kind) for size in sizes for kind in KINDS}
        cpu: dict[str, list[float]] = {name: [] for name in names}
        actions = {name: selection(backend, f"{NAMESPACE_PREFIX}{size}", kind, size, cpu[name])
                   for name, (size, kind) in names.items()}
        medians = interleaved_medians(actions, rounds)
        for size in sizes:
            results[size].update({kind: medians[f"{kind} {size}"] for kind in KINDS})
            # The first sample is interleaved_medians' warm-up.
            results[size]["cpu"] = statistics.median(cpu[f"annotation {size}"][1:])
            results[size]["peak"] = peak_heap(actions[f"annotation {size}"])
    finally:
        backend.close()
        print(f"deleting {', '.join(created)}", file=sys.stderr)
        deleted_s = delete_namespaces(core, created)
    return _rows(results, rounds, deleted_s)


def _rows(results: dict[int, dict[str, float]], rounds: int, deleted_s: float) -> list[Row]:
    out = []
    for kind in KINDS:
        where = "the API server filters" if kind == "label" else "the backend filters"
        for size, figures in results.items():
            what = f"select by {kind} ({where}), {MATCHING} of {size:,} pods, median of {rounds}"
            if size == GOAL_SIZE:
                out.append(Row(what, ms(figures[kind]), goal=f"<= {GOAL_S:.0f} s", met=figures[kind] <= GOAL_S))
            elif size > GOAL_SIZE and GOAL_SIZE in results:
                linear = size / GOAL_SIZE
                ratio = figures[kind] / results[GOAL_SIZE][kind]
                out.append(Row(what, ms(figures[kind]), f"{GOAL_SIZE:,} pods {ms(results[GOAL_SIZE][kind])}", ratio,
                               f"<= {linear:.1f}x", ratio <= linear))
            else:
                out.append(Row(what, ms(figures[kind])))
    for size, figures in results.items():
        what = f"CPU time of this process in a selection by annotation, {size:,} pods"
        if size > GOAL_SIZE and GOAL_SIZE in results:
            out.append(Row(what, ms(figures["cpu"]), f"{GOAL_SIZE:,} pods {ms(results[GOAL_SIZE]['cpu'])}",
                           figures["cpu"] / results[GOAL_SIZE]["cpu"]))
        else:
            out.append(Row(what, ms(figures["cpu"])))
    smallest = min(results)
    for size, figures in results.items():
        what = f"peak Python heap of a selection by annotation, {size:,} pods ({PAGE_SIZE} a page)"
        if size == smallest:
            out.append(Row(what, _mb(figures["peak"])))
        else:
            ratio = figures["peak"] / results[smallest]["peak"]
            out.append(Row(what, _mb(figures["peak"]), f"{smallest:,} pods {_mb(results[smallest]['peak'])}", ratio,
                           "bounded: <= 1.5x", ratio <= 1.5))
    for size, figures in results.items():
        out.append(Row(f"create {size:,} pods ({THREADS} threads)",
                       f"{figures['create']:.1f} s ({size / figures['create']:.0f} pods/s)"))
    out.append(Row(f"delete the namespaces ({sum(results):,} pods), until gone", f"{deleted_s:.1f} s"))
    mean_bytes = statistics.mean(figures["bytes"] for figures in results.values())
    out.append(Row("a pod in a list response, as JSON", f"{mean_bytes / 1000:.1f} kB"))
    return out


def _mb(size: float) -> str:
    return f"{size / 1e6:.1f} MB"


def main() -> int:
    return run_main(__doc__, "Pod selection over many pods in the API (kubernetes backend, no daemon call)", rows,
                    "500 and 5,000 pods, fewer rounds",
                    ("--kubeconfig", {"help": "default: $PYTEST_CHAOS_KUBECONFIG, $KUBECONFIG, the test bed's"}))


if __name__ == "__main__":
    sys.exit(main())
