"""A worker pool's resilience, tested the way an app team would.

The "app": three worker containers (containerd, labeled ``app=example-worker``)
that share a job queue, a directory of files: each worker moves jobs from
``/queue/in`` to ``/queue/done``, tagging each with its own name. The
property under test: the queue drains even when a worker is faulty. Each
test also checks that the chaos really happened (a paused worker did no
job), so it cannot pass without its fault.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

# "run" is this process's own: parallel runs (pytest-xdist workers) each select only what they started.
WORKER = {"app": "example-worker", "run": str(os.getpid())}
# $0 is the worker's name; mv is atomic, so two workers never take the same job.
WORKER_LOOP = ('while true; do for f in /queue/in/*; do [ -e "$f" ] && '
               'mv "$f" "/queue/done/${f##*/}.$0" 2>/dev/null; done; sleep 0.05; done')


class JobQueue:
    def __init__(self, root: str) -> None:
        self.incoming = os.path.join(root, "queue", "in")
        self.done = os.path.join(root, "queue", "done")
        for directory in (self.incoming, self.done):
            os.makedirs(directory, exist_ok=True)
        self.workers: dict[str, str] = {}  # container id -> worker name

    def submit(self, count: int, batch: str) -> None:
        for number in range(count):
            with open(os.path.join(self.incoming, f"{batch}-{number}"), "w") as job:
                job.write("work\n")

    def wait_drained(self, batch: str, count: int, timeout: float = 20.0) -> dict[str, str]:
        """Job -> the worker that did it, once all ``count`` jobs of ``batch`` are done."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = {name.rsplit(".", 1)[0]: name.rsplit(".", 1)[1]
                    for name in os.listdir(self.done) if name.startswith(f"{batch}-")}
            if len(done) == count:
                return done
            time.sleep(0.05)
        raise AssertionError(f"the queue did not drain: {len(os.listdir(self.incoming))} jobs still waiting")


@pytest.fixture(scope="module")
def queue(module_targets, tmp_path_factory):
    """The worker pool: three containers sharing one root filesystem, and so one queue."""
    root = str(tmp_path_factory.mktemp("worker-pool") / "rootfs")
    shutil.copytree(module_targets.rootfs, root, symlinks=True)
    jobs = JobQueue(root)
    for name in ("w1", "w2", "w3"):
        container_id = module_targets.containerd("sh", "-c", WORKER_LOOP, name, labels=WORKER, rootfs=root)
        jobs.workers[f"containerd://{container_id}"] = name
    return jobs


@pytest.mark.chaos("container-pause", selector={"labels": WORKER}, mode="one")
def test_queue_drains_while_a_worker_is_paused(queue, chaos):
    [paused] = chaos.experiments[0].targets
    queue.submit(30, "paused")
    done_by = queue.wait_drained("paused", 30)
    assert queue.workers[paused.container_id] not in done_by.values()  # it really was paused
    assert len(set(done_by.values())) >= 1


def test_a_paused_worker_catches_up_after_recovery(queue, chaos):
    with chaos.apply("container-pause", selector={"labels": WORKER}, mode="all", duration="1s") as experiment:
        queue.submit(5, "held")
        time.sleep(0.5)
        assert len(os.listdir(queue.incoming)) == 5  # every worker is paused: nothing moves
        deadline = time.monotonic() + 15
        while experiment.outcome == "applied" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert experiment.outcome == "expired"  # the duration ended it while the test ran
    assert len(queue.wait_drained("held", 5)) == 5


@pytest.mark.chaos("stress", selector={"labels": WORKER}, mode="one",
                   stressors={"cpu": {"workers": 1, "load": 100}, "memory": {"workers": 1, "size": "64MB"}})
def test_queue_drains_while_a_worker_is_under_cpu_and_memory_stress(queue, chaos):
    [stressed] = chaos.experiments[0].targets
    assert stressed.mechanism.startswith("stress-ng")
    queue.submit(20, "stressed")
    assert len(queue.wait_drained("stressed", 20)) == 20


@pytest.mark.chaos("process-kill", selector={"labels": WORKER}, mode="all", process="^sleep 0.05$")
def test_workers_survive_losing_their_child_processes(queue, chaos):
    # Each worker's loop sleeps in a child process; killing that child must not stop the worker.
    assert all(t.processes for t in chaos.experiments[0].targets)  # a child was really killed in each
    queue.submit(10, "orphaned")
    assert len(queue.wait_drained("orphaned", 10)) == 10


def test_queue_drains_when_a_worker_is_killed(queue, chaos):
    # Last in this module: the killed worker stays down (it has no restart policy).
    with chaos.apply("container-kill", selector={"labels": WORKER}, mode="one") as experiment:
        [killed] = experiment.targets
        queue.submit(20, "killed")
        done_by = queue.wait_drained("killed", 20)
    assert queue.workers[killed.container_id] not in done_by.values()
