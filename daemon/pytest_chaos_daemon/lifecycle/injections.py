"""Injections in force: applied once, journaled first, recovered exactly once.

Every injection is journaled (``journal.py``) with its undo plan before the
target changes, and again at each change of state. A recoverable one ends by
``recover`` (the client's Recover), or by the daemon when its duration passes
or its lease runs out without a renewal, whichever comes first. On start the
daemon replays the journal: injections interrupted mid-apply are undone,
those whose time ran out while it was down are recovered, the others are
kept (and ``resume``d where their effect died with the old daemon).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from ..api.v1 import chaos_daemon_pb2 as pb
from ..confinement.procfs import boot_id, instance_alive, instance_key
from ..confinement.target import HeldTarget
from ..errors import DaemonError, FailedPrecondition
from ..faults.base import Fault, FaultContext, Output
from ..server.logs import log
from . import journal as states
from .journal import Journal, Record

DEFAULT_LEASE_S = 30.0
# How often a daemon looks for injections of daemons that died while it runs.
ADOPT_EVERY_S = 5.0


class Injections:
    def __init__(self, journal: Journal, faults: Mapping[str, Fault], ctx: FaultContext,
                 default_lease_s: float = DEFAULT_LEASE_S, recover_on_exit: bool = False) -> None:
        self._journal = journal
        self._key = instance_key(os.getpid())
        self._recover_on_exit = recover_on_exit
        self._faults = dict(faults)
        self._ctx = ctx
        self.default_lease_s = default_lease_s
        self._records: dict[str, Record] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._changed = asyncio.Event()
        self._expiry: asyncio.Task[None] | None = None
        self._ending: set[asyncio.Future[Any]] = set()  # take-overs and recoveries under way beside the calls
        ctx.children.on_program_ended = self._program_ended

    async def start(self) -> None:
        """Take over what daemons that are gone left in the journal, then start recovering what expires. Returns
        once the records are claimed (journal reads and writes alone): undoing and resuming them goes on in the
        background, so a restarted daemon serves at once, whatever its journal holds."""
        await self.adopt()
        self._expiry = asyncio.create_task(self._expire_forever())

    async def adopt(self) -> None:
        """Claim the journal records of daemons that are gone, then, in the background: undo half-applied
        injections, recover those whose time ran out, resume the others. One daemon claims at a time: two taking
        over the same record would both recover it; each claim is journaled before the next daemon looks. A
        claimed record is known at once, so a client's Renew, Recover or listing finds it while it is taken over."""
        with self._journal.adoption() as ours:
            claimed = self._claim() if ours else []  # otherwise another daemon claims now; the next round sees
        if claimed:
            self._background(self._take_over(claimed))
        self._changed.set()

    def _claim(self) -> list[Record]:
        now = time.time()
        claimed, pruned = [], []
        for record in self._journal.load():
            if record.id in self._records or record.daemon == self._key or instance_alive(record.daemon):
                continue
            if not record.live:
                # Ended: nothing to take over; whoever sees it old enough prunes it.
                if record.ended_at is not None and now - record.ended_at > states.KEEP_ENDED_S:
                    pruned.append(record.id)
                continue
            previous, record.daemon = record.daemon, self._key
            claimed.append(record)
            log(logging.INFO, "adopted from the journal", injection_id=record.id, kind=record.kind,
                container_id=record.container_id, previous_daemon=previous)
        # Journaled together (two syncs for them all): nothing awaits meanwhile, so no call sees a claim
        # before it is on disk.
        self._journal.remove(*pruned)
        self._journal.write_all(claimed)
        self._records.update((record.id, record) for record in claimed)
        return claimed

    async def _take_over(self, records: list[Record]) -> None:
        for record in recovery_order(records):
            await _let_calls_in()
            if record.state == states.APPLYING:
                await self.recover(record.id, "interrupted while applying: undone", states.FAILED)
            elif record.expires_at is not None and record.expires_at <= time.time():
                await self.recover(record.id, "its time ran out while no daemon watched it", states.EXPIRED)
            else:
                await self._resume(record)
        log(logging.INFO, "adoption done", injections=len(records))

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` beside the calls; ``close`` waits for it."""
        task = asyncio.ensure_future(work)
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def close(self) -> None:
        """Stop expiring, finish taking over and recovering what is under way. Injections stay journaled for the
        next daemon, unless this one was told to recover them on exit (a daemon that no one will restart)."""
        if self._expiry is not None:
            self._expiry.cancel()
            await asyncio.gather(self._expiry, return_exceptions=True)
        await asyncio.gather(*self._ending, return_exceptions=True)
        if self._recover_on_exit:
            for record in [r for r in self._records.values() if r.live]:
                await self.recover(record.id, "the daemon stopped", states.EXPIRED)

    async def apply(
        self, kind: str, container_id: str, target: HeldTarget, params: dict[str, Any],
        injection: pb.Injection, duration_s: float | None,
    ) -> tuple[Record, Output]:
        fault = self._faults[kind]
        existing = self._records.get(injection.id)
        if existing is not None:
            if existing.kind == kind and existing.container_id == container_id:
                return existing, Output([])  # a retried Apply: applied once
            raise FailedPrecondition(f"injection id {injection.id} is already used for {existing.kind} on "
                                     f"{existing.container_id}")
        plan = await fault.plan(self._ctx, target, params)
        now = time.time()
        lease_s = self.lease_seconds(injection.lease)
        record = Record(
            id=injection.id, kind=kind, container_id=container_id, pid=target.pid,
            start_ticks=target.stat.start_ticks, boot_id=boot_id(), owner=injection.owner[:300], params=params,
            plan=plan.undo, mechanism=plan.mechanism, state=states.APPLYING, applied_at=now,
            lease_expires_at=now + lease_s if fault.recoverable else None,
            duration_expires_at=now + duration_s if fault.recoverable and duration_s else None,
            daemon=self._key,
        )
        async with self._lock(record.id):
            self._records[record.id] = record
            self._journal.write(record)
            try:
                done = await fault.apply(self._ctx, target, params, plan)
            except BaseException as err:
                await self._undo_partial(fault, record, err)
                raise
            if fault.recoverable:
                record.state = states.ACTIVE
            else:
                record.end(states.ONE_SHOT, "done; nothing to recover")
            self._journal.write(record)
        log(logging.INFO, "applied", injection_id=record.id, kind=kind, container_id=container_id, pid=target.pid,
            mechanism=record.mechanism, expires_at=record.expires_at, owner=record.owner)
        self._changed.set()
        return record, done if isinstance(done, Output) else Output(done)

    async def recover(self, injection_id: str, detail_prefix: str = "", state: str = states.RECOVERED) -> Record | None:
        """Recover once; a second call returns how it ended. None for an unknown id."""
        record = self._records.get(injection_id)
        if record is None:
            return None
        async with self._lock(injection_id):
            if not record.live:
                return record
            fault = self._faults[record.kind]
            try:
                done = await fault.recover(self._ctx, record)
            except DaemonError as err:
                prefix = f"{detail_prefix}; " if detail_prefix else ""
                record.end(states.FAILED, f"{prefix}recovery failed: {err.message}")
            except Exception as err:  # a bug: the fault may be in force; say so rather than retry blindly
                log(logging.ERROR, "recovery raised", injection_id=record.id, exc_info=err)
                record.end(states.FAILED, f"recovery failed: internal error ({type(err).__name__}: {err}); "
                                          "the fault may still be in force")
            else:
                record.end(state, f"{detail_prefix}: {done}" if detail_prefix else done)
            self._journal.write(record)
        level = logging.WARNING if record.state == states.FAILED else logging.INFO
        log(level, "recovered" if record.state != states.FAILED else "recovery failed", injection_id=record.id,
            kind=record.kind, container_id=record.container_id, state=record.state, detail=record.detail)
        return record

    def _program_ended(self, cgroup: str, returncode: int, output: str) -> None:
        """A program a fault left running (a packet queue, a DNS responder, stress-ng) ended by itself: the fault
        is no longer what it says. Its injection is recovered (what else it changed is undone) and ends FAILED,
        saying it stopped early, so the test sees it fail rather than report it recovered."""
        for record in self._records.values():
            if record.state == states.ACTIVE and cgroup in _program_cgroups(record.plan):
                said = f": {output.splitlines()[-1][:300]}" if output.strip() else ""
                why = f"the fault stopped early: its program ended by itself (exit status {returncode}{said})"
                log(logging.WARNING, "a fault's program ended by itself", injection_id=record.id, kind=record.kind,
                    container_id=record.container_id, cgroup=cgroup, returncode=returncode, output=output)
                self._background(self.recover(record.id, why, states.FAILED))
                return

    def renew(self, injection_ids: list[str], lease: Any) -> list[Record | None]:
        lease_s = self.lease_seconds(lease)
        now = time.time()
        found = []
        for injection_id in injection_ids:
            record = self._records.get(injection_id)
            if record is not None and record.state == states.ACTIVE and record.lease_expires_at is not None:
                record.lease_expires_at = now + lease_s
                self._journal.write(record)
            found.append(record)
        self._changed.set()
        return found

    def listing(self, include_ended: bool) -> list[Record]:
        return [r for r in self._records.values() if include_ended or r.live]

    def lease_seconds(self, lease: Any) -> float:
        seconds = lease.seconds + lease.nanos / 1e9
        return seconds if seconds > 0 else self.default_lease_s

    async def _undo_partial(self, fault: Fault, record: Record, err: BaseException) -> None:
        why = err.message if isinstance(err, DaemonError) else f"{type(err).__name__}"
        if not fault.recoverable:  # a one-shot fault has nothing to undo
            record.end(states.FAILED, f"applying failed ({why})")
            self._journal.write(record)
            return
        try:
            await fault.recover(self._ctx, record)
            record.end(states.FAILED, f"applying failed ({why}); undone")
        except DaemonError as undo_err:
            record.end(states.FAILED, f"applying failed ({why}); undoing failed too: {undo_err.message}")
        self._journal.write(record)

    async def _resume(self, record: Record) -> None:
        failure = None
        async with self._lock(record.id):
            if record.state != states.ACTIVE:  # recovered (a client's Recover, its lease) before its turn came
                return
            plan = copy.deepcopy(record.plan)
            try:
                await self._faults[record.kind].resume(self._ctx, record)
            except DaemonError as err:
                failure = err.message
            if record.plan != plan:  # e.g. a new cgroup for what it started again: recovery must find it
                self._journal.write(record)
        if failure is not None:
            await self.recover(record.id, f"could not be resumed at restart ({failure})", states.FAILED)
            return
        log(logging.INFO, "kept from the journal", injection_id=record.id, kind=record.kind,
            container_id=record.container_id, expires_at=record.expires_at)

    async def _expire_forever(self) -> None:
        adopted_at = time.monotonic()
        while True:
            try:
                if time.monotonic() - adopted_at >= ADOPT_EVERY_S:
                    adopted_at = time.monotonic()
                    await self.adopt()
                await self._expire_due()
            except Exception as err:  # a bug must not stop expiry for good: log it, go on
                log(logging.ERROR, "expiring injections failed; retrying", exc_info=err)
                await asyncio.sleep(1.0)
            upcoming = [r.expires_at for r in self._records.values()
                        if r.state == states.ACTIVE and r.expires_at is not None]
            wait = min([*upcoming, time.time() + ADOPT_EVERY_S]) - time.time()
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(wait, 0.0))
            except TimeoutError:
                pass

    async def _expire_due(self) -> None:
        now = time.time()
        due = recovery_order([r for r in self._records.values() if r.state == states.ACTIVE
                              and r.expires_at is not None and r.expires_at <= now])
        for record in due:
            await _let_calls_in()
            injection_id = record.id
            why = ("its duration passed" if record.duration_expires_at is not None
                   and record.duration_expires_at <= now else "its lease ran out")
            await self.recover(injection_id, why, states.EXPIRED)
        self._prune(now)

    def _prune(self, now: float) -> None:
        for record in list(self._records.values()):
            if not record.live and record.ended_at is not None and now - record.ended_at > states.KEEP_ENDED_S:
                self._forget(record.id)

    def _forget(self, injection_id: str) -> None:
        self._records.pop(injection_id, None)
        self._locks.pop(injection_id, None)
        self._journal.remove(injection_id)

    def _lock(self, injection_id: str) -> asyncio.Lock:
        return self._locks.setdefault(injection_id, asyncio.Lock())


async def _let_calls_in() -> None:
    """Between one recovery and the next when many end together (a journal taken over, leases run out at once):
    a recovery may finish without ever waiting (a target that is gone: a journal write and done), and a loop of
    them would hold every call up, a new connection's first included, until the last is done."""
    await asyncio.sleep(0)


def _program_cgroups(plan: dict[str, Any]) -> list[str]:
    """The tracking cgroups of the programs a fault's plan left running (network kinds: ``cgroups``; stress:
    ``cgroup``)."""
    return [*plan.get("cgroups", []), *([plan["cgroup"]] if "cgroup" in plan else [])]


# Kinds whose fault must end before others on the same target can be undone: a frozen target can be neither
# signalled to death (stress-ng's stressors under a v1 freezer) nor ptraced (time).
RECOVERED_FIRST = ("container-pause",)


def recovery_order(records: list[Record]) -> list[Record]:
    """``records`` in the order to recover them when several end together (a restart, leases that ran out):
    pauses first, the rest as they were."""
    return sorted(records, key=lambda record: record.kind not in RECOVERED_FIRST)
