"""Killing registered actors (removing registered placement groups) and dropping records
of dead ones, in batches, by id. No Ray imports.

A placement group goes through every step an actor does: its table is the placement group
table, its "kill" is its removal by id, "dead" is REMOVED. Records of both kinds mix in one
pass; each table read below is one per kind present.

A pass over records (``reap``) costs a fixed number of GCS requests, however many
records and however many dead actors the actor table remembers:

1. one bulk read of which of the records' actors are not dead (``ActorTable.live``);
2. records whose actor is dead, or unknown for longer than ``unknown_grace_s`` after the
   registration (Ray tells GCS about a new actor asynchronously, so a young record is
   kept), or one of Serve's own (never killed): to drop;
3. the rest: one read of their stored handles, then, under each actor's lock (so no
   registration, move or unregistration of it interleaves), a check that the record is
   still the current one and ``Killer.kill`` (exactly that id);
4. bulk reads of the live set again until every killed actor is gone from it (up to
   ``confirm_death_s``); only then are their records dropped;
5. the drop: one delete per record under its lock for a few records, one prefix delete
   per bucket (``Registry.drop_bulk``) for many.

The liveness sweep (``sweep``) is steps 1, 2 and 5 without kills. A record that could not
be cleaned up is retried with exponential backoff per record (``BACKOFF_*``), logged at
WARNING on the 1st, 2nd, 4th, 8th... failure only. Shutdown passes ignore the backoff.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from typing import Optional

from serve_cleanup.core.admission import is_own
from serve_cleanup.core.config import Config
from serve_cleanup.core.locks import KeyedLocks
from serve_cleanup.core.ports import ActorInfo, ActorTable, Clock, Faults, Killer, Metrics, Serve
from serve_cleanup.core.records import KIND_ACTOR, Record
from serve_cleanup.core.registry import Registry

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
_YIELD_EVERY = 64  # kills between two yields to the event loop
_CHUNK = 4096  # records looked at between two yields to the event loop (100,000 records: ~25 yields)
_LOOKUPS_IN_FLIGHT = 64


class Reason(enum.Enum):
    SHUTDOWN = "shutdown"
    OWNER_DELETED = "owner_deleted"
    GC = "gc"
    SWEEP = "sweep"


class Outcome(enum.Enum):
    KILLED = "killed"  # we killed it and saw it dead; record removed
    ALREADY_DEAD = "already dead"  # it was dead before we looked; record removed
    DROPPED = "dropped"  # a record of one of Serve's own actors; removed, actor untouched
    PENDING = "pending"  # not done (kill not confirmed, GCS error, busy); record kept
    SUPERSEDED = "superseded"  # unregistered or moved to another owner meanwhile: untouched


DONE = (Outcome.KILLED, Outcome.ALREADY_DEAD, Outcome.DROPPED)


def gone(record: Record, info: Optional[ActorInfo], now: float, grace_s: float) -> bool:
    """The one rule for "this record's actor is gone": the table says DEAD, or it does not
    know the actor and the record is older than the grace."""
    if info is not None:
        return info.dead
    return now - record.registered_at > grace_s


@dataclass
class _Exit:
    """A graceful exit under way: its deadline (wall time), what to kill then, where its
    process answers, and whether it was forced."""

    deadline: float
    target: Record
    where: str
    forced: bool = False


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
        serve: Serve,
        *,
        clock: Clock,
        logger: logging.Logger,
        metrics: Metrics,
        faults: Faults,
        config: Config,
    ) -> None:
        self._registry = registry
        self._table = table
        self._killer = killer
        self._locks = locks
        self._serve = serve
        self._clock = clock
        self._log = logger
        self._metrics = metrics
        self._faults = faults
        self._config = config
        self._failures: dict[str, _Failures] = {}
        self._how: dict[str, str] = {}  # "graceful": died of its graceful exit (metrics)

    # --- backoff ----------------------------------------------------------------------

    def due(self, actor_id: str) -> bool:
        if not self._failures:
            return True
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
        self._metrics.kill_failed(reason.value, record.kind)
        if f.attempts & (f.attempts - 1) == 0:  # 1st, 2nd, 4th, 8th, ... failure
            self._log.warning(
                f"serve_cleanup: could not clean up {record.display_name} ({record.kind_name} "
                f"{record.actor_id}, reason: {reason.value}): {why}. Attempt {f.attempts}; "
                f"retrying in {delay:.0f}s (shutdown retries sooner)."
            )
        return Outcome.PENDING

    # --- classification ---------------------------------------------------------------

    async def _current(self, records: list[Record], outcomes: dict[str, Outcome]) -> list[Record]:
        """Records still current and with no call in flight; the others get their outcome."""
        current = []
        for i, r in enumerate(records):
            if i and not i % _CHUNK:
                await self._clock.sleep(0)  # Serve's control loop shares this event loop
            if self._registry.get(r.actor_id) is not r:
                outcomes[r.actor_id] = Outcome.SUPERSEDED
            elif self._locks.busy(r.actor_id):
                outcomes[r.actor_id] = Outcome.PENDING  # a call for it is under way: no backoff
            else:
                current.append(r)
        return current

    def _own(self, record: Record, info: ActorInfo) -> bool:
        if not is_own(self._serve, record.kind, info.name, info.namespace, info.creator):
            return False
        self._log.error(
            f"serve_cleanup: record of {record.kind_name} {record.actor_id} names one of "
            f"Serve's own ({info.namespace}/{info.name}); it is never killed or removed. "
            "Dropping the record (a refused registration whose take-back was lost in a crash)."
        )
        return True

    async def read_table(self, records: list[Record]) -> dict[str, "ActorInfo | None"]:
        """What the actor table says of each record's actor: one bulk read of the live
        set, then a lookup by id (a hash lookup) for the *young* records missing from it,
        which may be dead or not yet known to GCS; an old record missing from the live set
        is gone either way. Raises if the table cannot be read."""
        live = await self._live_by_kind(records)
        now = self._clock.time()
        young = []
        for i, r in enumerate(records):
            if i and not i % _CHUNK:
                await self._clock.sleep(0)
            if r.actor_id not in live and not gone(r, None, now, self._config.unknown_grace_s):
                young.append((r.actor_id, r.kind))
        found: dict[str, Optional[ActorInfo]] = dict(live)
        for i in range(0, len(young), _LOOKUPS_IN_FLIGHT):
            chunk = young[i:i + _LOOKUPS_IN_FLIGHT]
            for (actor_id, _), info in zip(chunk, await asyncio.gather(*(self._table.lookup(a, k) for a, k in chunk))):
                found[actor_id] = info
        return found

    async def _live_by_kind(self, records: list[Record]) -> dict[str, ActorInfo]:
        """``ActorTable.live`` of the records' ids: one bulk read per kind present."""
        by_kind: dict[str, list[str]] = {}
        for r in records:
            by_kind.setdefault(r.kind, []).append(r.actor_id)
        if len(by_kind) == 1:
            (kind, ids), = by_kind.items()
            return await self._table.live(ids, kind) if kind != KIND_ACTOR else await self._table.live(ids)
        live: dict[str, ActorInfo] = {}
        for kind, ids in by_kind.items():
            live.update(await self._table.live(ids, kind))
        return live

    async def _classify(self, records: list[Record], table: dict[str, Optional[ActorInfo]]
                        ) -> tuple[list[Record], dict[str, tuple[Record, Outcome]], list[Record], list[Record]]:
        """Split ``records`` by what the table says: (live, to drop with their outcome,
        not known to the table yet, graceful exits under way: DEAD in the table while
        their process may still run its hook, with a stored deadline)."""
        now = self._clock.time()
        live: list[Record] = []
        to_drop: dict[str, tuple[Record, Outcome]] = {}
        unknown: list[Record] = []
        under_way: list[Record] = []
        exiting = self._registry.known_deadlines()
        for i, r in enumerate(records):
            if i and not i % _CHUNK:
                await self._clock.sleep(0)  # Serve's control loop shares this event loop
            info = table.get(r.actor_id)
            if exiting and r.actor_id in exiting and (info is None or info.dead):
                under_way.append(r)
            elif gone(r, info, now, self._config.unknown_grace_s):
                to_drop[r.actor_id] = (r, Outcome.ALREADY_DEAD)
            elif info is None:
                unknown.append(r)
            elif self._own(r, info):
                to_drop[r.actor_id] = (r, Outcome.DROPPED)
            else:
                live.append(r)
        return live, to_drop, unknown, under_way

    # --- the passes -------------------------------------------------------------------

    async def reap(self, records: list[Record], reason: Reason) -> list[Outcome]:
        """Kill the actors of ``records`` and drop their records; outcomes in the order of
        ``records``. Never raises."""
        outcomes: dict[str, Outcome] = {}
        current = await self._current(records, outcomes)
        if current:
            try:
                await self._registry.deadlines()  # listed once a process
                table = await self.read_table(current)
            except Exception as e:  # GCS unreachable: every record waits for the next pass
                for r in current:
                    outcomes[r.actor_id] = self._failed(r, reason, f"reading the actor table failed ({e!r})")
                return [outcomes[r.actor_id] for r in records]
            to_kill, to_drop, unknown, under_way = await self._classify(current, table)
            for r in unknown:
                outcomes[r.actor_id] = self._failed(r, reason, "the actor table does not know it yet")
            if to_kill or under_way:
                killed, exiting = await self._kill(to_kill, reason, outcomes, table) if to_kill else ([], {})
                deadlines = self._registry.known_deadlines()
                for r in under_way:  # asked by an earlier pass or controller: its deadline holds
                    deadline, where = deadlines[r.actor_id]
                    exiting[r.actor_id] = _Exit(deadline, r, where)
                    killed.append(r)
                if killed:
                    self._faults.reached("after_kill_before_delete")
                    if exiting:
                        self._faults.reached("mid_graceful_exit")
                    dead = await self._confirm_dead(killed, exiting, reason, outcomes)
                    finished = [a for a in dead if self._registry.has_deadline(a)]
                    if finished:  # before the records: a shutdown ends once they are gone
                        try:
                            await self._registry.delete_deadlines(finished)
                        except Exception as e:  # a leftover is deleted at the next load
                            self._log.debug(f"serve_cleanup: could not delete graceful-exit deadlines ({e!r}).")
                    for r in killed:
                        if r.actor_id in dead:
                            to_drop[r.actor_id] = (r, Outcome.KILLED)
                        elif r.actor_id not in outcomes:
                            outcomes[r.actor_id] = self._failed(
                                r, reason, f"not dead {self._config.confirm_death_s:.0f}s after the kill")
            if to_drop:
                await self._drop_all(to_drop, reason, outcomes)
        return [outcomes[r.actor_id] for r in records]

    async def sweep(self, records: list[Record]) -> tuple[set[str], int]:
        """The liveness sweep: drop the records of ``records`` whose actor is gone (or one
        of Serve's own); kill nothing. Returns the ids seen alive and how many records were
        dropped. Raises if the actor table cannot be read."""
        outcomes: dict[str, Outcome] = {}
        current = await self._current(records, outcomes)
        if not current:
            return set(), 0
        table = await self.read_table(current)
        # The unknown, and graceful exits under way (as far as listed: the engine lists
        # them before its first sweep), wait for later.
        live, to_drop, _, _ = await self._classify(current, table)
        if to_drop:
            self._faults.reached("after_lookup_before_drop")
            await self._drop_all(to_drop, Reason.SWEEP, outcomes)
        dropped = sum(1 for a in to_drop if outcomes.get(a) in DONE)
        if dropped:
            self._log.info(
                f"serve_cleanup: the liveness sweep removed {dropped} record(s) of actors that "
                "are dead (or Serve's own); nothing was killed."
            )
        return {r.actor_id for r in live}, dropped

    async def _kill(self, records: list[Record], reason: Reason, outcomes: dict[str, Outcome],
                    table: dict[str, Optional[ActorInfo]]) -> tuple[list[Record], dict[str, "_Exit"]]:
        """Send the kills, or for an actor with a grace period and a known process address
        its graceful exit (its deadline stored first). Returns the records whose kill or
        exit was sent, and the graceful exits asked for."""
        try:
            full = await self._registry.full(records)  # the handle bytes and grace, in one read
        except Exception as e:
            for r in records:
                outcomes[r.actor_id] = self._failed(r, reason, f"reading its stored handle failed ({e!r})")
            return [], {}
        where = {a: info.address for a, info in table.items() if info is not None and info.address}
        graceful = [f for f in full.values() if f.grace_s > 0 and f.kind == KIND_ACTOR and f.actor_id in where]
        # An exit an earlier pass or controller asked for keeps its deadline (the actor may
        # still be ALIVE, running its queued calls): honoured, never restarted.
        stored = self._registry.known_deadlines()
        deadlines = {f.actor_id: stored[f.actor_id][0] for f in graceful if f.actor_id in stored}
        new = [f for f in graceful if f.actor_id not in deadlines]
        if new:
            deadlines.update(await self._new_deadlines(new, where))
        killed: list[Record] = []
        exiting: dict[str, _Exit] = {}
        for i, r in enumerate(records):
            if i and i % _YIELD_EVERY == 0:
                await self._clock.sleep(0)
            async with self._locks.hold(r.actor_id):
                if self._registry.get(r.actor_id) is not r:
                    outcomes[r.actor_id] = Outcome.SUPERSEDED
                    continue
                target = full.get(r.actor_id, r)
                deadline = deadlines.get(r.actor_id)
                try:
                    sent = False
                    if deadline is not None and self._clock.time() < deadline:
                        sent = await self._killer.terminate(target)
                        if sent:
                            exiting[r.actor_id] = _Exit(deadline, target, where[r.actor_id])
                    if not sent:
                        sent = await self._killer.kill(target)
                except Exception as e:
                    outcomes[r.actor_id] = self._failed(r, reason, f"the kill failed ({e!r})")
                    continue
            if not sent:
                outcomes[r.actor_id] = self._failed(
                    r, reason,
                    ("GCS refused its removal by id" if r.kind != KIND_ACTOR else
                     "no handle to its id could be had and GCS refused a kill by its id")
                    + "; kill it by hand (ray.kill, ray.util.remove_placement_group), or remove the "
                    "record (`serve-cleanup unregister`; `serve-cleanup purge` while Serve is down)",
                )
                continue
            killed.append(r)
        if killed:
            self._log.info(
                f"serve_cleanup: killing {len(killed)} registered actor(s) or placement group(s) "
                f"(reason: {reason.value}"
                + (f"; {len(exiting)} asked to exit gracefully first" if exiting else "") + "): "
                + ", ".join(f"{r.display_name} ({r.actor_id})" for r in killed[:10])
                + (", ..." if len(killed) > 10 else "") + "."
            )
        return killed, exiting

    async def _new_deadlines(self, records: list[Record], where: dict[str, str]) -> dict[str, float]:
        """Store the deadline (now + grace) and process address of each record's graceful
        exit before it is asked for, ``deletes_in_flight`` at a time. One that cannot be
        stored is not asked for (the actor is killed at once: a crash must not leave an
        exit nobody bounds)."""
        now = self._clock.time()
        new = {r.actor_id: now + r.grace_s for r in records}
        items = list(new.items())
        step = self._config.deletes_in_flight
        stored: dict[str, float] = {}
        for i in range(0, len(items), step):
            chunk = items[i:i + step]
            results = await asyncio.gather(*(self._registry.put_deadline(a, t, where[a]) for a, t in chunk),
                                           return_exceptions=True)
            for (actor_id, t), result in zip(chunk, results):
                if isinstance(result, BaseException) and not isinstance(result, Exception):
                    raise result
                if isinstance(result, Exception):
                    self._log.warning(f"serve_cleanup: could not store the graceful exit's deadline of "
                                      f"{actor_id} ({result!r}); killing it at once.")
                else:
                    stored[actor_id] = t
        return stored

    async def _confirm_dead(self, records: list[Record], exiting: dict[str, "_Exit"],
                            reason: Reason, outcomes: dict[str, Outcome]) -> set[str]:
        """The ids of those of ``records`` that are gone within ``confirm_death_s``
        (``ray.kill`` returns before the actor is dead): the live set no longer holds
        them, or for a graceful exit its process has ended (Ray's table says DEAD as soon
        as the exit starts). A graceful exit has until its deadline, then its process is
        killed (and has ``confirm_death_s`` more). How each ended is kept for the metrics."""
        now_wall, now = self._clock.time(), self._clock.monotonic()
        last = max((e.deadline for e in exiting.values()), default=now_wall)
        end = now + self._config.confirm_death_s + max(0.0, last - now_wall)
        by_id = {r.actor_id: r for r in records}
        waiting = set(by_id)
        exiting = dict(exiting)
        delay = 0.01
        while waiting and self._clock.monotonic() < end:
            await self._clock.sleep(delay)
            others = waiting - exiting.keys()
            try:
                if others:
                    waiting -= others - set(await self._live_by_kind([by_id[a] for a in others]))
                if exiting:
                    for actor_id in await self._killer.exited({a: e.where for a, e in exiting.items()}):
                        self._how[actor_id] = "forced" if exiting.pop(actor_id).forced else "graceful"
                        waiting.discard(actor_id)
            except Exception as e:
                self._log.debug(f"serve_cleanup: reading the actor table failed ({e!r}); retrying.")
            now_wall = self._clock.time()
            due = [a for a, e in exiting.items() if not e.forced and now_wall >= e.deadline]
            for i in range(0, len(due), self._config.deletes_in_flight):  # at once, not one by one
                chunk = due[i:i + self._config.deletes_in_flight]
                forced = await asyncio.gather(*(self._force(exiting[a], by_id[a], reason, outcomes) for a in chunk))
                for actor_id, ok in zip(chunk, forced):
                    if ok:
                        end = max(end, self._clock.monotonic() + self._config.confirm_death_s)
                    else:
                        exiting.pop(actor_id)
                        waiting.discard(actor_id)  # its outcome is set: not dead, and not dropped
                        by_id.pop(actor_id)
            delay = min(delay * 2, 0.25)
        return set(by_id) - waiting

    async def _force(self, exit: "_Exit", record: Record, reason: Reason, outcomes: dict[str, Outcome]) -> bool:
        """End an actor whose graceful exit ran out of time: its process (the table says
        DEAD already, so only that reaches a hook that hangs), and a kill for an actor
        that never started to exit. False (and its outcome set) if the record changed
        meanwhile or nothing could be sent."""
        async with self._locks.hold(record.actor_id):
            if self._registry.get(record.actor_id) is not record:
                outcomes[record.actor_id] = Outcome.SUPERSEDED
                return False
            try:
                await self._killer.kill_process(exit.target, exit.where)
                await self._killer.kill(exit.target)
            except Exception as e:
                outcomes[record.actor_id] = self._failed(record, reason, f"the kill after its grace failed ({e!r})")
                return False
        exit.forced = True
        self._log.warning(
            f"serve_cleanup: {record.display_name} ({record.actor_id}) did not exit within its grace "
            f"period ({exit.target.grace_s:g}s); killed.")
        return True

    async def _drop_all(self, to_drop: dict[str, tuple[Record, Outcome]], reason: Reason,
                        outcomes: dict[str, Outcome]) -> None:
        """Delete the records of ``to_drop``; each gets its outcome, or SUPERSEDED if it
        changed meanwhile, or PENDING (with backoff) if the delete failed."""
        records = [r for r, _ in to_drop.values()]
        if len(records) >= self._config.bulk_drop_min:
            try:
                dropped = await self._registry.drop_bulk(records, self._locks.busy)
                error = None
            except Exception as e:
                dropped, error = set(), e
        else:
            dropped, error = set(), None
            for i in range(0, len(records), self._config.deletes_in_flight):
                chunk = records[i:i + self._config.deletes_in_flight]
                results = await asyncio.gather(*(self._drop_one(r) for r in chunk), return_exceptions=True)
                for r, result in zip(chunk, results):
                    if isinstance(result, BaseException) and not isinstance(result, Exception):
                        raise result  # cancelled (or the process is going): not a failed delete
                    if isinstance(result, BaseException):
                        error = result
                    elif result:
                        dropped.add(r.actor_id)
        for actor_id, (r, outcome) in to_drop.items():
            if actor_id in dropped:
                outcomes[actor_id] = outcome
                self.forget(actor_id)
                if outcome is Outcome.KILLED:
                    self._metrics.killed(reason.value, r.kind, self._how.pop(actor_id, "forced"))
            elif self._registry.get(actor_id) is r and error is not None:
                outcomes[actor_id] = self._failed(r, reason, f"deleting its record failed ({error!r})")
            elif self._registry.get(actor_id) is r:
                outcomes[actor_id] = Outcome.PENDING  # a call for it is under way
            else:
                outcomes[actor_id] = Outcome.SUPERSEDED
        finished = [a for a in dropped if self._registry.has_deadline(a)]
        if finished:  # their graceful exits are over: a leftover key is deleted next time
            try:
                await self._registry.delete_deadlines(finished)
            except Exception as e:
                self._log.debug(f"serve_cleanup: could not delete graceful-exit deadlines ({e!r}).")

    async def _drop_one(self, record: Record) -> bool:
        if self._locks.busy(record.actor_id):
            return False
        async with self._locks.hold(record.actor_id):
            if self._registry.get(record.actor_id) is not record:
                return False
            await self._registry.remove(record.actor_id)
            return True
