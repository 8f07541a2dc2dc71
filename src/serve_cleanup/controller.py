"""``DurableServeController``: Ray Serve's controller, with durable cleanup registrations.

A subclass of ``ServeController``; no controller code is copied. What it changes:

``__init__``
    Loads every record from the GCS KV *before* Serve's own ``__init__`` starts the
    control loop, so even a controller restarted in the middle of ``serve.shutdown()``
    knows every registered actor before its first shutdown step. Then starts the owner
    reconcile task.
``_register_shutdown_cleanup_actor(handle)`` (upstream entry point)
    Now durable: the record is in the KV before the call returns. Ray's own callers
    (``PrefixCacheAffinityRouter``) get this without any change. Serve-wide scope.
``_kill_registered_cleanup_actors()``
    Upstream calls it from ``shutdown()`` once apps, deployments and proxies are gone,
    then exits. Here it starts an async reap pass and raises ``_CleanupPending`` until
    every record is gone, so the controller does not exit with actors still registered.
``shutdown()``
    Swallows ``_CleanupPending``; Serve's control loop calls it again on its next tick.

New remote methods are prefixed ``serve_cleanup_``. GCS round trips on the event loop are
awaited, never blocking: registration, reconcile, reaping. The exceptions are the one scan
at start (before the control loop runs) and the rare by-name lookup when a stored handle
cannot be rebuilt. At most one reap pass runs at a time.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Optional

import ray

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
from serve_cleanup.reaper import LOOKUP_TIMEOUT_S, Outcome, Reaper, Reason
from serve_cleanup.records import Record
from serve_cleanup.registry import Registry
from serve_cleanup.store import GcsRecordStore

logger = _compat.controller_logger

# After a shutdown pass that left records behind, wait this long before the next one.
RETRY_INTERVAL_S = 1.0
# How often registrations are checked against the apps and deployments Serve has.
def _reconcile_interval() -> float:
    raw = os.environ.get("SERVE_CLEANUP_RECONCILE_INTERVAL_S", "0.5")
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= 0.05:  # also catches nan
        logger.warning(
            f"serve_cleanup: SERVE_CLEANUP_RECONCILE_INTERVAL_S={raw!r} is not a number "
            ">= 0.05; using 0.5."
        )
        return 0.5
    return value


RECONCILE_INTERVAL_S = _reconcile_interval()
# How long a registration waits for GCS to learn of an actor it does not know yet.
UNKNOWN_ACTOR_WAIT_S = 2.0
# How long shutdown waits for registered actors that cannot be killed before it gives up
# on them (their records stay in the KV for the next durable controller, or gc).
SHUTDOWN_GRACE_S = 20.0


class _CleanupPending(Exception):
    """Registered actors remain; Serve's shutdown must not finish yet."""


