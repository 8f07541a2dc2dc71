"""Killing registered actors, one record at a time, without trusting names.

For each record the reaper asks the GCS actor table about the recorded *actor id*:

* unknown or ``DEAD``: the actor is gone; delete the record.
* otherwise: rebuild a handle to that exact id (from the handle bytes the record kept;
  if those cannot be read, by name and namespace, accepting the result only if its id
  is the recorded one), ``ray.kill(..., no_restart=True)``, then poll the table until
  the id is ``DEAD`` and only then delete the record.

Because identity is the actor id, an actor that later took a registered name is never
touched. Because the record is deleted only once the kill took effect, a controller that
dies anywhere in between finds the record again after its restart and finishes the job.
Lookups are async GCS calls and ``ray.kill`` only sends a message, so the controller's
event loop is not blocked; the one exception is the rare by-name fallback lookup.
"""

from __future__ import annotations

import asyncio
import enum
import time
from typing import Optional

import ray

from serve_cleanup import _compat
from serve_cleanup.faults import CrashPoints
from serve_cleanup.metrics import ControllerMetrics
from serve_cleanup.records import Record
from serve_cleanup.registry import Registry

logger = _compat.controller_logger

LOOKUP_TIMEOUT_S = 5.0
CONFIRM_DEATH_S = 5.0
MAX_CONCURRENT = 64


class Reason(enum.Enum):
    SHUTDOWN = "shutdown"
    OWNER_DELETED = "owner_deleted"
    GC = "gc"


class Outcome(enum.Enum):
    KILLED = "killed"  # we killed it and saw it dead; record removed
    ALREADY_DEAD = "already dead"  # it was dead before we looked; record removed
    PENDING = "pending"  # kill issued (or not possible yet); record kept for a retry
    SUPERSEDED = "superseded"  # unregistered or moved to another owner meanwhile: untouched


class Reaper:
    def __init__(
        self,
        registry: Registry,
        gcs: _compat.GcsClient,
        metrics: Optional[ControllerMetrics] = None,
        faults: Optional[CrashPoints] = None,
    ) -> None:
        self._faults = faults
        self._registry = registry
        self._gcs = gcs
        self._metrics = metrics
        self._limit = asyncio.Semaphore(MAX_CONCURRENT)

    async def reap_all(self, records: list[Record], reason: Reason) -> list[Outcome]:
        """Outcomes in the order of ``records``."""
        return list(await asyncio.gather(*(self.reap(r, reason) for r in records)))

    async def reap(self, record: Record, reason: Reason) -> Outcome:
        """Never raises: a failure is logged and leaves the record for a later pass."""
        async with self._limit:
            try:
                outcome = await self._reap(record, reason.value)
            except Exception as e:  # GCS hiccup, kill RPC failure, ...
                logger.warning(
                    f"serve_cleanup: could not clean up {record.display_name} "
                    f"(actor {record.actor_id}, reason: {reason.value}): {e!r}; will retry."
                )
                outcome = Outcome.PENDING
        if self._metrics is not None:
            if outcome is Outcome.KILLED:
                self._metrics.kills.inc(tags={"reason": reason.value})
            elif outcome is Outcome.PENDING:
                self._metrics.kill_failures.inc(tags={"reason": reason.value})
        return outcome

    async def _reap(self, record: Record, reason: str) -> Outcome:
        info = await _compat.lookup_actor(self._gcs, record.actor_id, LOOKUP_TIMEOUT_S)
        if info is None or info.dead:
            await self._registry.remove(record.actor_id)
            logger.info(
                f"serve_cleanup: {record.display_name} (actor {record.actor_id}) was "
                f"already dead; record removed (reason: {reason})."
            )
            return Outcome.ALREADY_DEAD

        handle = self._handle_for(record)
        if handle is None:
            return Outcome.PENDING
        if self._registry.get(record.actor_id) is not record:
            return Outcome.SUPERSEDED  # changed while we looked it up; no await until the kill
        ray.kill(handle, no_restart=True)
        if self._faults is not None:
            self._faults.maybe_crash("after_kill_before_delete")
        logger.info(
            f"serve_cleanup: killing {record.display_name} (actor {record.actor_id}, "
            f"scope {record.scope}, reason: {reason})."
        )
        if await self._wait_dead(record.actor_id):
            await self._registry.remove(record.actor_id)
            return Outcome.KILLED
        logger.warning(
            f"serve_cleanup: {record.display_name} (actor {record.actor_id}) is not dead "
            f"{CONFIRM_DEATH_S:.0f}s after the kill; keeping its record and retrying."
        )
        return Outcome.PENDING

    def _handle_for(self, record: Record) -> Optional[_compat.ActorHandle]:
        try:
            handle = _compat.handle_from_bytes(record.handle)
            if _compat.actor_id_hex(handle) == record.actor_id:
                return handle
        except Exception as e:
            logger.warning(
                f"serve_cleanup: the stored handle of actor {record.actor_id} could not be "
                f"rebuilt ({e!r}); looking it up by name."
            )
        if record.name:
            try:
                handle = ray.get_actor(record.name, namespace=record.namespace)
            except ValueError:
                handle = None
            if handle is not None and _compat.actor_id_hex(handle) == record.actor_id:
                return handle
        logger.error(
            f"serve_cleanup: cannot reach live actor {record.actor_id} "
            f"({record.display_name}): its stored handle is unusable and no actor with its "
            "id holds its name. Kill it by hand (ray.kill) or remove the record "
            "(serve_cleanup.unregister)."
        )
        return None

    async def _wait_dead(self, actor_id: str) -> bool:
        deadline = time.monotonic() + CONFIRM_DEATH_S
        delay = 0.01
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            info = await _compat.lookup_actor(self._gcs, actor_id, LOOKUP_TIMEOUT_S)
            if info is None or info.dead:
                return True
            delay = min(delay * 2, 0.25)
        return False
