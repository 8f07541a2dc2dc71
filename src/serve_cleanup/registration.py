"""Registration and unregistration: the durable controller's write path.

A mixin of ``DurableServeController`` (``controller.py`` wires it into Serve's lifecycle).
Per call: validate, then, under a per-actor lock, write the record and look the actor up
in the GCS actor table concurrently (one round trip of latency), refuse and take the
write back if the actor is dead, unknown or one of Serve's own, and only then return.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Optional

from serve_cleanup import _compat, records
from serve_cleanup._keyed_lock import KeyedLocks
from serve_cleanup.errors import (
    DeadActorError,
    OwnerNotFoundError,
    PersistenceError,
    SystemActorError,
)
from serve_cleanup.faults import CrashPoints
from serve_cleanup.metrics import ControllerMetrics
from serve_cleanup.reaper import LOOKUP_TIMEOUT_S
from serve_cleanup.records import Record
from serve_cleanup.registry import Registry

logger = _compat.controller_logger

# How long a registration waits for GCS to learn of an actor it does not know yet.
UNKNOWN_ACTOR_WAIT_S = 2.0


class RegistrationMixin:
    # Set up by DurableServeController.__init__.
    _sc_gcs: Any
    _sc_registry: Registry
    _sc_own_id: str
    _sc_inflight: int
    _sc_actor_locks: KeyedLocks
    _sc_pass_lock: asyncio.Lock
    _sc_faults: CrashPoints
    _sc_metrics: ControllerMetrics
    # and _sc_publish_counts(), a method of the controller.

    async def serve_cleanup_register(
        self,
        actor: Any,
        scope: str = records.SCOPE_SERVE,
        app: str = "",
        deployment: str = "",
        ensure_only: bool = False,
    ) -> Record:
        """Durably register ``actor``; returns the stored record. Idempotent.

        ``ensure_only``: if the actor is registered under any owner, keep that.
        Calls for the same actor run one at a time (a per-actor lock), so a call never
        returns a record that a concurrent, failing call is about to take back.
        """
        if not isinstance(actor, _compat.ActorHandle):
            raise TypeError(
                f"expected a Ray ActorHandle, got {type(actor).__name__}; pass the handle "
                "returned by MyActor.remote() or ray.get_actor()."
            )
        actor_id = _compat.actor_id_hex(actor)

        def settled() -> Optional[Record]:
            existing = self._sc_registry.get(actor_id)
            if existing is not None and (
                ensure_only or (existing.scope, existing.app, existing.deployment) == (scope, app, deployment)
            ):
                return existing
            return None

        done = None if self._sc_actor_locks.busy(actor_id) else settled()
        if done is not None:
            return done  # the common repeat: no lock, no GCS
        self._sc_check_owner(scope, app, deployment)
        if actor_id == self._sc_own_id:
            raise SystemActorError("the Serve controller cannot be registered for cleanup.")
        handle_bytes = _compat.handle_to_bytes(actor)
        name, namespace = _compat.handle_name_namespace(handle_bytes)
        _refuse_system_actor(actor_id, name, namespace)

        def make(name: str, namespace: str) -> Record:
            return self._sc_registry.new_record(
                actor_id=actor_id,
                name=name,
                namespace=namespace,
                handle=handle_bytes,
                scope=scope,
                app=app,
                deployment=deployment,
            )

        self._sc_inflight += 1  # shutdown must not finish while this write may land
        try:
            async with self._sc_actor_locks.hold(actor_id):
                done = settled()
                if done is not None:
                    return done
                existing = self._sc_registry.get(actor_id)
                return await self._sc_store_checked(make(name, namespace), existing, make)
        finally:
            self._sc_inflight -= 1

    async def _sc_store_checked(
        self, record: Record, existing: Optional[Record], make: Any
    ) -> Record:
        actor_id, scope = record.actor_id, record.scope
        # Write and check liveness at once: one GCS round trip of latency, not two.
        stored, info = await asyncio.gather(
            self._sc_registry.add(record),
            _compat.lookup_actor(self._sc_gcs, actor_id, LOOKUP_TIMEOUT_S),
            return_exceptions=True,
        )
        if isinstance(stored, BaseException):
            await self._sc_undo(actor_id, existing)
            raise PersistenceError(
                f"could not store the registration of actor {actor_id} in the GCS KV "
                f"({stored!r}); it is not registered. Retry once GCS is reachable."
            )
        self._sc_faults.maybe_crash("after_record_write")
        try:
            if info is None:
                info = await self._sc_await_known(actor_id)
            if isinstance(info, BaseException):
                raise PersistenceError(
                    f"could not look up actor {actor_id} in the GCS actor table ({info!r}); "
                    "it is not registered. Retry once GCS is reachable."
                )
            if info is None or info.dead:
                raise DeadActorError(
                    f"actor {actor_id} ({record.display_name}) is "
                    f"{'dead' if info else 'unknown to this cluster'}; nothing was "
                    "registered. Register a live actor."
                )
            # The actor table is authoritative for name and namespace (a handle made by
            # the actor itself may not carry them).
            info_ns = info.namespace if info.name else ""
            if (info.name, info_ns) != (record.name, record.namespace):
                _refuse_system_actor(actor_id, info.name, info.namespace)
                record = make(info.name, info.namespace)
                try:
                    await self._sc_registry.add(record, replace=True)
                except Exception as e:
                    raise PersistenceError(
                        f"could not store the registration of actor {actor_id} in the GCS "
                        f"KV ({e!r}); it is not registered. Retry once GCS is reachable."
                    ) from None
        except BaseException:
            await self._sc_undo(actor_id, existing)
            raise
        self._sc_metrics.registrations.inc(tags={"scope": scope})
        logger.info(
            f"serve_cleanup: registered {record.display_name} (actor {actor_id}, "
            f"scope {_owner(record)})."
        )
        return record

    async def _sc_await_known(self, actor_id: str) -> Any:
        """The actor table entry of an actor GCS does not know yet, or None after a while.

        Ray registers an anonymous actor with GCS asynchronously, so a handle can reach
        us before GCS has heard of the actor.
        """
        deadline = time.monotonic() + UNKNOWN_ACTOR_WAIT_S
        delay = 0.01
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            try:
                info = await _compat.lookup_actor(self._sc_gcs, actor_id, LOOKUP_TIMEOUT_S)
            except Exception as e:
                return e
            if info is not None:
                return info
            delay = min(delay * 2, 0.2)
        return None

    def _sc_check_owner(self, scope: str, app: str, deployment: str) -> None:
        if scope not in records.SCOPES:
            raise ValueError(f"unknown scope {scope!r}; use one of {records.SCOPES}.")
        if scope == records.SCOPE_SERVE:
            if app or deployment:
                raise ValueError("scope 'serve' takes no app or deployment.")
            return
        if not app or (scope == records.SCOPE_DEPLOYMENT) != bool(deployment):
            raise ValueError(
                f"scope {scope!r} needs app=" + (" and deployment=." if scope == "deployment" else ".")
            )
        live_apps, live_deployments = _compat.live_owners(self, {app})
        if app not in live_apps:
            raise OwnerNotFoundError(
                f"application {app!r} does not exist, so nothing could delete it; deploy it "
                "first or register with scope='serve'."
            )
        if scope == records.SCOPE_DEPLOYMENT and (app, deployment) not in live_deployments:
            raise OwnerNotFoundError(
                f"deployment {deployment!r} of application {app!r} does not exist; "
                f"deployments of {app!r}: {sorted(d for a, d in live_deployments if a == app)}."
            )

    async def _sc_undo(self, actor_id: str, previous: Optional[Record]) -> None:
        """Best effort: restore what was stored before a refused registration."""
        try:
            if previous is not None:
                await self._sc_registry.add(previous, replace=True)
            else:
                await self._sc_registry.remove(actor_id)
        except Exception as e:
            logger.warning(
                f"serve_cleanup: could not take back the record of refused actor {actor_id} "
                f"({e!r}). If it reached the KV, a controller that loads it drops it once "
                "the actor is dead, and otherwise kills the actor at shutdown; "
                "`serve-cleanup list` shows it and serve_cleanup.unregister() removes it."
            )

    async def serve_cleanup_unregister(self, actor_id: str) -> bool:
        """Remove the record without killing the actor. False if it was not registered."""
        if not isinstance(actor_id, str):
            raise TypeError(f"expected an actor id (hex str), got {type(actor_id).__name__}")
        actor_id = actor_id.lower()
        async with self._sc_actor_locks.hold(actor_id), self._sc_pass_lock:
            removed = await self._sc_registry.remove(actor_id)
        if removed:
            logger.info(f"serve_cleanup: unregistered actor {actor_id} (not killed).")
            self._sc_publish_counts()
        return removed



def _owner(record: Record) -> str:
    if record.scope == records.SCOPE_SERVE:
        return "serve"
    if record.scope == records.SCOPE_APP:
        return f"app {record.app!r}"
    return f"deployment {record.app!r}/{record.deployment!r}"


def _refuse_system_actor(actor_id: str, name: str, namespace: str) -> None:
    if _compat.is_serve_system_actor(name, namespace):
        raise SystemActorError(
            f"actor {actor_id} ({namespace}/{name}) is one of Serve's own actors "
            "(controller, proxy, replica or deployment actor); Serve manages its lifecycle. "
            "Register the "
            "auxiliary actors your code creates instead."
        )