class DurableServeController(_compat.ServeController):
    async def __init__(self, **kwargs: Any) -> None:
        gcs = _compat.GcsClient(address=ray.get_runtime_context().gcs_address)
        self._sc_gcs = gcs
        self._sc_registry = Registry(GcsRecordStore(gcs))
        self._sc_own_id = ray.get_runtime_context().get_actor_id()
        self._sc_pass_lock = asyncio.Lock()
        self._sc_next_shutdown_pass_at = 0.0
        self._sc_shutdown_task: Optional[asyncio.Task] = None
        self._sc_inflight = 0  # registrations whose KV write has not settled
        self._sc_actor_locks = KeyedLocks()
        self._sc_stuck_since: Optional[float] = None  # shutdown: records pending since
        self._sc_last_pass: dict[str, Any] = {}
        self._sc_last_reconcile: dict[str, Any] = {}

        self._sc_faults = CrashPoints(gcs, logger)
        started = time.perf_counter()
        loaded, set_aside = self._sc_registry.load(
            on_record=(lambda n: self._sc_faults.maybe_crash("mid_rehydrate"))
            if self._sc_faults.enabled
            else None
        )
        self._sc_rehydrate_s = time.perf_counter() - started
        # Everything the shutdown hook needs exists before Serve's __init__ starts the
        # control loop (which, on a restart mid-shutdown, resumes the shutdown at once).
        self._sc_metrics = ControllerMetrics()
        self._sc_reaper = Reaper(self._sc_registry, gcs, self._sc_metrics, self._sc_faults)

        await super().__init__(**kwargs)  # configures the controller logger

        self._sc_metrics.set_records(self._sc_registry.counts_by_scope(), len(set_aside))
        self._sc_reconcile_task = asyncio.get_running_loop().create_task(self._sc_reconcile_loop())
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
        """Upstream entry point, made durable. Serve-wide, and only if the actor is not
        registered yet (a router re-registering its actor never changes an owner).

        Ray's own callers (routers, at start-up) never saw this fail upstream, so when
        GCS cannot take the record the actor is kept the upstream way, in memory, and
        still killed at shutdown by this controller process.
        """
        try:
            await self.serve_cleanup_register(actor_handle, ensure_only=True)
        except PersistenceError as e:
            logger.error(
                f"serve_cleanup: {e} Keeping it in memory only, as plain Serve would: it is "
                "killed at shutdown unless this controller dies first."
            )
            super()._register_shutdown_cleanup_actor(actor_handle)

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

    # --- inspection ---------------------------------------------------------------------

    def serve_cleanup_status(self) -> dict[str, Any]:
        by_scope = {k: v for k, v in self._sc_registry.counts_by_scope().items() if v}
        return {
            "controller": "durable",
            "pid": os.getpid(),
            "records": len(self._sc_registry),
            "records_by_scope": by_scope,
            "set_aside": [vars(s) for s in self._sc_registry.set_aside()],
            "rehydrate_ms": round(self._sc_rehydrate_s * 1000, 3),
            "shutting_down": _compat.serve_shutting_down(self),
            "last_pass": dict(self._sc_last_pass),
            "last_reconcile": dict(self._sc_last_reconcile),
        }

    # --- owner reconcile and gc -----------------------------------------------------------

    def _sc_publish_counts(self) -> None:
        self._sc_metrics.set_records(
            self._sc_registry.counts_by_scope(), len(self._sc_registry.set_aside())
        )

    def _sc_orphans(self) -> list[Record]:
        live_apps, live_deployments = _compat.live_owners(self, self._sc_registry.owner_apps())
        return self._sc_registry.orphans(live_apps, live_deployments)

    async def _sc_reconcile_loop(self) -> None:
        # The first reconcile runs as soon as Serve has recovered its apps (so deletions
        # made while the controller was down are collected at once), then periodically.
        reconciled_once = False
        while True:
            await asyncio.sleep(RECONCILE_INTERVAL_S if reconciled_once else 0.1)
            if _compat.serve_shutting_down(self) or not _compat.serve_done_recovering(self):
                continue  # shutdown reaps everything; before recovery owners are unknown
            if self._sc_pass_lock.locked():
                continue
            try:
                started = time.perf_counter()
                self._sc_publish_counts()  # gauges: here, not on every registration
                orphans = self._sc_orphans()
                self._sc_last_reconcile = {
                    "at": time.time(),
                    "seconds": round(time.perf_counter() - started, 6),
                    "orphans": len(orphans),
                }
                self._sc_metrics.reconcile_duration.set(time.perf_counter() - started)
                reconciled_once = True
                if orphans:
                    await self._sc_pass(orphans, Reason.OWNER_DELETED)
            except Exception:
                logger.exception("serve_cleanup: reconcile failed; retrying next interval.")

    async def serve_cleanup_gc(self, dry_run: bool = False) -> list[dict[str, Any]]:
        """Registrations whose owner is gone or whose actor is dead; killed unless dry_run."""
        orphans = {r.actor_id: r for r in self._sc_orphans()}
        rest = [r for r in self._sc_registry.records() if r.actor_id not in orphans]
        limit = asyncio.Semaphore(64)

        async def lookup(actor_id: str) -> Any:
            async with limit:
                return await _compat.lookup_actor(self._sc_gcs, actor_id, LOOKUP_TIMEOUT_S)

        infos = await asyncio.gather(*(lookup(r.actor_id) for r in rest), return_exceptions=True)
        dead = [
            r for r, info in zip(rest, infos)
            if not isinstance(info, BaseException) and (info is None or info.dead)
        ]
        found = [(r, "owner deleted") for r in orphans.values()] + [(r, "actor dead") for r in dead]
        result = [{**r.to_dict(), "why": why} for r, why in found]
        if not dry_run and found:
            outcomes = await self._sc_pass([r for r, _ in found], Reason.GC)
            for item, outcome in zip(result, outcomes):
                item["outcome"] = outcome.value
        return result

    # --- passes and shutdown ------------------------------------------------------------

    async def _sc_pass(self, todo: list[Record], reason: Reason) -> list[Outcome]:
        async with self._sc_pass_lock:
            # While we waited, a record may have been unregistered or moved to another
            # owner: act only on what is still registered as it was (the reaper checks
            # again right before each kill).
            current = [r for r in todo if self._sc_registry.get(r.actor_id) is r]
            outcomes_by_id: dict[str, Outcome] = {r.actor_id: Outcome.SUPERSEDED for r in todo}
            started = time.perf_counter()
            for r, outcome in zip(current, await self._sc_reaper.reap_all(current, reason)):
                outcomes_by_id[r.actor_id] = outcome
            outcomes = [outcomes_by_id[r.actor_id] for r in todo]
            elapsed = time.perf_counter() - started
        counts = {o: outcomes.count(o) for o in Outcome}
        self._sc_last_pass = {
            "reason": reason.value,
            "at": time.time(),
            "seconds": round(elapsed, 4),
            **{o.value: n for o, n in counts.items()},
        }
        self._sc_publish_counts()
        logger.info(
            f"serve_cleanup: {reason.value} pass over {len(todo)} registration(s) in "
            f"{elapsed * 1000:.0f} ms: {counts[Outcome.KILLED]} killed, "
            f"{counts[Outcome.ALREADY_DEAD]} already dead, {counts[Outcome.PENDING]} pending"
            + (f", {counts[Outcome.SUPERSEDED]} changed meanwhile (skipped)." if counts[Outcome.SUPERSEDED] else ".")
        )
        return outcomes

    async def _sc_shutdown_pass(self) -> None:
        outcomes = await self._sc_pass(self._sc_registry.records(), Reason.SHUTDOWN)
        if Outcome.PENDING in outcomes:
            self._sc_next_shutdown_pass_at = time.monotonic() + RETRY_INTERVAL_S

    def _kill_registered_cleanup_actors(self) -> None:
        if len(self._sc_registry) == 0 and self._sc_inflight == 0:
            super()._kill_registered_cleanup_actors()  # any kept in memory (GCS was down)
            return
        now = time.monotonic()
        self._sc_stuck_since = self._sc_stuck_since or now
        stuck = now - self._sc_stuck_since > SHUTDOWN_GRACE_S
        if stuck and len(self._sc_registry) and not self._sc_pass_lock.locked():
            left = self._sc_registry.records()
            logger.error(
                f"serve_cleanup: giving up on {len(left)} registration(s) after "
                f"{SHUTDOWN_GRACE_S:.0f}s of shutdown: "
                + ", ".join(f"{r.display_name} ({r.actor_id})" for r in left[:20])
                + ". Their records stay in the KV: the next durable controller retries "
                "them at its shutdown; `serve-cleanup list` shows them."
            )
            super()._kill_registered_cleanup_actors()
            return
        idle = self._sc_shutdown_task is None or self._sc_shutdown_task.done()
        if idle and time.monotonic() >= self._sc_next_shutdown_pass_at:
            self._sc_shutdown_task = asyncio.get_running_loop().create_task(self._sc_shutdown_pass())
        raise _CleanupPending()

    def shutdown(self) -> None:
        try:
            super().shutdown()
        except _CleanupPending:
            pass  # the reap pass runs on the loop; Serve calls shutdown() again next tick


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


def controller_actor_class(controller_options: Any = None) -> Any:
    """The durable controller as a Ray actor class, with Ray's own controller options."""
    return _compat.make_controller_actor_class(DurableServeController, controller_options)
