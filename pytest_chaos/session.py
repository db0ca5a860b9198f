"""Running experiments: select, pick by mode, inject on every target, recover.

This is the machinery behind the marker and the ``chaos`` fixture, usable
without pytest (the benchmarks drive it directly).
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from .backends import Backend
from .defaults import DEFAULT_LEASE_S, DEFAULT_RPC_TIMEOUT_S
from .errors import ChaosError, ChaosSpecError, DaemonUnreachable
from .handshake import Handshakes
from .kinds import KINDS, InjectContext
from .kinds.base import RecoveredByPlugin
from .leases import LeaseKeeper
from .manifests import manifest_specs
from .model import Experiment, ExperimentSpec, Target
from .modes import choose
from .outcomes import settle_from_daemon
from .spec import build_spec
from .transport import DaemonClient

MAX_PARALLEL_TARGETS = 16


class ChaosSession:
    """One test run's chaos state: the backend, daemon clients, the seed, leases and every experiment."""

    def __init__(self, backend: Backend, seed: int, rpc_timeout_s: float = DEFAULT_RPC_TIMEOUT_S,
                 lease_s: float = DEFAULT_LEASE_S) -> None:
        self.backend = backend
        self.seed = seed
        self.rpc_timeout_s = rpc_timeout_s
        self.experiments: list[tuple[str, Experiment]] = []  # (test id, experiment), in order
        self._clients: dict[str, DaemonClient] = {}
        self.handshakes = Handshakes()  # each daemon's version and kinds, asked before the first Apply there
        self.leases = LeaseKeeper(self.client, lease_s, self.readdress)
        self._owner = f"pytest {os.getpid()}@{socket.gethostname()}"
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        # Kinds the plugin recovers itself (pod-failure): their duration's timers, and one lock so that a
        # timer and the teardown never recover the same target twice.
        self._timers: dict[int, threading.Timer] = {}
        self._plugin_recovery = threading.Lock()

    def spec(self, args: Sequence[Any], kwargs: dict[str, Any]) -> ExperimentSpec:
        return build_spec(self.backend, args, kwargs)

    def specs(self, args: Sequence[Any], kwargs: dict[str, Any], base_dir: str = ".") -> list[ExperimentSpec]:
        """A marker's experiments: one, or one per document of its ``manifest`` (relative to ``base_dir``)."""
        if "manifest" not in kwargs:
            return [self.spec(args, kwargs)]
        if args or len(kwargs) != 1:
            raise ChaosSpecError("manifest", "comes alone: the Chaos Mesh resource gives the kind, the selector "
                                             "and the rest")
        return manifest_specs(self.backend, kwargs["manifest"], base_dir)

    def rng(self, test_id: str, index: int) -> random.Random:
        # Seeded per experiment, so one test's picks do not depend on which tests ran before it.
        return random.Random(f"{self.seed}:{test_id}:{index}")

    def apply(self, spec: ExperimentSpec, test_id: str = "", index: int = 0) -> Experiment:
        """Select, pick and inject. Raises ChaosError, after undoing any partial injection."""
        experiment = Experiment(spec)
        self.experiments.append((test_id, experiment))
        try:
            self._select(experiment, test_id, index)
            # Nonzero: zero asks the daemon for a seed of its own.
            fault_seed = random.Random(f"{self.seed}:{test_id}:{index}:fault").getrandbits(63) | 1
            self._inject_all(experiment, f"{self._owner} {test_id}".strip(), experiment.peers, fault_seed)
        except ChaosError as err:
            experiment.outcome, experiment.detail = "failed", str(err)
            raise
        experiment.outcome, experiment.applied_at = "applied", time.time()
        if _plugin_recovers(spec.kind):
            if spec.duration is not None:
                timer = threading.Timer(spec.duration, self._expire, (experiment,))
                timer.daemon = True
                self._timers[id(experiment)] = timer
                timer.start()
        elif KINDS[spec.kind].recoverable:
            self.leases.track(experiment)
        return experiment

    def plan(self, spec: ExperimentSpec, test_id: str = "", index: int = 0) -> Experiment:
        """Select and pick as ``apply`` would, with the same picks, and inject nothing (a dry run)."""
        experiment = Experiment(spec)
        self.experiments.append((test_id, experiment))
        try:
            self._select(experiment, test_id, index)
        except ChaosError as err:
            experiment.outcome, experiment.detail = "failed", str(err)
            raise
        experiment.outcome, experiment.detail = "planned", "dry run: nothing injected"
        for target in experiment.targets:
            target.state = "planned"
        return experiment

    def _select(self, experiment: Experiment, test_id: str, index: int) -> None:
        spec = experiment.spec
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
        experiment.peers = self._peers(spec, random.Random(f"{self.seed}:{test_id}:{index}:target"))

    def recover(self, experiment: Experiment) -> None:
        """Undo ``experiment`` on every target; raises ChaosError naming what is left if any target failed, and
        when the fault stopped early on a target while the test ran (its daemon said so): a chaos test whose
        chaos ended before the test did must not pass silently."""
        if experiment.outcome == "failed" and experiment.applied_at is not None:
            raise ChaosError(f"the fault stopped early, while the test ran: {experiment.detail}")
        if experiment.outcome != "applied":
            return
        if not KINDS[experiment.kind].recoverable:
            for target in experiment.targets:
                target.state = "recovered"
            experiment.outcome, experiment.detail = "recovered", "one-shot, nothing to recover"
            experiment.ended_at = time.time()
            return
        self.leases.untrack(experiment)
        stopped_early = [t for t in experiment.targets if t.state == "failed"]
        if _plugin_recovers(experiment.kind):
            if (timer := self._timers.pop(id(experiment), None)) is not None:
                timer.cancel()
            with self._plugin_recovery:
                self._recover_by_plugin(experiment.kind, [t for t in experiment.targets if t.state == "applied"])
        else:
            self._recover_targets([t for t in experiment.targets if t.state == "applied"])
        experiment.settle()
        if experiment.outcome == "failed":
            early = "; ".join(f"{t.describe()}: {t.detail}" for t in stopped_early)
            later = "; ".join(f"{t.describe()}: {t.detail}" for t in experiment.targets
                              if t.state == "failed" and t not in stopped_early)
            raise ChaosError("; ".join(([f"the fault stopped early, while the test ran, on {early}"] if early else [])
                                       + ([f"recovery failed: {later}"] if later else [])))

    def client(self, address: str) -> DaemonClient:
        if address not in self._clients:
            self._clients[address] = DaemonClient(address, self.rpc_timeout_s, tls=self.backend.client_tls(),
                                                  preflight=self.handshakes.check)
        return self._clients[address]

    def _expire(self, experiment: Experiment) -> None:
        """A plugin-recovered experiment's duration ran out: recover it now, as a daemon would its own."""
        with self._plugin_recovery:
            self._timers.pop(id(experiment), None)
            targets = [t for t in experiment.targets if t.state == "applied"]
            self._recover_by_plugin(experiment.kind, targets)
            for target in targets:
                if target.state == "recovered":
                    target.state = "expired"
                    target.detail = f"duration {experiment.spec.duration:g}s ran out: {target.detail}"
            experiment.settle()

    def _recover_by_plugin(self, kind: str, targets: list[Target]) -> None:
        try:
            cast(RecoveredByPlugin, KINDS[kind]).recover(self.backend, targets)
        except ChaosError as err:
            for target in targets:
                if target.state == "applied":
                    target.state, target.detail = "failed", f"not recovered: {err}"

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()  # their experiments' teardowns have run, or the run is ending: pytest-chaos recover
        self._timers.clear()
        self.leases.stop()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        self.backend.close()

    def _peers(self, spec: ExperimentSpec, rng: random.Random) -> list[Target]:
        """What a network fault's ``target`` selects, picked by its own mode (Chaos Mesh's second selector)."""
        # Only the network kinds' ``target`` is a selection; the HTTP kinds' names Request or Response.
        selection = spec.params.get("target") if getattr(KINDS[spec.kind], "peer_selection", False) else None
        if selection is None:
            return []
        candidates = self.backend.candidates(selection["selector"], None)
        peers = [peer for unit in choose(candidates, selection["mode"], selection["value"], rng) for peer in unit]
        if not peers:
            raise ChaosError(f"the fault's target {selection['selector']!r} selects no peer ({self.backend.describe()})")
        return peers

    def _inject_all(self, experiment: Experiment, owner: str, peers: Sequence[Target] = (), seed: int = 0) -> None:
        kind = KINDS[experiment.kind]
        for target in experiment.targets:
            target.injection_id = uuid.uuid4().hex
            if kind.uses_daemon:
                target.daemon = self.backend.daemon_address(target)
        if kind.uses_daemon:
            self._handshake(experiment.kind, [t.daemon for t in experiment.targets])

        def inject(target: Target) -> None:
            def context() -> InjectContext:
                return InjectContext(self.client(target.daemon) if kind.uses_daemon else None, self.backend,
                                     self.leases.lease_s, experiment.spec.duration, owner, tuple(experiment.targets),
                                     tuple(peers), seed)

            try:
                kind.inject(context(), target, experiment.spec.params)
            except DaemonUnreachable:
                # Nothing was sent: if the node's daemon was replaced since its address was looked up, once more.
                if not kind.uses_daemon or not self.readdress([target]):
                    raise
                kind.inject(context(), target, experiment.spec.params)
            if (info := self.handshakes.known(target.daemon)) is not None:
                target.daemon_version = info.name

        errors = self._each_target(experiment.targets, inject)
        if errors:
            if _plugin_recovers(experiment.kind):
                with self._plugin_recovery:
                    self._recover_by_plugin(experiment.kind, [t for t in experiment.targets if t.state == "applied"])
            elif kind.recoverable:  # undo the targets that did get the fault
                self._recover_targets([t for t in experiment.targets if t.state == "applied"])
            raise ChaosError("; ".join(dict.fromkeys(errors)))  # a daemon's refusal once, not once per target

    def _handshake(self, kind: str, addresses: list[str]) -> None:
        """Every daemon of the experiment is asked (once per session) before any target is touched: one that
        predates the handshake or lacks the kind refuses the whole experiment. Its fields are checked per request
        (``DaemonClient``'s preflight)."""
        for address in dict.fromkeys(addresses):
            try:
                self.handshakes.check_kind(self.client(address), kind)
            except DaemonUnreachable:
                continue  # injecting looks the node's daemon up again, and asks the new one

    def _recover_targets(self, targets: list[Target]) -> None:
        """Recover through each target's daemon, one call per daemon; record how each ended."""
        by_daemon: dict[str, list[Target]] = {}
        for target in targets:
            by_daemon.setdefault(target.daemon, []).append(target)

        def recover(address: str) -> None:
            group = by_daemon[address]
            try:
                statuses = self.client(address).recover([t.injection_id for t in group])
            except ChaosError as err:
                if not self.readdress(group):
                    for target in group:
                        target.state = "failed"
                        target.detail = (f"not recovered: {err}; the fault may still be in force, until a daemon "
                                         "that takes over this one's journal recovers it")
                    return
                # The node's daemon was replaced: its successor adopted the journal.
                self._recover_targets(group)
                return
            for target, status in zip(group, statuses, strict=False):
                settle_from_daemon(target, status)

        self._each(list(by_daemon), recover)

    def readdress(self, targets: list[Target]) -> bool:
        """Look each target's daemon up again (a replaced daemon pod has a new address); True if any moved."""
        moved = False
        for target in targets:
            try:
                address = self.backend.daemon_address(target, refresh=True)
            except ChaosError:
                continue
            if address != target.daemon:
                target.daemon, moved = address, True
        return moved

    def _each_target(self, targets: list[Target], action: Callable[[Target], None]) -> list[str]:
        """Run ``action`` on all targets concurrently; return the error messages."""
        def run(target: Target) -> str | None:
            try:
                action(target)
            except ChaosError as err:
                return str(err)
            return None

        return [e for e in self._each(targets, run) if e]

    def _each(self, items: list[Any], action: Callable[[Any], Any]) -> list[Any]:
        """``action`` on every item, concurrently through the session's one pool (no per-call thread start-up).

        One item, or a call from inside the pool (a recovery that re-addresses
        its daemon), runs in the calling thread: the pool never waits on itself.
        """
        if len(items) <= 1 or getattr(_in_pool, "active", False):
            return [action(item) for item in items]
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(MAX_PARALLEL_TARGETS, "chaos-target", _mark_in_pool)
        return list(self._pool.map(action, items))


_in_pool = threading.local()


def _plugin_recovers(kind: str) -> bool:
    """A recoverable kind without a daemon (pod-failure) is recovered by the plugin itself."""
    return KINDS[kind].recoverable and not KINDS[kind].uses_daemon


def _mark_in_pool() -> None:
    _in_pool.active = True
