"""``DurableServeController``: Ray Serve's controller, with durable cleanup registrations.

A subclass of ``ServeController``; no controller code is copied. It changes four things:

``__init__``
    Loads every record from the GCS KV *before* Serve's own ``__init__`` starts the
    control loop, so even a controller restarted in the middle of ``serve.shutdown()``
    knows every registered actor before its first shutdown step.
``_register_shutdown_cleanup_actor(handle)`` (upstream entry point)
    Now durable: the record is in the KV before the call returns. Ray's own callers
    (``PrefixCacheAffinityRouter``) get this without any change.
``_kill_registered_cleanup_actors()``
    Upstream calls it from ``shutdown()`` once apps, deployments and proxies are gone,
    then exits. Here it starts an async reap pass and raises ``_CleanupPending`` until
    every record is gone, so the controller does not exit with actors still registered.
``shutdown()``
    Swallows ``_CleanupPending``; Serve's control loop calls it again on its next tick.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Optional

import ray

from serve_cleanup import _compat, records
from serve_cleanup.errors import DeadActorError, PersistenceError, SystemActorError
from serve_cleanup.reaper import LOOKUP_TIMEOUT_S, Outcome, Reaper
from serve_cleanup.records import Record
from serve_cleanup.registry import Registry
from serve_cleanup.store import GcsRecordStore

logger = _compat.controller_logger

# After a reap pass that left records behind, wait this long before the next one.
RETRY_INTERVAL_S = 1.0


class _CleanupPending(Exception):
    """Registered actors remain; Serve's shutdown must not finish yet."""


