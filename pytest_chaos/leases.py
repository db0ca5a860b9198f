"""Keeping the leases of live injections, from one background thread for the whole run.

Each daemon recovers a fault by itself when its lease runs out, so a test
runner that dies (SIGKILL, pytest-timeout's thread method, a crashed xdist
worker) leaves nothing in force for longer than the lease. While the runner
lives, this thread renews every live injection, batched per daemon, every
third of the lease; more often (each second) while an injection with a
duration is live, since renewing also says which injections the daemon
already recovered, and the experiment's outcome shows it during the test.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .errors import ChaosError
from .model import Experiment, Target
from .outcomes import settle_from_daemon
from .transport import DaemonClient

DURATION_POLL_S = 1.0


class LeaseKeeper:
    def __init__(self, client: Callable[[str], DaemonClient], lease_s: float,
                 readdress: Callable[[list[Target]], bool] = lambda targets: False) -> None:
        self._client = client
        self._readdress = readdress
        self.lease_s = lease_s
        self._live: list[Experiment] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def track(self, experiment: Experiment) -> None:
        with self._lock:
            self._live.append(experiment)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pytest-chaos-leases", daemon=True)
                self._thread.start()
        self._wake.set()

    def untrack(self, experiment: Experiment) -> None:
        with self._lock:
            if experiment in self._live:
                self._live.remove(experiment)

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def renew_now(self) -> None:
        """Renew every live injection, and take in what the daemons already recovered."""
        with self._lock:
            experiments = list(self._live)
        by_daemon: dict[str, list[Target]] = {}
        for experiment in experiments:
            for target in experiment.targets:
                if target.state == "applied":
                    by_daemon.setdefault(target.daemon, []).append(target)
        for address, targets in by_daemon.items():
            try:
                statuses = self._client(address).renew([t.injection_id for t in targets], self.lease_s)
            except ChaosError:
                # Unreachable for now: a replaced daemon has a new address, found for the next
                # round; otherwise the lease is the safety net.
                self._readdress(targets)
                continue
            for target, status in zip(targets, statuses, strict=False):
                settle_from_daemon(target, status)
        for experiment in experiments:
            experiment.settle()
            if experiment.outcome != "applied":  # the daemon ended it: nothing left to renew
                self.untrack(experiment)

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(timeout=self._interval())
            self._wake.clear()
            if not self._stopped.is_set():
                self.renew_now()

    def _interval(self) -> float:
        with self._lock:
            durations = any(e.spec.duration for e in self._live if e.outcome == "applied")
        return min(self.lease_s / 3, DURATION_POLL_S) if durations else self.lease_s / 3
