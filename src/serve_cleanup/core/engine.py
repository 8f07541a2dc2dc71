"""``CleanupCore``: the durable controller's decisions, without Ray.

It owns the registry (records in the KV and their in-memory mirror), the per-actor
locks, the reaper and the lifecycle (``lifecycle.py``), and reaches the world only
through the ports in ``ports.py``. ``serve_adapter.controller.ServeController`` adapts
Serve's hooks to it: ``load`` before Serve starts its control loop, ``registrar.register``
(``registration.py``) and ``unregister`` for remote calls, ``run`` (the reconcile loop)
as a task, and ``shutdown_step`` from Serve's shutdown. The invariants these decisions
keep are stated in docs/architecture.md ("Invariants"); tests/no_ray/test_core.py checks
each against fakes that delay, forget and crash between any two steps, and
tests/no_ray/test_simulation.py under seeded random interleavings.

Verified records. A record this process checked against the actor table (the public
``register`` path, or the liveness sweep) is *verified*. Records read at start are not:
a crash may have cut a refused registration between its write and its take-back. A
repeated ``register`` of an unverified record checks the table again before it reports
success, and the liveness sweep drops records whose actor is dead, unknown for too long,
or one of Serve's own.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

from serve_cleanup.core import lifecycle as lc
from serve_cleanup.core.config import Config
from serve_cleanup.core.lifecycle import Event, State
from serve_cleanup.core.locks import KeyedLocks
from serve_cleanup.core.ports import (
    ActorTable, Clock, Faults, JobTable, Killer, Metrics, NoFaults, NoJobs, NoMetrics, RecordStore, Serve,
    ServeState, SystemClock,
)
from serve_cleanup.core.reaper import DONE, Outcome, Reaper, Reason, gone
from serve_cleanup.core.records import Owner, Record, records_by_scope
from serve_cleanup.core.registration import Registrar
from serve_cleanup.core.registry import Registry

SUMMARY_INTERVAL_S = 10.0
# The job table is read at most once every this many times its last read took (at most
# 0.25% of the time), and never more often than once a liveness interval.
JOB_READ_SPACING = 400
JOB_READ_MAX_S = 30.0  # ... and at least once every 30 s (a slow read measured on a busy loop)


@dataclass
class _Stats:
    rehydrate_s: float = 0.0
    summary_at: float = float("-inf")
    last_pass: dict[str, Any] = field(default_factory=dict)
    last_reconcile: dict[str, Any] = field(default_factory=dict)
    last_sweep: dict[str, Any] = field(default_factory=dict)


class CleanupCore:
    def __init__(
        self,
        store: RecordStore,
        table: ActorTable,
        killer: Killer,
        serve: Serve,
        *,
        clock: Optional[Clock] = None,
        logger: Optional[logging.Logger] = None,
        metrics: Optional[Metrics] = None,
        faults: Optional[Faults] = None,
        config: Config = Config(),
        jobs: Optional[JobTable] = None,
    ) -> None:
        self._clock = clock or SystemClock()
        self._jobs: JobTable = jobs or NoJobs()
        self.config = config
        self.registry = Registry(store, clock=self._clock.time, deletes_in_flight=config.deletes_in_flight)
        self.locks = KeyedLocks()
        self._table, self._serve = table, serve
        self._log = logger or logging.getLogger("serve_cleanup")
        self._metrics = metrics or NoMetrics()
        self._faults = faults or NoFaults()
        self.reaper = Reaper(
            self.registry, table, killer, self.locks, serve, clock=self._clock, logger=self._log,
            metrics=self._metrics, faults=self._faults, config=config,
        )
        self._state = State.LOADING
        self._loading = asyncio.Lock()
        self.registrar = Registrar(
            self.registry, self.locks, table, serve, self.reaper, state=lambda: self._state, jobs=self._jobs,
            clock=self._clock, logger=self._log, metrics=self._metrics, faults=self._faults, config=config,
        )
        self._next_sweep = 0.0
        self._stuck_since: Optional[float] = None  # first "not yet" of Serve's shutdown step
        self._next_pass_at = 0.0
        self._pass: Optional[asyncio.Task] = None  # the shutdown pass
        self._owner_pass: Optional[asyncio.Task] = None  # the reconcile loop's owner pass
        self._migration: Optional[asyncio.Task] = None  # v1 records rewritten as v2
        self._ended_jobs: frozenset[str] = frozenset()  # owning jobs the last read found ended
        self._next_jobs_read = 0.0
        self.stats = _Stats()

    # --- lifecycle --------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    def _move(self, event: Event) -> None:
        self._state = lc.next_state(self._state, event)

    # --- start ------------------------------------------------------------------------

    async def load(self) -> bool:
        """Read every record (before Serve's control loop starts). Never raises: on a
        failed read the core stays ``LOADING`` and the reconcile loop or the shutdown pass
        reads again."""
        async with self._loading:  # one read at a time (the tick's and the shutdown pass's)
            if self._state not in (State.LOADING, State.LOADING_FOR_SHUTDOWN):
                return True
            return await self._load()

    async def _load(self) -> bool:
        started = self._clock.monotonic()
        try:
            n, set_aside = await self.registry.load(on_record=lambda i: self._faults.reached("mid_rehydrate"))
        except Exception as e:
            self._log.error(
                f"serve_cleanup: could not read the registrations from the GCS KV ({e!r}); "
                "retrying in the background. Shutdown waits for them."
            )
            return False
        self.stats.rehydrate_s = self._clock.monotonic() - started
        self._next_sweep = self._clock.monotonic()  # check what was read at the first tick
        self._move(Event.LOADED)
        self._log.info(f"serve_cleanup: rehydrated {n} registration(s) in {self.stats.rehydrate_s * 1000:.1f} ms.")
        for bad in set_aside:
            self._log.error(
                f"serve_cleanup: set aside unreadable record {bad.key!r} ({bad.size} bytes): "
                f"{bad.reason}. It is left in the KV untouched; `serve-cleanup status` shows it "
                "and `serve-cleanup purge --set-aside` removes it while Serve is down."
            )
        self.publish_counts()
        return True

    # --- registration -----------------------------------------------------------------

    async def unregister(self, actor_id: str, owner: Optional[Owner] = None) -> bool:
        """Without ``owner``: remove the registration (durably) without killing the actor.
        With an app or deployment owner ``(scope, app, deployment)``: remove that owner
        from the actor's set (the last one leaves it registered for shutdown)."""
        removed = await self.registrar.unregister(actor_id, owner)
        if removed:
            self.publish_counts()
        return removed

    # --- reconcile --------------------------------------------------------------------

    def publish_counts(self) -> None:
        self._metrics.records(self.registry.counts_by_kind_and_scope(), len(self.registry.set_aside()),
                              self.registry.counts_by_kind())

    def orphans(self) -> list[Record]:
        """Records whose every owner is gone (job owners as the last job-table read says)."""
        apps = self.registry.owner_apps()
        if not apps and not self._ended_jobs:
            return []  # only Serve-wide records or running jobs' : nothing to look up
        live_apps, live_deployments = self._serve.live_owners(apps) if apps else (set(), set())
        return self.registry.orphans(live_apps, live_deployments, self._ended_jobs)

    async def read_jobs(self, force: bool = False) -> None:
        """Which owning jobs have ended: one read of the job table, only while a job owns
        a record, at most once every ``liveness_interval_s`` and, for a large job table,
        no more often than ``JOB_READ_SPACING`` times the last read took (GCS copies its
        whole job table for each read: 10,000 finished jobs cost it ~50 ms a read)."""
        jobs = self.registry.owner_jobs()
        now = self._clock.monotonic()
        if not jobs:
            self._ended_jobs = frozenset()
            return
        if not force and now < self._next_jobs_read:
            return
        try:
            ended = frozenset(await self._jobs.ended(jobs))
        except Exception as e:
            self._next_jobs_read = now + self.config.liveness_interval_s
            self._log.warning(f"serve_cleanup: could not read the job table ({e!r}); retrying.")
            return
        took = self._clock.monotonic() - now
        self.registrar.jobs_read_every_s = min(JOB_READ_MAX_S, max(self.config.liveness_interval_s,
                                                                   JOB_READ_SPACING * took))
        self._next_jobs_read = now + self.registrar.jobs_read_every_s
        self._ended_jobs = ended
        self.registrar.jobs_seen_running.update(dict.fromkeys(jobs - ended, now))

    async def run(self) -> None:
        """The reconcile loop: first right after start, then every interval."""
        first = True
        while True:
            await self._clock.sleep(0.1 if first else self.config.reconcile_interval_s)
            first = False
            try:
                await self.tick()
            except Exception:
                self._log.exception("serve_cleanup: reconcile failed; retrying next interval.")

    async def tick(self) -> None:
        if self._state is State.LOADING:
            await self.load()
            return
        if self._state is not State.OPEN:
            return  # shutting down (its passes do the work) or done
        self._summarize()
        if self.registrar.retract or self.registry.stale_ids():
            await self.registrar.retry_take_backs()
        if self.registry.odd_ids() and (self._migration is None or self._migration.done()):
            self._migration = asyncio.get_running_loop().create_task(self.registrar.migrate())
        if self._serve.state() is not ServeState.RUNNING:
            return  # before recovery owners are unknown; at shutdown the passes reap
        await self.read_jobs()
        started = self._clock.monotonic()
        self.publish_counts()
        orphans = [r for r in self.orphans() if self.reaper.due(r.actor_id)]
        took = self._clock.monotonic() - started
        self.stats.last_reconcile = {"at": self._clock.time(), "seconds": round(took, 6), "orphans": len(orphans)}
        self._metrics.reconcile_duration(took)
        if orphans and (self._owner_pass is None or self._owner_pass.done()):
            # Beside the tick, one at a time: a pass may wait up to confirm_death_s for an
            # actor to die, and the sweep must not wait with it (I5's bound).
            self._owner_pass = asyncio.get_running_loop().create_task(self.run_pass(orphans, Reason.OWNER_DELETED))
        await self.sweep()

    def _summarize(self) -> None:
        """At most one INFO line a ``SUMMARY_INTERVAL_S`` about new registrations."""
        now = self._clock.monotonic()
        if self.registrar.accepted_since_summary and now - self.stats.summary_at >= SUMMARY_INTERVAL_S:
            self._log.info(
                f"serve_cleanup: {self.registrar.accepted_since_summary} new registration(s) "
                f"accepted since the last summary; {len(self.registry)} stored "
                f"({', '.join(f'{k}={v}' for k, v in self.registry.counts_by_scope().items() if v)})."
            )
            self.registrar.accepted_since_summary = 0
            self.stats.summary_at = now

    async def sweep(self, force: bool = False) -> int:
        """The liveness sweep (I5): at most once every ``liveness_interval_s``, one bulk
        read of which registered actors still live; records of dead ones (unknown for too
        long, or Serve's own) are dropped, the live ones count as verified. Returns how
        many records it dropped."""
        now = self._clock.monotonic()
        if not force and now < self._next_sweep:
            return 0
        self._next_sweep = now + self.config.liveness_interval_s
        records = [r for r in self.registry.records() if self.reaper.due(r.actor_id)]
        if not records:
            return 0
        try:
            alive, dropped = await self.reaper.sweep(records)
        except Exception as e:
            self._log.warning(f"serve_cleanup: the liveness sweep could not read the actor table ({e!r}).")
            return 0
        self.registry.verified |= {a for a in alive if a in self.registry}
        self.stats.last_sweep = {
            "at": self._clock.time(), "seconds": round(self._clock.monotonic() - now, 6),
            "records": len(records), "dropped": dropped,
        }
        if dropped:
            self.publish_counts()
        return dropped

    async def gc(self, dry_run: bool = False) -> list[dict[str, Any]]:
        """Registrations whose owner is gone or whose actor is dead; reaped unless dry_run."""
        await self.read_jobs(force=True)
        orphans = {r.actor_id: r for r in self.orphans()}
        rest = [r for r in self.registry.records() if r.actor_id not in orphans]
        table = await self.reaper.read_table(rest) if rest else {}
        now = self._clock.time()
        dead = [r for r in rest if gone(r, table.get(r.actor_id), now, self.config.unknown_grace_s)]
        found = [(r, "owner deleted") for r in orphans.values()] + [(r, "actor dead") for r in dead]
        result = [{**r.to_dict(), "why": why} for r, why in found]
        if not dry_run and found:
            outcomes = await self.run_pass([r for r, _ in found], Reason.GC)
            for item, outcome in zip(result, outcomes):
                item["outcome"] = outcome.value
        return result

    async def run_pass(self, todo: list[Record], reason: Reason) -> list[Outcome]:
        started = self._clock.monotonic()
        outcomes = await self.reaper.reap(todo, reason)
        elapsed = self._clock.monotonic() - started
        counts = {o: outcomes.count(o) for o in Outcome}
        self.stats.last_pass = {
            "reason": reason.value, "at": self._clock.time(), "seconds": round(elapsed, 4),
            **{o.value: n for o, n in counts.items()},
        }
        self.publish_counts()
        if any(counts[o] for o in DONE) or reason is not Reason.OWNER_DELETED:
            self._log.info(
                f"serve_cleanup: {reason.value} pass over {len(todo)} registration(s) in "
                f"{elapsed * 1000:.0f} ms: " + ", ".join(f"{n} {o.value}" for o, n in counts.items() if n) + "."
            )
        return outcomes

    # --- shutdown ---------------------------------------------------------------------

    def shutdown_step(self) -> bool:
        """Called by Serve's shutdown once everything else is gone, on every tick. True:
        the controller may exit. False: a pass is under way (started here if needed)."""
        if self._state in lc.FINAL:
            return True
        if self._state not in lc.SHUTTING:
            self._move(Event.SHUTDOWN_STARTED)
        clean = (not len(self.registry) and not self.registrar.inflight and not self.registrar.retract
                 and not self.registry.stale_ids())
        if self._state is State.SHUTTING_DOWN and clean:
            self._move(Event.CLEAN)
            return True
        now = self._clock.monotonic()
        if self._stuck_since is None:
            self._stuck_since = now
        idle = self._pass is None or self._pass.done()
        if now - self._stuck_since > self.config.shutdown_grace_s and idle:
            self._give_up()
            return True
        work = (self._state is State.LOADING_FOR_SHUTDOWN or len(self.registry) or self.registrar.retract
                or self.registry.stale_ids())
        if idle and work and now >= self._next_pass_at:  # else: only calls in flight; wait
            self._pass = asyncio.get_running_loop().create_task(self._shutdown_pass())
        return False

    def _give_up(self) -> None:
        loaded = self.registry_loaded  # before the move: GAVE_UP says nothing about it
        self._move(Event.GRACE_OVER)
        left = self.registry.records()
        self._log.error(
            f"serve_cleanup: giving up after {self.config.shutdown_grace_s:.0f}s of shutdown on "
            f"{len(left)} registration(s)"
            + (f" (and {self.registrar.inflight} registration call(s) in flight)" if self.registrar.inflight else "")
            + ("" if loaded else " (the records could not be read from the GCS KV)")
            + (": " + ", ".join(f"{r.display_name} ({r.actor_id})" for r in left[:20]) if left else "")
            + ". Their records stay in the KV for the next durable controller; "
            "`serve-cleanup list` shows them."
        )

    @property
    def registry_loaded(self) -> bool:
        return self._state in lc.LOADED

    async def _shutdown_pass(self) -> None:
        if self._state is State.LOADING_FOR_SHUTDOWN:
            ok = await self.load()
        else:
            await self.registrar.retry_take_backs()
            outcomes = await self.run_pass(self.registry.records(), Reason.SHUTDOWN) if len(self.registry) else []
            ok = Outcome.PENDING not in outcomes and not self.registrar.retract and not self.registry.stale_ids()
        if not ok:
            self._next_pass_at = self._clock.monotonic() + self.config.shutdown_retry_s

    # --- inspection -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "state": self._state.value,
            "records": len(self.registry),
            "pairs": self.registry.pairs(),
            "stale_keys": sum(1 for _ in self.registry.stale_ids()),
            "v1_records": len(self.registry.odd_ids()),
            "records_by_scope": records_by_scope(self.registry.counts_by_scope().items()),
            "records_by_kind": {k: n for k, n in self.registry.counts_by_kind().items() if n},
            "loaded": self.registry_loaded,
            "unverified": self.registry.unverified(),
            "in_flight": self.registrar.inflight,
            "take_backs_pending": len(self.registrar.retract),
            "retrying": self.reaper.backing_off(),
            "set_aside": [s.to_dict() for s in self.registry.set_aside()],
            "rehydrate_ms": round(self.stats.rehydrate_s * 1000, 3),
            "last_pass": dict(self.stats.last_pass),
            "last_reconcile": dict(self.stats.last_reconcile),
            "last_sweep": dict(self.stats.last_sweep),
        }

