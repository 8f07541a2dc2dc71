"""Registration: the core's write side. No Ray imports.

``Registrar`` runs every ``register`` and ``unregister`` call: the checks of
``admission``, the KV write raced with one actor-table lookup (``serve_cleanup.register``)
or alone (Serve's own entry point), the take-back of a refused write, the retry of a
take-back whose write failed, and the count of calls in flight that shutdown waits for.
``engine.CleanupCore`` owns it and decides when shutdown may finish; the steps and their
order are in docs/architecture.md ("The steps of a registration").
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Optional

from serve_cleanup.core import admission
from serve_cleanup.core import lifecycle as lc
from serve_cleanup.core.admission import Registration
from serve_cleanup.core.config import Config
from serve_cleanup.core.lifecycle import State
from serve_cleanup.core.locks import KeyedLocks
from serve_cleanup.core.ports import ActorInfo, ActorTable, Clock, Faults, JobTable, Metrics, NoJobs, Serve
from serve_cleanup.core.reaper import Reaper
from serve_cleanup.core import records as rec
from serve_cleanup.core.records import Owner, Record
from serve_cleanup.core.registry import Registry
from serve_cleanup.errors import OwnerNotFoundError, PersistenceError, RegistrationError


class Registrar:
    def __init__(
        self, registry: Registry, locks: KeyedLocks, table: ActorTable, serve: Serve, reaper: Reaper, *,
        state: Callable[[], State], clock: Clock, logger: logging.Logger, metrics: Metrics,
        faults: Faults, config: Config, jobs: Optional[JobTable] = None,
    ) -> None:
        self._jobs: JobTable = jobs or NoJobs()
        self.registry, self.locks, self._table, self._serve, self._reaper = registry, locks, table, serve, reaper
        self._state, self._clock, self._log = state, clock, logger
        self._metrics, self._faults, self._config = metrics, faults, config
        self.inflight = 0  # registrations between their first check and their last write
        # Take-backs whose KV write failed: actor id -> the record the KV should hold (None:
        # none). Memory already shows it; the reconcile loop and shutdown retry the write.
        self.retract: dict[str, Optional[Record]] = {}
        self.accepted_since_summary = 0
        # Jobs a read of the job table found running, and when (monotonic); trusted for
        # jobs_read_every_s (the engine's spacing of its reads).
        self.jobs_seen_running: dict[str, float] = {}
        self.jobs_read_every_s = config.liveness_interval_s

    async def register(self, reg: Registration) -> Record:
        """Durably register; returns the stored record. Raises ``RegistrationError`` (or
        ``ValueError`` for bad arguments) and then leaves no record behind."""
        existing = self.settled(reg)
        if existing is not None:
            return existing
        if reg.ensure_only and not reg.check_actor and self.can_write_new(reg.actor_id):
            return await self.register_new(reg)  # the adapter calls it directly
        admission.check_request(reg, self._serve)
        await self._wait_loaded()
        self._check_open()
        self.inflight += 1  # shutdown must not finish while this call may still write
        try:
            async with self.locks.hold(reg.actor_id):
                self._check_open()
                existing = self.registry.get(reg.actor_id)
                if existing is not None and existing.kind != reg.kind:
                    raise ValueError(f"{reg.actor_id} is registered as a {existing.kind_name}, not a "
                                     f"{rec.KIND_NAMES.get(reg.kind, reg.kind)}")
                if existing is not None and reg.matches(existing):
                    if not reg.check_actor or reg.actor_id in self.registry.verified:
                        return existing
                    return await self._verify_existing(existing)
                admission.check_owner_exists(reg, self._serve)
                if reg.scope == rec.SCOPE_JOB and reg.callers_job:
                    self.jobs_seen_running[reg.app] = self._clock.monotonic()  # it is calling
                elif reg.scope == rec.SCOPE_JOB:
                    await self._check_job(reg.app)
                return await self._write(reg, existing)
        finally:
            self.inflight -= 1

    async def _check_job(self, job_id: str) -> None:
        """A job owner must be a job that runs: one filtered read of the job table (which
        costs GCS a copy of its whole table), unless that read, or the reconcile loop's
        read of the table, found it running within the time between two such reads (a
        job that ended since is found by the next one, which kills what it owns)."""
        seen = self.jobs_seen_running.get(job_id)
        if seen is not None and self._clock.monotonic() - seen < self.jobs_read_every_s:
            return
        try:
            alive = await self._jobs.alive(job_id)
        except Exception as e:
            raise PersistenceError(
                f"could not read the job table ({e!r}); nothing was registered. Retry once "
                "the cluster's GCS is reachable.") from None
        if alive:
            self.jobs_seen_running[job_id] = self._clock.monotonic()
        else:
            self.jobs_seen_running.pop(job_id, None)
            raise OwnerNotFoundError(
                f"job {job_id} has ended (or this cluster does not know it), so it can own nothing; "
                "register from a running driver or with another scope.")

    def can_write_new(self, actor_id: str) -> bool:
        """Whether ``register_new`` may take a registration of ``actor_id`` now: writes
        accepted, no record of the actor, nobody holding or awaiting its lock, nothing of
        it to take back or delete, the write gate open. Read with no await before the
        call, so they still hold when it starts."""
        return (self._state() in lc.ACCEPTING and self.registry.get(actor_id) is None
                and not self.locks.busy(actor_id) and actor_id not in self.retract
                and not self.registry.has_stale(actor_id) and self.registry.gate.open)

    async def register_new(self, reg: Registration) -> Record:
        """The fast path of the upstream method (serve-wide, ``ensure_only``, no actor
        check) registering an actor that has no record, which is every router's first
        start: what ``register`` and ``_write`` do for it, in this one coroutine around
        the one put, with no context manager. The caller asked ``can_write_new`` with no
        await since."""
        if not (reg.ensure_only and not reg.check_actor and reg.scope == rec.SCOPE_SERVE):
            raise ValueError("register_new takes the upstream method's registrations only")
        admission.check_request(reg, self._serve)
        record = Record(reg.actor_id, reg.name, reg.namespace if reg.name else "", reg.handle,
                        pairs=((rec.SERVE_OWNER, self.registry.next_time(None)),))
        rec.validate(record)
        await self.locks.claim(reg.actor_id)  # never suspends (can_write_new: not busy)
        self.inflight += 1  # shutdown must not finish while this call may still write
        try:
            try:
                await self.registry.put_new(record)
            except Exception as e:
                await self._take_back(reg.actor_id, None)
                raise _store_failed(reg.actor_id, e) from None
            self._faults.reached("after_record_write")
        finally:
            self.inflight -= 1
            self.locks.release(reg.actor_id)
        self._metrics.registered(rec.SCOPE_SERVE)
        self.accepted_since_summary += 1
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug(f"serve_cleanup: registered {record.display_name} (actor {reg.actor_id}, "
                            "serve-wide, by the upstream method).")
        return self.registry.get(reg.actor_id) or record

    def settled(self, reg: Registration) -> Optional[Record]:
        """The record a repeated registration gets back with no lock and no GCS call: one
        with a matching owner (checked against the actor table, if the call asks for
        that), and no other call for it under way. Only ``actor_id``, the owner fields
        and the flags of ``reg`` are read, so the adapter asks before it serializes the
        handle."""
        existing = self.registry.get(reg.actor_id)
        if (existing is not None and reg.matches(existing) and self._state() in lc.ACCEPTING
                and (not reg.check_actor or reg.actor_id in self.registry.verified)
                and not self.locks.busy(reg.actor_id)):
            return existing
        return None

    def _check_open(self) -> None:
        if self._state() in lc.FINAL:
            raise RegistrationError(
                "Serve has finished shutting down and this controller is exiting; nothing "
                "was registered. Start Serve again and register then."
            )

    async def _wait_loaded(self, nothing_done: str = "nothing was registered") -> None:
        deadline = self._clock.monotonic() + self._config.load_wait_s
        while self._state() in lc.UNREAD and self._clock.monotonic() < deadline:
            await self._clock.sleep(0.05)
        if self._state() in lc.UNREAD:
            raise PersistenceError(
                "the controller could not read its registrations from the GCS KV yet, so "
                f"it cannot tell what is registered; {nothing_done}. Retry once GCS is "
                "reachable."
            )

    async def _lookup_known(self, actor_id: str, kind: str = rec.KIND_ACTOR) -> Optional[ActorInfo]:
        """The table entry, waiting a little for an actor GCS has not heard of yet (Ray
        registers a new actor with GCS asynchronously). Raises on a failed lookup."""
        deadline = self._clock.monotonic() + self._config.unknown_actor_wait_s
        delay = 0.01
        info = await self._lookup(actor_id, kind)
        while info is None and self._clock.monotonic() < deadline:
            await self._clock.sleep(delay)
            delay = min(delay * 2, 0.2)
            info = await self._lookup(actor_id, kind)
        return info

    def _lookup(self, actor_id: str, kind: str) -> Any:
        return self._table.lookup(actor_id) if kind == rec.KIND_ACTOR else self._table.lookup(actor_id, kind)

    async def _verify_existing(self, record: Record) -> Record:
        """A record read from the KV, registered again: check the actor before saying yes
        (its first registration may have been refused and cut short by a crash)."""
        try:
            info: Any = await self._lookup_known(record.actor_id, record.kind)
        except Exception as e:
            info = e
        refusal = admission.refusal(record.actor_id, record.display_name, info, self._serve, record.kind)
        if refusal is None:
            self.registry.verified.add(record.actor_id)
            return record
        if not isinstance(refusal, PersistenceError):
            await self._take_back(record.actor_id, None)
        raise refusal

    async def _write(self, reg: Registration, previous: Optional[Record]) -> Record:
        """Write the new pair: a new actor's first key, or an owner added to an actor's
        set (an actor without owners gets its first owner in place of its ``serve``
        key). The new key is put first; the keys it replaces are deleted only once the
        call is accepted, so a crash or a refusal leaves the old set or the new one."""
        owner = reg.owner
        t = self.registry.next_time(previous)
        if previous is None:
            record = Record(reg.actor_id, reg.name, reg.namespace if reg.name else "", reg.handle,
                            pairs=((owner, t),), kind=reg.kind, grace_s=reg.grace_s)
        else:
            # Memory keeps no handle bytes: a take-back gives the previous owners back with
            # this call's handle (it reaches the same actor id), or no kill could reach it.
            previous = previous.replace(handle=reg.handle)
            if not previous.owners and not previous.grace_s and reg.grace_s < rec.MAX_GRACE_S:
                # Its serve key is about to be replaced, and memory does not know the grace
                # its value holds (a record loaded from its keys): read it, or it is lost.
                try:
                    stored = (await self.registry.full([previous])).get(reg.actor_id)
                except Exception as e:
                    raise _store_failed(reg.actor_id, e) from None
                if stored is not None and stored.grace_s:
                    previous = previous.replace(grace_s=stored.grace_s)
            kept = previous.pairs if previous.owners else ()
            # The new key's value holds the larger grace of the two (memory knows a loaded
            # record's grace as 0 until a kill reads its values; the kill takes the
            # largest over every key, so the older keys still count).
            record = previous.replace(pairs=kept + ((owner, t),), grace_s=max(previous.grace_s, reg.grace_s))
        rec.validate(record)
        if reg.kind != rec.KIND_ACTOR and previous is None:
            # A placement group's handle carries no name, and the name is in the key: look
            # it up first (a refusal then writes nothing) rather than write the key twice.
            try:
                info: Any = await self._lookup_known(reg.actor_id, reg.kind)
            except Exception as e:
                info = e
            refusal = admission.refusal(reg.actor_id, record.display_name, info, self._serve, reg.kind)
            if refusal is not None:
                raise refusal
            record = record.replace(name=info.name, namespace=info.namespace if info.name else "")
            checked = True  # one removed after this check: its record is dropped by the sweep
        else:
            checked = not reg.check_actor
        # Write and check the actor at once: one GCS round trip of latency, not two.
        lookup = None if checked else asyncio.ensure_future(self._lookup_known(reg.actor_id, reg.kind))
        try:
            await self.registry.put_pairs(record)
        except Exception as e:
            if lookup is not None:
                lookup.cancel()
            await self._take_back(reg.actor_id, previous)
            raise _store_failed(reg.actor_id, e) from None
        self.retract.pop(reg.actor_id, None)  # our write replaced whatever was to be taken back
        self._faults.reached("after_record_write")
        if lookup is not None:
            try:
                info: Any = await lookup
            except Exception as e:
                info = e
            refusal = admission.refusal(reg.actor_id, record.display_name, info, self._serve, reg.kind)
            if refusal is not None:
                self._faults.reached("after_refusal_decided")
                await self._take_back(reg.actor_id, previous)
                raise refusal
            if (info.name, info.namespace if info.name else "") != (record.name, record.namespace):
                # The actor table is authoritative (a handle made by the actor itself may
                # not carry its name): every key of the actor is written again with it.
                record = record.replace(name=info.name, namespace=info.namespace if info.name else "")
                try:
                    await self.registry.put_pairs(record)
                except Exception as e:
                    await self._take_back(reg.actor_id, previous)
                    raise _store_failed(reg.actor_id, e) from None
            self.registry.verified.add(reg.actor_id)
        elif reg.kind != rec.KIND_ACTOR and previous is None:
            self.registry.verified.add(reg.actor_id)
        await self._delete_replaced(reg.actor_id)
        self._metrics.registered(reg.scope, reg.kind)
        # One INFO line costs ~130 us of the controller's CPU, a third of the call's floor:
        # each registration is logged at DEBUG, and the reconcile loop sums them up.
        self.accepted_since_summary += 1
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug(
                f"serve_cleanup: registered {record.display_name} ({record.kind_name} {reg.actor_id}, "
                f"owner {rec.owner_label(owner)}; owners now: {record.owner_label})."
            )
        return self.registry.get(reg.actor_id) or record

    async def _delete_replaced(self, actor_id: str) -> None:
        """Delete the keys an accepted change replaced. The change holds already (the new
        keys are later): a failed delete is retried by the reconcile loop and shutdown."""
        if not self.registry.has_stale(actor_id):
            return
        try:
            await self.registry.delete_stale(actor_id)
        except Exception as e:
            self._log.warning(
                f"serve_cleanup: could not delete a replaced key of actor {actor_id} ({e!r}); "
                "retrying in the background."
            )

    async def _take_back(self, actor_id: str, previous: Optional[Record]) -> None:
        """Make the KV hold ``previous`` again (None: nothing). Memory shows it at once; a
        failed write is queued and retried (reconcile loop, shutdown)."""
        try:
            await self.registry.restore(actor_id, previous)
            self.retract.pop(actor_id, None)
        except Exception as e:
            self.registry.set_memory(actor_id, previous)
            self.retract[actor_id] = previous
            self._log.warning(
                f"serve_cleanup: could not take back the record of refused actor {actor_id} "
                f"({e!r}); retrying in the background."
            )

    async def retry_take_backs(self) -> None:
        """Retry the failed take-backs, then the deletes of replaced keys that failed."""
        for actor_id in list(self.retract):
            if self.locks.busy(actor_id):
                continue
            async with self.locks.hold(actor_id):
                if actor_id not in self.retract:
                    continue
                previous = self.retract[actor_id]
                if _shows(self.registry.get(actor_id), previous):
                    await self._take_back(actor_id, previous)
                else:  # a later write or delete of that key landed (a drop): nothing to take back
                    del self.retract[actor_id]
        for actor_id in self.registry.stale_ids():
            if self.locks.busy(actor_id) or actor_id in self.retract:
                continue
            async with self.locks.hold(actor_id):
                await self._delete_replaced(actor_id)

    async def migrate(self) -> int:
        """Rewrite the v1 records read at load as v2 keys (put the v2 key, then delete the
        v1 key by its exact key), ``Config.migrations_in_flight`` at a time, each under
        its actor's lock and the write gate (shared, like every put). An actor with a call
        in flight, or whose handle cannot be read, waits for the next tick; a record that
        is reaped meanwhile needs no rewrite. Returns how many were rewritten."""
        done = 0
        ids = self.registry.odd_ids()
        step = self._config.migrations_in_flight
        for i in range(0, len(ids), step):
            results = await asyncio.gather(*(self._migrate_one(a) for a in ids[i:i + step]),
                                           return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException) and not isinstance(result, Exception):
                    raise result
            done += sum(1 for result in results if result is True)
            errors = [e for e in results if isinstance(e, Exception)]
            if errors:
                self._log.debug(f"serve_cleanup: rewriting v1 records failed ({errors[0]!r}); retrying.")
                break
        if done:
            self._log.info(f"serve_cleanup: rewrote {done} v1 record(s) as v2.")
        return done

    async def _migrate_one(self, actor_id: str) -> bool:
        if self.locks.busy(actor_id) or actor_id in self.retract:
            return False
        async with self.locks.hold(actor_id):
            record = self.registry.get(actor_id)
            if record is None or actor_id not in self.registry.odd_ids_set():
                return False
            full = (await self.registry.full([record])).get(actor_id)
            if full is None or not full.handle or self.registry.get(actor_id) is not record:
                return False
            await self.registry.put_pairs(full, rewrite_odd=True)
            await self.registry.delete_stale(actor_id)
            return True

    async def unregister(self, actor_id: str, owner: Optional[Owner] = None) -> bool:
        """Without ``owner``: remove the registration (every key) without killing the
        actor. With an app or deployment ``owner``: remove that owner from the actor's
        set; the last one leaves the actor registered for shutdown (a ``serve`` key is
        put first, then the owner's key deleted). False if there was nothing to remove.
        Waits for the records to be read: a delete landing between the load's read and
        its end would be undone in memory (memory would claim a record the KV does not
        hold)."""
        if owner is not None:
            rec.check_owner_shape(*owner)
            if owner[0] == rec.SCOPE_SERVE:
                raise ValueError("scope='serve' is not an owner: unregister(actor) without an owner "
                                 "removes the registration.")
        await self._wait_loaded("nothing was unregistered")
        async with self.locks.hold(actor_id):
            if owner is None:
                removed = await self.registry.remove(actor_id)  # raises if a delete failed
                self.retract.pop(actor_id, None)  # only now: a failed delete keeps it queued
                self._reaper.forget(actor_id)
            else:
                removed = await self._remove_owner(actor_id, owner)
        if removed:
            self._log.info(
                f"serve_cleanup: unregistered actor {actor_id}"
                + (f" from {rec.owner_label(owner)}" if owner else "") + " (not killed).")
        return removed

    async def _remove_owner(self, actor_id: str, owner: Owner) -> bool:
        record = self.registry.get(actor_id)
        if record is None or owner not in record.owners:
            return False
        if len(record.owners) > 1:
            await self.registry.remove_pair(actor_id, owner)
            return True
        # The last owner: the actor stays registered for shutdown. The serve key needs the
        # handle in its value: read it back.
        full = (await self.registry.full([record])).get(actor_id, record)
        serve = full.replace(pairs=((rec.SERVE_OWNER, self.registry.next_time(record)),))
        await self.registry.put_pairs(serve)
        self._faults.reached("after_record_write")  # both keys in the KV: the serve key is later
        await self.registry.delete_stale(actor_id)  # raises: the caller retries; the change holds
        return True


def _shows(memory: Optional[Record], record: Optional[Record]) -> bool:
    """Memory, which keeps records without their handle, still holds ``record``."""
    if memory is None or record is None:
        return memory is record
    return memory == record.replace(handle=b"")


def _store_failed(actor_id: str, error: BaseException) -> PersistenceError:
    return PersistenceError(
        f"could not store the registration of actor {actor_id} in the GCS KV ({error!r}); "
        "it is not registered. Retry once GCS is reachable."
    )
