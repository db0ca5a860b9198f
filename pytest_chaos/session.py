"""Running experiments: select, pick by mode, inject on every target, recover.

This is the machinery behind the marker and the ``chaos`` fixture, usable
without pytest (the benchmarks drive it directly).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .backends import Backend
from .errors import ChaosError
from .kinds import KINDS
from .model import Experiment, ExperimentSpec, Target
from .modes import choose
from .spec import build_spec
from .transport import DEFAULT_RPC_TIMEOUT_S, DaemonClient

MAX_PARALLEL_TARGETS = 16


class ChaosSession:
    """One test run's chaos state: the backend, daemon clients, the seed and every experiment."""

    def __init__(self, backend: Backend, seed: int, rpc_timeout_s: float = DEFAULT_RPC_TIMEOUT_S) -> None:
        self.backend = backend
        self.seed = seed
        self.rpc_timeout_s = rpc_timeout_s
        self.experiments: list[tuple[str, Experiment]] = []  # (test id, experiment), in order
        self._clients: dict[str, DaemonClient] = {}

    def spec(self, args: Sequence[Any], kwargs: dict[str, Any]) -> ExperimentSpec:
        return build_spec(self.backend, args, kwargs)

    def rng(self, test_id: str, index: int) -> random.Random:
        # Seeded per experiment, so one test's picks do not depend on which tests ran before it.
        return random.Random(f"{self.seed}:{test_id}:{index}")

    def apply(self, spec: ExperimentSpec, test_id: str = "", index: int = 0) -> Experiment:
        """Select, pick and inject. Raises ChaosError, after undoing any partial injection."""
        experiment = Experiment(spec)
        self.experiments.append((test_id, experiment))
        try:
            candidates = self.backend.candidates(spec.selector, spec.container_names)
            if not candidates:
                raise ChaosError(f"no target is selected by {spec.selector!r} ({self.backend.describe()})")
            units = choose(candidates, spec.mode, spec.value, self.rng(test_id, index))
            experiment.targets = [target for unit in units for target in unit]
            if not experiment.targets:
                raise ChaosError(
                    f"mode {spec.mode!r} with value {spec.value:g} picked none of {len(candidates)} "
                    f"candidates (seed {self.seed}): no target is selected"
                )
            self._inject_all(experiment)
        except ChaosError as err:
            experiment.outcome, experiment.detail = "failed", str(err)
            raise
        experiment.outcome = "applied"
        return experiment

    def recover(self, experiment: Experiment) -> None:
        """Undo ``experiment`` on every target; raises ChaosError if any target failed to recover."""
        if experiment.outcome != "applied":
            return
        kind = KINDS[experiment.kind]
        if not kind.recoverable:
            experiment.outcome, experiment.detail = "recovered", "one-shot, nothing to recover"
            return
        errors = self._each_target(experiment.targets, lambda t: kind.recover(self.client(t.daemon), t))
        experiment.outcome = "recovered" if not errors else "failed"
        if errors:
            experiment.detail = "recovery failed: " + "; ".join(errors)
            raise ChaosError(experiment.detail)

    def client(self, address: str) -> DaemonClient:
        if address not in self._clients:
            self._clients[address] = DaemonClient(address, self.rpc_timeout_s, tls=self.backend.client_tls())
        return self._clients[address]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        self.backend.close()

    def _inject_all(self, experiment: Experiment) -> None:
        kind = KINDS[experiment.kind]
        for target in experiment.targets:
            target.injection_id = uuid.uuid4().hex
            target.daemon = self.backend.daemon_address(target)
        errors = self._each_target(
            experiment.targets, lambda t: kind.inject(self.client(t.daemon), t, experiment.spec.params)
        )
        if errors:
            if kind.recoverable:  # undo the targets that did get the fault
                self._each_target([t for t in experiment.targets if t.pid], lambda t: kind.recover(self.client(t.daemon), t))
            raise ChaosError("; ".join(errors))

    @staticmethod
    def _each_target(targets: list[Target], action) -> list[str]:
        """Run ``action`` on all targets concurrently; return the error messages."""
        def run(target: Target) -> str | None:
            try:
                action(target)
            except ChaosError as err:
                return str(err)
            return None

        with ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL_TARGETS, len(targets)))) as pool:
            return [e for e in pool.map(run, targets) if e]
