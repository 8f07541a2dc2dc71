"""Killing registered actors, one record at a time, without trusting names. No Ray imports.

For each record, under that actor's lock (so no registration or unregistration of the
same actor interleaves), the reaper asks the actor table about the recorded *actor id*:

* ``DEAD``, or unknown for longer than ``UNKNOWN_GRACE_S`` after the registration: the
  actor is gone; delete the record. (An actor registered a moment ago may not be known to
  the table yet: Ray tells GCS about a new actor asynchronously. Such a record is kept.)
* one of Serve's own actors (by the table's name): never killed; the record is dropped.
  Only a refused registration whose take-back was lost in a crash can leave one.
* otherwise: ``Killer.kill`` (exactly that id), then poll the table until the id is
  ``DEAD`` and only then delete the record.

A record that could not be cleaned up is retried with exponential backoff per record
(``BACKOFF_*``), logged at WARNING on the 1st, 2nd, 4th, 8th... failure only, so an
actor that will not die costs a few calls a minute, not two a second. Shutdown passes
ignore the backoff (they are paced and bounded by the shutdown grace instead).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from typing import Callable, Optional

from serve_cleanup._keyed_lock import KeyedLocks
from serve_cleanup.ports import ActorInfo, ActorTable, Clock, Killer, Metrics
from serve_cleanup.records import Record
from serve_cleanup.registry import Registry

CONFIRM_DEATH_S = 5.0
UNKNOWN_GRACE_S = 5.0  # an actor the table does not know is gone once its record is this old
MAX_CONCURRENT = 64
BULK_MIN = 32  # a pass over this many records reads the actor table once, not per record
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0


class Reason(enum.Enum):
    SHUTDOWN = "shutdown"
    OWNER_DELETED = "owner_deleted"
    GC = "gc"


class Outcome(enum.Enum):
    KILLED = "killed"  # we killed it and saw it dead; record removed
    ALREADY_DEAD = "already dead"  # it was dead before we looked; record removed
    DROPPED = "dropped"  # a record of one of Serve's own actors; removed, actor untouched
    PENDING = "pending"  # not done (kill not confirmed, GCS error, busy); record kept
    SUPERSEDED = "superseded"  # unregistered or moved to another owner meanwhile: untouched


DONE = (Outcome.KILLED, Outcome.ALREADY_DEAD, Outcome.DROPPED)


@dataclass
class _Failures:
    attempts: int
    next_at: float


class Reaper:
    def __init__(
        self,
        registry: Registry,
        table: ActorTable,
        killer: Killer,
        locks: KeyedLocks,
        is_system: Callable[[str, str], bool],
        *,
        clock: Clock,
        logger: logging.Logger,
        metrics: Metrics,
        crash: Callable[[str], None],
    ) -> None:
        self._registry = registry
        self._table = table
        self._killer = killer
        self._locks = locks
        self._is_system = is_system
        self._clock = clock
        self._log = logger
        self._metrics = metrics
        self._crash = crash
        self._limit = asyncio.Semaphore(MAX_CONCURRENT)
        self._failures: dict[str, _Failures] = {}

    # --- backoff ----------------------------------------------------------------------

    def due(self, actor_id: str) -> bool:
        f = self._failures.get(actor_id)
        return f is None or self._clock.monotonic() >= f.next_at

    def backing_off(self) -> int:
        return len(self._failures)

    def forget(self, actor_id: str) -> None:
        self._failures.pop(actor_id, None)

    def _failed(self, record: Record, reason: Reason, why: str) -> Outcome:
        f = self._failures.get(record.actor_id) or _Failures(0, 0.0)
        f.attempts += 1
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (f.attempts - 1))
        f.next_at = self._clock.monotonic() + delay
        self._failures[record.actor_id] = f
        self._metrics.kill_failed(reason.value)
        if f.attempts & (f.attempts - 1) == 0:  # 1st, 2nd, 4th, 8th, ... failure
            self._log.warning(
                f"serve_cleanup: could not clean up {record.display_name} (actor "
                f"{record.actor_id}, reason: {reason.value}): {why}. Attempt {f.attempts}; "
                f"retrying in {delay:.0f}s (shutdown retries sooner)."
            )
        return Outcome.PENDING

    # --- reaping ----------------------------------------------------------------------

    async def reap_all(self, records: list[Record], reason: Reason) -> list[Outcome]:
        """Outcomes in the order of ``records``. A shutdown pass over many records reads the
        actor table once: ``DEAD`` is final, so a snapshot's dead (or long unknown) actors need no
        lookup of their own; the live ones are looked up again right before their kill."""
        snapshot: Optional[dict[str, ActorInfo]] = None
        # Only at shutdown: the whole table (GCS keeps up to 100,000 dead actors) takes
        # ~34 us an entry to parse, too long for a pass while Serve's control loop runs.
        if len(records) >= BULK_MIN and reason is Reason.SHUTDOWN:
            try:
                snapshot = await self._table.snapshot()
            except Exception as e:
                self._log.warning(f"serve_cleanup: reading the actor table failed ({e!r}); looking actors up one by one.")
        return list(await asyncio.gather(*(self.reap(r, reason, snapshot) for r in records)))

    async def reap(self, record: Record, reason: Reason, snapshot: Optional[dict[str, ActorInfo]] = None) -> Outcome:
        """Never raises. A record whose actor is busy (a registration or unregistration of
        it in flight) is skipped: ``PENDING``, no backoff."""
        if self._locks.busy(record.actor_id):
            return Outcome.SUPERSEDED if self._registry.get(record.actor_id) is not record else Outcome.PENDING
        async with self._limit, self._locks.hold(record.actor_id):
            if self._registry.get(record.actor_id) is not record:
                return Outcome.SUPERSEDED
            try:
                outcome = await self._reap(record, reason, snapshot)
            except Exception as e:  # GCS hiccup, kill RPC failure, ...
                return self._failed(record, reason, repr(e))
        if outcome in DONE:
            self.forget(record.actor_id)
            if outcome is Outcome.KILLED:
                self._metrics.killed(reason.value)
        return outcome

    async def check(self, record: Record) -> Optional[ActorInfo]:
        """Liveness sweep of one record, under its lock: drop it if its actor is gone (or is
        one of Serve's own). Returns the table entry if the actor lives, else None.
        Raises on a failed lookup."""
        async with self._limit, self._locks.hold(record.actor_id):
            if self._registry.get(record.actor_id) is not record:
                return None
            info = await self._table.lookup(record.actor_id)
            if self._gone(record, info) or self._system(record, info):
                self._crash("after_lookup_before_drop")
                await self._registry.remove(record.actor_id)
                self.forget(record.actor_id)
                what = "dead" if info is None or info.dead else "one of Serve's own actors"
                self._log.info(
                    f"serve_cleanup: {record.display_name} (actor {record.actor_id}) is "
                    f"{what}; record removed."
                )
                return None
            return info

    def _gone(self, record: Record, info: Optional[ActorInfo]) -> bool:
        if info is not None:
            return info.dead
        return self._clock.time() - record.registered_at > UNKNOWN_GRACE_S

    def _system(self, record: Record, info: Optional[ActorInfo]) -> bool:
        if info is None or not self._is_system(info.name, info.namespace):
            return False
        self._log.error(
            f"serve_cleanup: record of actor {record.actor_id} names one of Serve's own "
            f"actors ({info.namespace}/{info.name}); it is never killed. Dropping the "
            "record (a refused registration whose take-back was lost in a crash)."
        )
        return True

    async def _reap(self, record: Record, reason: Reason, snapshot: Optional[dict[str, ActorInfo]]) -> Outcome:
        info = snapshot.get(record.actor_id) if snapshot is not None else None
        if info is None or not info.dead:
            if not (snapshot is not None and info is None and self._gone(record, None)):
                info = await self._table.lookup(record.actor_id)
        if self._system(record, info):
            await self._registry.remove(record.actor_id)
            return Outcome.DROPPED
        if info is None and not self._gone(record, info):
            return self._failed(record, reason, "the actor table does not know it yet")
        if info is None or info.dead:
            await self._registry.remove(record.actor_id)
            self._log.debug(
                f"serve_cleanup: {record.display_name} (actor {record.actor_id}) was "
                f"already dead; record removed (reason: {reason.value})."
            )
            return Outcome.ALREADY_DEAD
        if not await self._killer.kill(record):
            return self._failed(
                record, reason,
                "its stored handle is unusable and no actor with its id holds its name; "
                "kill it by hand (ray.kill), or remove the record (`serve-cleanup unregister`; "
                "`serve-cleanup purge` while Serve is down)",
            )
        self._crash("after_kill_before_delete")
        self._log.info(
            f"serve_cleanup: killing {record.display_name} (actor {record.actor_id}, "
            f"scope {record.scope}, reason: {reason.value})."
        )
        if await self._wait_dead(record.actor_id):
            await self._registry.remove(record.actor_id)
            return Outcome.KILLED
        return self._failed(record, reason, f"not dead {CONFIRM_DEATH_S:.0f}s after the kill")

    async def _wait_dead(self, actor_id: str) -> bool:
        deadline = self._clock.monotonic() + CONFIRM_DEATH_S
        delay = 0.01
        while self._clock.monotonic() < deadline:
            await self._clock.sleep(delay)
            info = await self._table.lookup(actor_id)
            if info is None or info.dead:
                return True
            delay = min(delay * 2, 0.25)
        return False
