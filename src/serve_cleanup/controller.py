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

The registration write path (``serve_cleanup_register``, ``serve_cleanup_unregister``)
lives in ``registration.RegistrationMixin``. New remote methods are prefixed
``serve_cleanup_``. GCS round trips on the event loop are
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

from serve_cleanup import _compat
from serve_cleanup._keyed_lock import KeyedLocks
from serve_cleanup.errors import (
    PersistenceError,
)
from serve_cleanup.faults import CrashPoints
from serve_cleanup.metrics import ControllerMetrics
from serve_cleanup.registration import RegistrationMixin
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
# How long shutdown waits for registered actors that cannot be killed before it gives up
# on them (their records stay in the KV for the next durable controller, or gc).
SHUTDOWN_GRACE_S = 20.0


class _CleanupPending(Exception):
    """Registered actors remain; Serve's shutdown must not finish yet."""


# Named ServeController so the actor table shows the class name plain Serve has
# (`ray list actors --filter class_name=ServeController`, Ray's own tests, monitoring).
# Ray takes the name from the class's __name__. Durable and plain are told apart by the
# handle's method table (client.controller_kind).
class ServeController(RegistrationMixin, _compat.ServeController):
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
        apps = self._sc_registry.owner_apps()
        if not apps:
            return []  # only Serve-wide records: nothing to look up on this tick
        live_apps, live_deployments = _compat.live_owners(self, apps)
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


# The earlier name of this class, kept for code that imports it.
DurableServeController = ServeController
