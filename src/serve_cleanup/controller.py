"""The durable controller: Ray Serve's ``ServeController``, adapted to ``core.CleanupCore``.

A subclass; no controller code is copied. It is named ``ServeController`` too, so the
actor table, ``ray list actors --filter class_name=ServeController`` and anything else
that identifies Serve's controller from outside sees what it sees with plain Serve.
Callers tell the two apart by the ``serve_cleanup_status`` method (``controller_kind``).

What it adapts (every decision is the core's):

``__init__``
    Builds the core over Ray-backed ports and reads every record *before* Serve's own
    ``__init__`` starts the control loop, so a controller restarted in the middle of
    ``serve.shutdown()`` knows every registered actor before its first shutdown step.
    Never raises for anything it reads (a constructor that raises leaves the actor dead
    for good). Then starts the core's reconcile loop as a task.
``_register_shutdown_cleanup_actor(handle)`` (upstream entry point)
    Made durable, scope ``serve``, keeping any existing registration's owner.
``_kill_registered_cleanup_actors()``
    Asks ``core.shutdown_step()``; raises ``_CleanupPending`` until it says done.
``shutdown()``
    Swallows ``_CleanupPending``; Serve's control loop calls it again on its next tick.

New remote methods are prefixed ``serve_cleanup_``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any

import ray

from serve_cleanup import _compat
from serve_cleanup.admission import Registration
from serve_cleanup.core import CleanupCore, Config
from serve_cleanup.errors import PersistenceError
from serve_cleanup.faults import CrashPoints
from serve_cleanup.metrics import ControllerMetrics
from serve_cleanup.ray_ports import GcsActorTable, RayKiller, ServeOwners
from serve_cleanup.records import SCOPE_SERVE, Record
from serve_cleanup.store import GcsRecordStore

logger = _compat.controller_logger


def _reconcile_interval() -> float:
    raw = os.environ.get("SERVE_CLEANUP_RECONCILE_INTERVAL_S", "0.5")
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0.05 <= value < float("inf"):  # also catches nan
        logger.warning(
            f"serve_cleanup: SERVE_CLEANUP_RECONCILE_INTERVAL_S={raw!r} is not a number "
            ">= 0.05; using 0.5."
        )
        return 0.5
    return value


class _CleanupPending(Exception):
    """Registered actors remain; Serve's shutdown must not finish yet."""


async def _register(core: CleanupCore, actor: Any, **owner: Any) -> Record:
    """The handle to a ``Registration``; serialized only when the core needs to write."""
    if not isinstance(actor, _compat.ActorHandle):
        raise TypeError(
            f"expected a Ray ActorHandle, got {type(actor).__name__}; pass the handle "
            "returned by MyActor.remote() or ray.get_actor()."
        )
    reg = Registration(actor_id=_compat.actor_id_hex(actor), name="", namespace="", handle=b"", **owner)
    done = core.settled(reg)  # the common repeat (every router re-registers its actor)
    if done is not None:
        return done
    handle = _compat.handle_to_bytes(actor)
    name, namespace = _compat.handle_name_namespace(handle)
    return await core.register(
        dataclasses.replace(reg, name=name, namespace=namespace if name else "", handle=handle)
    )


# Named ServeController so the actor table shows the class name plain Serve has
# (`ray list actors --filter class_name=ServeController`, Ray's own tests, monitoring).
# Ray takes the name from the class's __name__. Durable and plain are told apart by the
# handle's method table (client.controller_kind).
class ServeController(_compat.ServeController):
    async def __init__(self, **kwargs: Any) -> None:
        gcs = _compat.GcsClient(address=ray.get_runtime_context().gcs_address)
        faults = CrashPoints(gcs, logger)
        self._sc_core = CleanupCore(
            GcsRecordStore(gcs),
            GcsActorTable(gcs),
            RayKiller(logger),
            ServeOwners(self),
            is_system=_compat.is_serve_system_actor,
            own_id=ray.get_runtime_context().get_actor_id(),
            logger=logger,
            metrics=ControllerMetrics(),
            crash=faults.maybe_crash,
            config=Config(reconcile_interval_s=_reconcile_interval()),
        )
        self._sc_core.load()  # never raises; before Serve's control loop starts
        await super().__init__(**kwargs)  # configures the controller logger
        _compat.resume_interrupted_shutdown(self)  # Ray < 2.56 only; see _compat
        self._sc_reconcile_task = asyncio.get_running_loop().create_task(self._sc_core.run())
        logger.info(
            f"serve_cleanup: durable controller started with {len(self._sc_core.registry)} "
            "registration(s)."
        )

    # --- registration -----------------------------------------------------------------

    async def _register_shutdown_cleanup_actor(self, actor_handle: Any) -> None:
        """Upstream entry point, made durable. Serve-wide, and only if the actor is not
        registered yet (a router re-registering its actor never changes an owner).

        Upstream never failed Ray's own callers (routers, at start-up), so when GCS
        cannot take the record the actor is kept the upstream way, in memory: still
        killed at shutdown by this controller process.
        """
        try:
            await _register(self._sc_core, actor_handle, ensure_only=True)
        except PersistenceError as e:
            logger.error(
                f"serve_cleanup: {e} Keeping it in memory only, as plain Serve would: it is "
                "killed at shutdown unless this controller dies first."
            )
            super()._register_shutdown_cleanup_actor(actor_handle)

    async def serve_cleanup_register(
        self, actor: Any, scope: str = SCOPE_SERVE, app: str = "", deployment: str = "",
        ensure_only: bool = False,
    ) -> Record:
        """Durably register ``actor``; returns the stored record. Idempotent."""
        return await _register(
            self._sc_core, actor, scope=scope, app=app, deployment=deployment, ensure_only=ensure_only
        )

    async def serve_cleanup_unregister(self, actor_id: str) -> bool:
        """Remove the record without killing the actor. False if it was not registered."""
        if not isinstance(actor_id, str):
            raise TypeError(f"expected an actor id (hex str), got {type(actor_id).__name__}")
        return await self._sc_core.unregister(actor_id.strip().lower())

    async def serve_cleanup_gc(self, dry_run: bool = False) -> list[dict[str, Any]]:
        """Registrations whose owner is gone or whose actor is dead; killed unless dry_run."""
        return await self._sc_core.gc(dry_run)

    def serve_cleanup_status(self) -> dict[str, Any]:
        return {
            "controller": "durable",
            "pid": os.getpid(),
            "shutting_down": _compat.serve_shutting_down(self),
            **self._sc_core.status(),
        }

    # --- shutdown ---------------------------------------------------------------------

    def _kill_registered_cleanup_actors(self) -> None:
        if not self._sc_core.shutdown_step():
            raise _CleanupPending()
        super()._kill_registered_cleanup_actors()  # any kept in memory (GCS was down)

    def shutdown(self) -> None:
        _compat.persist_shutdown_flag(self)  # Ray < 2.56 only; see _compat
        try:
            super().shutdown()
        except _CleanupPending:
            pass  # the pass runs on the loop; Serve calls shutdown() again next tick


# The earlier name of this class, kept for code that imports it.
DurableServeController = ServeController