class DurableServeController(_compat.ServeController):
    async def __init__(self, **kwargs: Any) -> None:
        gcs = _compat.GcsClient(address=ray.get_runtime_context().gcs_address)
        self._sc_gcs = gcs
        self._sc_registry = Registry(GcsRecordStore(gcs))
        self._sc_reaper = Reaper(self._sc_registry, gcs)
        self._sc_own_id = ray.get_runtime_context().get_actor_id()
        self._sc_pass: Optional[asyncio.Task] = None
        self._sc_next_pass_at = 0.0
        self._sc_last_pass: dict[str, Any] = {}

        started = time.perf_counter()
        loaded, set_aside = self._sc_registry.load()
        self._sc_rehydrate_s = time.perf_counter() - started

        await super().__init__(**kwargs)  # configures the controller logger

        logger.info(
            f"serve_cleanup: durable controller started; rehydrated {loaded} "
            f"registration(s) in {self._sc_rehydrate_s * 1000:.1f} ms."
        )
        for bad in set_aside:
            logger.error(
                f"serve_cleanup: set aside unreadable record {bad.key!r} ({bad.size} bytes): "
                f"{bad.reason}. It is left in the KV untouched and reported by "
                "`serve-cleanup status`."
            )

    # --- registration -----------------------------------------------------------------

    async def _register_shutdown_cleanup_actor(self, actor_handle: Any) -> None:
        """Upstream entry point, made durable. Registrations are Serve-wide."""
        await self.serve_cleanup_register(actor_handle)

    async def serve_cleanup_register(
        self,
        actor: Any,
        scope: str = records.SCOPE_SERVE,
        app: str = "",
        deployment: str = "",
    ) -> Record:
        """Durably register ``actor``; returns the stored record. Idempotent."""
        if not isinstance(actor, _compat.ActorHandle):
            raise TypeError(
                f"expected a Ray ActorHandle, got {type(actor).__name__}; pass the handle "
                "returned by MyActor.remote() or ray.get_actor()."
            )
        actor_id = _compat.actor_id_hex(actor)
        existing = self._sc_registry.get(actor_id)
        if existing is not None and (existing.scope, existing.app, existing.deployment) == (
            scope,
            app,
            deployment,
        ):
            return existing
        if actor_id == self._sc_own_id:
            raise SystemActorError("the Serve controller cannot be registered for cleanup.")
        handle_bytes = _compat.handle_to_bytes(actor)
        name, namespace = _compat.handle_name_namespace(handle_bytes)
        _refuse_system_actor(actor_id, name, namespace)
        record = self._sc_registry.new_record(
            actor_id=actor_id,
            name=name,
            namespace=namespace,
            handle=handle_bytes,
            scope=scope,
            app=app,
            deployment=deployment,
        )
        # Write and check liveness at once: one GCS round trip of latency, not two.
        stored, info = await asyncio.gather(
            self._sc_registry.add(record),
            _compat.lookup_actor(self._sc_gcs, actor_id, LOOKUP_TIMEOUT_S),
            return_exceptions=True,
        )
        if isinstance(stored, BaseException):
            await self._sc_undo(actor_id)
            raise PersistenceError(
                f"could not store the registration of actor {actor_id} in the GCS KV "
                f"({stored!r}); it is not registered. Retry once GCS is reachable."
            )
        try:
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
            info_ns = info.namespace if info.name else ""
            if (info.name, info_ns) != (record.name, record.namespace):
                _refuse_system_actor(actor_id, info.name, info.namespace)
                record = self._sc_registry.new_record(
                    actor_id=actor_id,
                    name=info.name,
                    namespace=info.namespace,
                    handle=handle_bytes,
                    scope=scope,
                    app=app,
                    deployment=deployment,
                )
                await self._sc_registry.add(record)
        except BaseException:
            await self._sc_undo(actor_id)
            raise
        logger.info(
            f"serve_cleanup: registered {record.display_name} (actor {actor_id}, "
            f"scope {scope})."
        )
        return record

    async def _sc_undo(self, actor_id: str) -> None:
        """Best effort: take back a record whose registration is being refused."""
        try:
            await self._sc_registry.remove(actor_id)
        except Exception as e:
            logger.warning(
                f"serve_cleanup: could not take back the record of refused actor {actor_id} "
                f"({e!r}); it will be dropped as dead or killed at shutdown."
            )

    # --- inspection ---------------------------------------------------------------------

    def serve_cleanup_status(self) -> dict[str, Any]:
        by_scope: dict[str, int] = {}
        for r in self._sc_registry.records():
            by_scope[r.scope] = by_scope.get(r.scope, 0) + 1
        return {
            "controller": "durable",
            "pid": os.getpid(),
            "records": len(self._sc_registry),
            "records_by_scope": by_scope,
            "set_aside": [vars(s) for s in self._sc_registry.set_aside()],
            "rehydrate_ms": round(self._sc_rehydrate_s * 1000, 3),
            "shutting_down": bool(getattr(self, "_shutting_down", False)),
            "last_pass": dict(self._sc_last_pass),
        }

    # --- shutdown -----------------------------------------------------------------------

    def _kill_registered_cleanup_actors(self) -> None:
        if len(self._sc_registry) == 0:
            return
        running = self._sc_pass is not None and not self._sc_pass.done()
        if not running and time.monotonic() >= self._sc_next_pass_at:
            self._sc_pass = asyncio.get_running_loop().create_task(self._sc_shutdown_pass())
        raise _CleanupPending()

    async def _sc_shutdown_pass(self) -> None:
        started = time.perf_counter()
        todo = self._sc_registry.records()
        counts = await self._sc_reaper.reap_all(todo, reason="shutdown")
        elapsed = time.perf_counter() - started
        self._sc_last_pass = {
            "reason": "shutdown",
            "at": time.time(),
            "seconds": round(elapsed, 4),
            **{o.value: n for o, n in counts.items()},
        }
        if counts[Outcome.PENDING]:
            self._sc_next_pass_at = time.monotonic() + RETRY_INTERVAL_S
        logger.info(
            f"serve_cleanup: shutdown pass over {len(todo)} registration(s) in "
            f"{elapsed * 1000:.0f} ms: {counts[Outcome.KILLED]} killed, "
            f"{counts[Outcome.ALREADY_DEAD]} already dead, {counts[Outcome.PENDING]} pending."
        )

    def shutdown(self) -> None:
        try:
            super().shutdown()
        except _CleanupPending:
            pass  # the reap pass runs on the loop; Serve calls shutdown() again next tick


def _refuse_system_actor(actor_id: str, name: str, namespace: str) -> None:
    if _compat.is_serve_system_actor(name, namespace):
        raise SystemActorError(
            f"actor {actor_id} ({namespace}/{name}) is one of Serve's own actors "
            "(controller, proxy or replica); Serve manages its lifecycle. Register the "
            "auxiliary actors your code creates instead."
        )


def controller_actor_class(controller_options: Any = None) -> Any:
    """The durable controller as a Ray actor class, with Ray's own controller options."""
    return _compat.make_controller_actor_class(DurableServeController, controller_options)
