"""The durable controller's decisions, without Ray.

``CleanupCore`` owns the registry (records in the KV and their in-memory mirror), the
per-actor locks and the reaper, and reaches the world only through the ports in
``ports.py``. ``controller.ServeController`` (the ``ServeController`` subclass) adapts
Serve's hooks to it: ``load`` before Serve starts its control loop, ``register`` and
``unregister`` for remote calls, ``run`` (the reconcile loop) as a task, and
``shutdown_step`` from Serve's shutdown. The invariants these decisions keep are stated
in docs/architecture.md ("Invariants"); tests/unit/test_core.py checks each against fakes
that delay, forget and crash between any two steps.

Verified records. A record this process wrote after checking the actor table is
*verified*. Records read from the KV at start are not: a crash may have cut a refused
registration between its write and its take-back. A repeated registration of an
unverified record checks the table again before it reports success, and the liveness
sweep checks every record (unverified ones first), dropping those whose actor is dead,
unknown for too long, or one of Serve's own.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from serve_cleanup import admission
from serve_cleanup import records as rec
from serve_cleanup._keyed_lock import KeyedLocks
from serve_cleanup.admission import Registration
from serve_cleanup.errors import PersistenceError, RegistrationError
from serve_cleanup.ports import ActorInfo, ActorTable, Clock, Killer, Metrics, Owners, ServeState
from serve_cleanup.reaper import DONE, UNKNOWN_GRACE_S, Outcome, Reaper, Reason
from serve_cleanup.records import Record
from serve_cleanup.registry import Registry
from serve_cleanup.store import RecordStore


SUMMARY_INTERVAL_S = 10.0


@dataclass(frozen=True)
class Config:
    reconcile_interval_s: float = 0.5  # owner reconcile and liveness sweep, per tick
    liveness_interval_s: float = 1.0  # each record's actor is looked up at most this often
    sweep_per_tick: int = 16  # lookups per tick at most: 32 a second bounds the idle cost
    unknown_actor_wait_s: float = 2.0  # a registration waits this long for GCS to learn of its actor
    shutdown_retry_s: float = 1.0  # pause between shutdown passes that left records
    shutdown_grace_s: float = 20.0  # then shutdown gives up on what is left (records stay)
    load_wait_s: float = 10.0  # a registration waits this long for the records to be read


@dataclass
class _Shutdown:
    stuck_since: Optional[float] = None
    next_pass_at: float = 0.0
    task: Optional[asyncio.Task] = None
    gave_up: bool = False


@dataclass
class _Stats:
    rehydrate_s: float = 0.0
    registered_since_summary: int = 0
    summary_at: float = float("-inf")
    last_pass: dict[str, Any] = field(default_factory=dict)
    last_reconcile: dict[str, Any] = field(default_factory=dict)


class CleanupCore:
    def __init__(
        self,
        store: RecordStore,
        table: ActorTable,
        killer: Killer,
        owners: Owners,
        *,
        is_system: Callable[[str, str], bool] = lambda name, namespace: False,
        own_id: str = "",
        clock: Optional[Clock] = None,
        logger: Optional[logging.Logger] = None,
        metrics: Optional[Metrics] = None,
        crash: Callable[[str], None] = lambda point: None,
        config: Config = Config(),
    ) -> None:
        self.clock = clock or Clock()
        self.config = config
        self.registry = Registry(store, clock=self.clock.time)
        self.locks = KeyedLocks()
        self._store, self._table, self._owners = store, table, owners
        self._is_system, self._own_id = is_system, own_id
        self._log = logger or logging.getLogger("serve_cleanup")
        self._metrics = metrics or Metrics()
        self._crash = crash
        self.reaper = Reaper(
            self.registry, table, killer, self.locks, is_system,
            clock=self.clock, logger=self._log, metrics=self._metrics, crash=crash,
        )
        self.loaded = False
        self.verified: set[str] = set()
        self.inflight = 0  # registrations between their first check and their last write
        # Take-backs whose KV write failed: actor id -> the record the KV should hold (None:
        # none). Memory already shows it; the reconcile loop and shutdown retry the write.
        self.retract: dict[str, Optional[Record]] = {}
        # The liveness sweep's queue, in the order records fall due; each id at most once.
        self._sweep: collections.deque[tuple[float, str]] = collections.deque()
        self._queued: set[str] = set()
        self._shutdown = _Shutdown()
        self.closed = False  # shutdown let the controller exit: no more registrations
        self.stats = _Stats()

    # --- start ------------------------------------------------------------------------

    def load(self) -> bool:
        """Read every record (sync; before Serve's control loop starts). Never raises: on
        a failed read the core starts unloaded and ``run`` retries off the event loop."""
        try:
            found = self._store.scan(rec.KEY_PREFIX)
        except Exception as e:
            self._log.error(
                f"serve_cleanup: could not read the registrations from the GCS KV ({e!r}); "
                "retrying in the background. Shutdown waits for them."
            )
            return False
        return self._install(found)

    async def load_async(self) -> bool:
        try:
            found = await self._store.ascan(rec.KEY_PREFIX)
        except Exception as e:
            self._log.warning(f"serve_cleanup: reading the registrations failed again ({e!r}).")
            return False
        return self._install(found)

    def _install(self, found: dict[bytes, bytes]) -> bool:
        started = time.perf_counter()
        n, set_aside = self.registry.load_from(found, on_record=lambda i: self._crash("mid_rehydrate"))
        self.stats.rehydrate_s = time.perf_counter() - started
        self.verified = set()
        self._sweep = collections.deque((0.0, actor_id) for actor_id in self.registry.ids())
        self._queued = set(self.registry.ids())
        self.loaded = True
        self._log.info(
            f"serve_cleanup: rehydrated {n} registration(s) in {self.stats.rehydrate_s * 1000:.1f} ms."
        )
        for bad in set_aside:
            self._log.error(
                f"serve_cleanup: set aside unreadable record {bad.key!r} ({bad.size} bytes): "
                f"{bad.reason}. It is left in the KV untouched; `serve-cleanup status` shows it "
                "and `serve-cleanup purge --set-aside` removes it while Serve is down."
            )
        self.publish_counts()
        return True

    # --- registration -----------------------------------------------------------------

    async def register(self, reg: Registration) -> Record:
        """Durably register; returns the stored record. Raises ``RegistrationError`` (or
        ``ValueError`` for bad arguments) and then leaves no record behind."""
        existing = self.settled(reg)
        if existing is not None:
            return existing
        admission.check_request(reg, self._is_system, self._own_id)
        if not self.loaded:
            await self._wait_loaded()
        self._check_open()
        self.inflight += 1  # shutdown must not finish while this call may still write
        try:
            async with self.locks.hold(reg.actor_id):
                self._check_open()
                existing = self.registry.get(reg.actor_id)
                if existing is not None and reg.matches(existing):
                    if reg.actor_id in self.verified:
                        return existing
                    return await self._verify_existing(existing)
                admission.check_owner(reg, self._owners)
                return await self._store_checked(reg, existing)
        finally:
            self.inflight -= 1

    def settled(self, reg: Registration) -> Optional[Record]:
        """The record a repeated registration gets back with no lock and no GCS call: one
        this process verified, with a matching owner, and no other call for it under way.
        Only ``actor_id`` and the owner fields of ``reg`` are read, so the adapter can ask
        before it serializes the handle."""
        existing = self.registry.get(reg.actor_id)
        if (existing is not None and reg.matches(existing) and reg.actor_id in self.verified
                and not self.locks.busy(reg.actor_id) and not self.closed):
            return existing
        return None

    def _check_open(self) -> None:
        if self.closed:
            raise RegistrationError(
                "Serve has finished shutting down and this controller is exiting; nothing "
                "was registered. Start Serve again and register then."
            )

    async def _wait_loaded(self) -> None:
        deadline = self.clock.monotonic() + self.config.load_wait_s
        while not self.loaded and self.clock.monotonic() < deadline:
            await self.clock.sleep(0.05)
        if not self.loaded:
            raise PersistenceError(
                "the controller could not read its registrations from the GCS KV yet, so "
                "it cannot tell what is registered; nothing was registered. Retry once "
                "GCS is reachable."
            )

    async def _lookup_known(self, actor_id: str) -> Optional[ActorInfo]:
        """The table entry, waiting a little for an actor GCS has not heard of yet (Ray
        registers a new actor with GCS asynchronously). Raises on a failed lookup."""
        deadline = self.clock.monotonic() + self.config.unknown_actor_wait_s
        delay = 0.01
        info = await self._table.lookup(actor_id)
        while info is None and self.clock.monotonic() < deadline:
            await self.clock.sleep(delay)
            delay = min(delay * 2, 0.2)
            info = await self._table.lookup(actor_id)
        return info

    async def _verify_existing(self, record: Record) -> Record:
        """A record read from the KV, registered again: check the actor before saying yes
        (its first registration may have been refused and cut short by a crash)."""
        try:
            info: Any = await self._lookup_known(record.actor_id)
        except Exception as e:
            info = e
        refusal = admission.refusal(record.actor_id, record.display_name, info, self._is_system)
        if refusal is None:
            self.verified.add(record.actor_id)
            return record
        if not isinstance(refusal, PersistenceError):
            await self._take_back(record.actor_id, None)
        raise refusal

    async def _store_checked(self, reg: Registration, previous: Optional[Record]) -> Record:
        def make(name: str, namespace: str) -> Record:
            return self.registry.new_record(
                actor_id=reg.actor_id, name=name, namespace=namespace, handle=reg.handle,
                scope=reg.scope, app=reg.app, deployment=reg.deployment,
            )

        record = make(reg.name, reg.namespace)
        # Write and check the actor at once: one GCS round trip of latency, not two.
        lookup = asyncio.ensure_future(self._lookup_known(reg.actor_id))
        try:
            await self.registry.add(record, replace=True)
        except Exception as e:
            lookup.cancel()
            await self._take_back(reg.actor_id, previous)
            raise PersistenceError(
                f"could not store the registration of actor {reg.actor_id} in the GCS KV "
                f"({e!r}); it is not registered. Retry once GCS is reachable."
            ) from None
        self.retract.pop(reg.actor_id, None)  # our write replaced whatever was to be taken back
        self._crash("after_record_write")
        try:
            info: Any = await lookup
        except Exception as e:
            info = e
        refusal = admission.refusal(reg.actor_id, record.display_name, info, self._is_system)
        if refusal is not None:
            self._crash("after_refusal_decided")
            await self._take_back(reg.actor_id, previous)
            raise refusal
        info_ns = info.namespace if info.name else ""
        if (info.name, info_ns) != (record.name, record.namespace):
            # The actor table is authoritative (a handle made by the actor itself may not
            # carry its name).
            record = make(info.name, info.namespace)
            try:
                await self.registry.add(record, replace=True)
            except Exception as e:
                await self._take_back(reg.actor_id, previous)
                raise PersistenceError(
                    f"could not store the registration of actor {reg.actor_id} in the GCS "
                    f"KV ({e!r}); it is not registered. Retry once GCS is reachable."
                ) from None
        self.verified.add(reg.actor_id)
        self._enqueue(reg.actor_id)
        self._metrics.registered(reg.scope)
        # One INFO line costs ~130 us of the controller's CPU, a third of the call's floor:
        # each registration is logged at DEBUG, and the reconcile loop sums them up.
        self.stats.registered_since_summary += 1
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug(
                f"serve_cleanup: registered {record.display_name} (actor {reg.actor_id}, "
                f"scope {record.owner_label})."
            )
        return record

    async def _take_back(self, actor_id: str, previous: Optional[Record]) -> None:
        """Make the KV hold ``previous`` again (None: nothing). Memory shows it at once; a
        failed write is queued in ``retract`` and retried (reconcile loop, shutdown)."""
        try:
            if previous is not None:
                await self.registry.add(previous, replace=True)
            else:
                await self.registry.remove(actor_id)
            self.retract.pop(actor_id, None)
        except Exception as e:
            self.registry.set_memory(actor_id, previous)
            self.retract[actor_id] = previous
            self._log.warning(
                f"serve_cleanup: could not take back the record of refused actor {actor_id} "
                f"({e!r}); retrying in the background."
            )
        if previous is None:
            self.verified.discard(actor_id)

    async def _retry_retractions(self) -> None:
        for actor_id, previous in list(self.retract.items()):
            if self.locks.busy(actor_id):
                continue
            async with self.locks.hold(actor_id):
                if actor_id in self.retract and self.registry.get(actor_id) is previous:
                    await self._take_back(actor_id, previous)

    async def unregister(self, actor_id: str) -> bool:
        """Remove the record (durably) without killing the actor."""
        async with self.locks.hold(actor_id):
            removed = await self.registry.remove(actor_id)  # raises if the delete failed
            self.retract.pop(actor_id, None)  # only now: a failed delete keeps it queued
            self.verified.discard(actor_id)
            self.reaper.forget(actor_id)
        if removed:
            self._log.info(f"serve_cleanup: unregistered actor {actor_id} (not killed).")
            self.publish_counts()
        return removed

    # --- reconcile --------------------------------------------------------------------

    def publish_counts(self) -> None:
        self._metrics.records(self.registry.counts_by_scope(), len(self.registry.set_aside()))

    def orphans(self) -> list[Record]:
        apps = self.registry.owner_apps()
        if not apps:
            return []  # only Serve-wide records: nothing to look up
        live_apps, live_deployments = self._owners.live(apps)
        return self.registry.orphans(live_apps, live_deployments)

    async def run(self) -> None:
        """The reconcile loop: first right after start, then every interval."""
        first = True
        while True:
            await self.clock.sleep(0.1 if first else self.config.reconcile_interval_s)
            first = False
            try:
                await self.tick()
            except Exception:
                self._log.exception("serve_cleanup: reconcile failed; retrying next interval.")

    async def tick(self) -> None:
        if not self.loaded:
            await self.load_async()
            return
        self._summarize()
        if self.retract:
            await self._retry_retractions()
        if self._owners.state() is not ServeState.RUNNING:
            return  # shutdown reaps everything; before recovery owners are unknown
        started = time.perf_counter()
        self.publish_counts()
        orphans = [r for r in self.orphans() if self.reaper.due(r.actor_id)]
        self.stats.last_reconcile = {
            "at": self.clock.time(), "seconds": round(time.perf_counter() - started, 6),
            "orphans": len(orphans),
        }
        self._metrics.reconcile_duration(time.perf_counter() - started)
        if orphans:
            await self.run_pass(orphans, Reason.OWNER_DELETED)
        await self.sweep()

    def _enqueue(self, actor_id: str) -> None:
        if actor_id not in self._queued:
            self._queued.add(actor_id)
            self._sweep.append((self.clock.monotonic() + self.config.liveness_interval_s, actor_id))

    def _summarize(self) -> None:
        """At most one INFO line a ``SUMMARY_INTERVAL_S`` about new registrations."""
        now = self.clock.monotonic()
        if self.stats.registered_since_summary and now - self.stats.summary_at >= SUMMARY_INTERVAL_S:
            self._log.info(
                f"serve_cleanup: {self.stats.registered_since_summary} new registration(s) "
                f"accepted since the last summary; {len(self.registry)} stored "
                f"({', '.join(f'{k}={v}' for k, v in self.registry.counts_by_scope().items() if v)})."
            )
            self.stats.registered_since_summary = 0
            self.stats.summary_at = now

    async def sweep(self) -> int:
        """Look up the actors of up to ``sweep_per_tick`` records that are due, dropping
        records whose actor is gone. Returns how many were looked up."""
        now = self.clock.monotonic()
        batch: list[Record] = []
        while self._sweep and len(batch) < self.config.sweep_per_tick and self._sweep[0][0] <= now:
            _, actor_id = self._sweep.popleft()
            self._queued.discard(actor_id)
            record = self.registry.get(actor_id)
            if record is None:
                continue  # removed meanwhile
            if self.locks.busy(actor_id) or not self.reaper.due(actor_id):
                self._enqueue(actor_id)
                continue
            batch.append(record)
        results = await asyncio.gather(*(self.reaper.check(r) for r in batch), return_exceptions=True)
        for record, info in zip(batch, results):
            if self.registry.get(record.actor_id) is None:
                continue
            if isinstance(info, ActorInfo):
                self.verified.add(record.actor_id)
            self._enqueue(record.actor_id)
        if batch:
            self.publish_counts()
        return len(batch)

    async def gc(self, dry_run: bool = False) -> list[dict[str, Any]]:
        """Registrations whose owner is gone or whose actor is dead; reaped unless dry_run."""
        orphans = {r.actor_id: r for r in self.orphans()}
        rest = [r for r in self.registry.records() if r.actor_id not in orphans]
        limit = asyncio.Semaphore(64)

        async def lookup(record: Record) -> Any:
            async with limit:
                return await self._table.lookup(record.actor_id)

        infos = await asyncio.gather(*(lookup(r) for r in rest), return_exceptions=True)
        dead = [
            r for r, info in zip(rest, infos)
            if (isinstance(info, ActorInfo) and info.dead)
            or (info is None and self.clock.time() - r.registered_at > UNKNOWN_GRACE_S)
        ]
        found = [(r, "owner deleted") for r in orphans.values()] + [(r, "actor dead") for r in dead]
        result = [{**r.to_dict(), "why": why} for r, why in found]
        if not dry_run and found:
            outcomes = await self.run_pass([r for r, _ in found], Reason.GC)
            for item, outcome in zip(result, outcomes):
                item["outcome"] = outcome.value
        return result

    async def run_pass(self, todo: list[Record], reason: Reason) -> list[Outcome]:
        started = time.perf_counter()
        outcomes = await self.reaper.reap_all(todo, reason)
        elapsed = time.perf_counter() - started
        counts = {o: outcomes.count(o) for o in Outcome}
        self.stats.last_pass = {
            "reason": reason.value, "at": self.clock.time(), "seconds": round(elapsed, 4),
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
        s = self._shutdown
        if self.loaded and not len(self.registry) and not self.inflight and not self.retract:
            self.closed = True
            return True
        now = self.clock.monotonic()
        s.stuck_since = s.stuck_since or now
        idle = s.task is None or s.task.done()
        if now - s.stuck_since > self.config.shutdown_grace_s and idle:
            if not s.gave_up:
                s.gave_up = True
                left = self.registry.records()
                self._log.error(
                    f"serve_cleanup: giving up after {self.config.shutdown_grace_s:.0f}s of shutdown on "
                    f"{len(left)} registration(s)"
                    + (f" (and {self.inflight} registration call(s) in flight)" if self.inflight else "")
                    + ("" if self.loaded else " (the records could not be read from the GCS KV)")
                    + (": " + ", ".join(f"{r.display_name} ({r.actor_id})" for r in left[:20]) if left else "")
                    + ". Their records stay in the KV for the next durable controller; "
                    "`serve-cleanup list` shows them."
                )
            self.closed = True
            return True
        work = not self.loaded or len(self.registry) or self.retract  # else: in-flight calls only
        if idle and work and now >= s.next_pass_at:
            s.task = asyncio.get_running_loop().create_task(self._shutdown_pass())
        return False

    async def _shutdown_pass(self) -> None:
        if not self.loaded:
            ok = await self.load_async()
        else:
            await self._retry_retractions()
            outcomes = await self.run_pass(self.registry.records(), Reason.SHUTDOWN) if len(self.registry) else []
            ok = Outcome.PENDING not in outcomes and not self.retract
        if not ok:
            self._shutdown.next_pass_at = self.clock.monotonic() + self.config.shutdown_retry_s

    # --- inspection -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        by_scope = {k: v for k, v in self.registry.counts_by_scope().items() if v}
        return {
            "records": len(self.registry),
            "records_by_scope": by_scope,
            "loaded": self.loaded,
            "unverified": len(self.registry) - len(self.verified & set(self.registry.ids())),
            "retrying": self.reaper.backing_off(),
            "set_aside": [s.to_dict() for s in self.registry.set_aside()],
            "rehydrate_ms": round(self.stats.rehydrate_s * 1000, 3),
            "last_pass": dict(self.stats.last_pass),
            "last_reconcile": dict(self.stats.last_reconcile),
        }

