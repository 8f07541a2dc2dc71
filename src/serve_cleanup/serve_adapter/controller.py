"""The durable controller: Ray Serve's ``ServeController``, adapted to ``core.CleanupCore``.

A subclass; no controller code is copied. It is named ``ServeController`` too, so the
actor table, ``ray list actors --filter class_name=ServeController`` and anything else
that identifies Serve's controller from outside sees what it sees with plain Serve. Its
``repr`` (Ray's ``repr_name`` in ``ray list actors --detail`` and the dashboard) says it is
serve_cleanup's; callers tell the two apart by the ``serve_cleanup_status`` method
(``client.controller_kind``).

What it adapts (every decision is the core's):

``__init__``
    Builds the core over the Ray-backed ports (``adapters``) and reads every record
    *before* Serve's own ``__init__`` starts the control loop, so a controller restarted
    in the middle of ``serve.shutdown()`` knows every registered actor before its first
    shutdown step. Never raises for anything it reads (a constructor that raises leaves
    the actor dead for good). Then starts the core's reconcile loop as a task.
``_register_shutdown_cleanup_actor(handle)`` (upstream entry point)
    Made durable, scope ``serve``, keeping any existing registration's owner; one KV put
    and no actor-table lookup (upstream never refused a dead actor).
``_kill_registered_cleanup_actors()``
    Asks ``core.shutdown_step()``; raises ``_CleanupPending`` until it says done.
``shutdown()``
    Swallows ``_CleanupPending``; Serve's control loop calls it again on its next tick.
    Before Ray 2.56 it also keeps ``ShutdownFlag`` (below).

New remote methods are prefixed ``serve_cleanup_``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
from typing import Any, Callable, Iterator, Optional

import ray

from serve_cleanup.serve_adapter import _ray
from serve_cleanup.serve_adapter.kv import KvStore
from serve_cleanup.serve_adapter.ports import GcsActorTable, GcsJobTable, RayKiller, ServeFacts
from serve_cleanup.core import CleanupCore, Config, Registration
from serve_cleanup.core.records import KIND_ACTOR, KIND_PLACEMENT_GROUP, KINDS, SCOPE_SERVE, Record, V1Reply, normalize_actor_id
from serve_cleanup.errors import PersistenceError
from serve_cleanup.serve_adapter.faults import CrashPoints
from serve_cleanup.serve_adapter.metrics import ControllerMetrics

logger = _ray.controller_logger

REPR = "ServeController(serve_cleanup durable)"


def _version() -> str:
    import serve_cleanup

    return str(serve_cleanup.__version__)


_VERSION = _version()  # reported by serve_cleanup_status


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


@contextlib.contextmanager
def _held_logs(log: logging.Logger) -> Iterator[Callable[[], None]]:
    """Hold the records ``log`` gets inside the block; the callable yielded hands them to
    the logger's handlers of that later moment."""
    held: list[logging.LogRecord] = []

    class _Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(record)

    hold, propagate = _Hold(), log.propagate
    log.addHandler(hold)
    log.propagate = False
    try:
        yield lambda: [log.handle(record) for record in held] and None
    finally:
        log.removeHandler(hold)
        log.propagate = propagate


class _CleanupPending(Exception):
    """Registered actors remain; Serve's shutdown must not finish yet."""


# A load of this many records or more is followed by malloc_trim: see _give_back_free_memory.
TRIM_AFTER_LOADING = 10_000


def _give_back_free_memory() -> None:
    """Return the heap pages a large load freed to the OS. GCS's reply to the key listing
    (100,000 keys: ~14 MB in C++ strings, freed once converted) and the parse's
    temporaries leave free chunks that glibc keeps in its arenas, so without this the
    controller's RSS carries them for good. One ``malloc_trim(0)`` (a few ms); a no-op
    where the C library has none (musl, macOS)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


async def _register_upstream(core: CleanupCore, actor: Any) -> None:
    """The upstream method: an actor with no record takes the core's fast path (one
    coroutine around the one put: ``Registrar.register_new``); anything else (a repeat,
    an actor under way, a closed write gate) the full path."""
    _ray.require_actor_handle(actor)
    actor_id = _ray.actor_id_hex(actor)
    if not core.registrar.can_write_new(actor_id):
        await _register(core, actor, ensure_only=True, check_actor=False)
        return
    handle = _ray.handle_to_bytes(actor)  # no await from the check to the call
    name, namespace = _ray.handle_name_namespace(handle)
    await core.registrar.register_new(Registration(
        actor_id, name, namespace if name else "", handle, ensure_only=True, check_actor=False))


async def _register(core: CleanupCore, actor: Any, **how: Any) -> Record:
    """The handle to a ``Registration``; serialized only when the core needs to write. A
    ``PlacementGroup`` is registered by its id (its name comes from its table entry)."""
    if _ray.is_placement_group(actor):
        return await core.registrar.register(Registration(
            actor_id=_ray.placement_group_id_hex(actor), name="", namespace="", handle=b"",
            kind=KIND_PLACEMENT_GROUP, **how))
    _ray.require_actor_handle(actor)
    reg = Registration(actor_id=_ray.actor_id_hex(actor), name="", namespace="", handle=b"", **how)
    done = core.registrar.settled(reg)  # the common repeat (every router re-registers its actor)
    if done is not None:
        return done
    handle = _ray.handle_to_bytes(actor)
    name, namespace = _ray.handle_name_namespace(handle)
    return await core.registrar.register(
        dataclasses.replace(reg, name=name, namespace=namespace if name else "", handle=handle)
    )


# Named ServeController so the actor table shows the class name plain Serve has
# (`ray list actors --filter class_name=ServeController`, Ray's own tests, monitoring).
# Ray takes the name from the class's __name__.
class ServeController(_ray.ServeController):
    async def __init__(self, **kwargs: Any) -> None:
        # Build the core and read the records before Serve's control loop starts. Serve's
        # __init__ sets up the controller log, so what this logs is held until then (else
        # it would land in the worker's stderr file, not in the controller log users read).
        with _held_logs(logger) as replay:
            gcs = _ray.GcsClient(address=ray.get_runtime_context().gcs_address)
            kv = KvStore(gcs)
            context = ray.get_runtime_context()
            self._sc_core = CleanupCore(
                kv.aio,
                GcsActorTable(),
                RayKiller(logger),
                ServeFacts(self, context.get_actor_id(), context.get_job_id()),
                jobs=GcsJobTable(gcs),
                logger=logger,
                metrics=ControllerMetrics(),
                faults=CrashPoints(kv, logger),
                config=Config(reconcile_interval_s=_reconcile_interval()),
            )
            await self._sc_core.load()  # never raises
            if len(self._sc_core.registry) >= TRIM_AFTER_LOADING:
                _give_back_free_memory()
        self._sc_flag = None if _ray.SERVE_RESUMES_SHUTDOWN else ShutdownFlag(kv)
        try:
            await super().__init__(**kwargs)  # configures the controller logger
        finally:
            replay()
        if self._sc_flag is not None and self._sc_flag.resume():
            _ray.set_serve_shutting_down(self)
        self._sc_reconcile_task = asyncio.get_running_loop().create_task(self._sc_core.run())
        logger.info(
            f"serve_cleanup: durable controller started with {len(self._sc_core.registry)} "
            "registration(s)."
        )

    def __repr__(self) -> str:
        return REPR

    # --- registration -----------------------------------------------------------------

    async def _register_shutdown_cleanup_actor(self, actor_handle: Any) -> None:
        """Upstream entry point, made durable. Serve-wide, and only if the actor is not
        registered yet (a router re-registering its actor never changes an owner).

        Upstream never failed Ray's own callers (routers, at start-up), so when GCS
        cannot take the record the actor is kept the upstream way, in memory: still
        killed at shutdown by this controller process.
        """
        try:
            await _register_upstream(self._sc_core, actor_handle)
        except PersistenceError as e:
            logger.error(
                f"serve_cleanup: {e} Keeping it in memory only, as plain Serve would: it is "
                "killed at shutdown unless this controller dies first."
            )
            super()._register_shutdown_cleanup_actor(actor_handle)

    async def serve_cleanup_register(
        self, actor: Any, scope: str = SCOPE_SERVE, app: str = "", deployment: str = "",
        ensure_only: bool = False, protocol: int = 1, grace_s: float = 0.0, callers_job: bool = False,
    ) -> Any:
        """Durably register ``actor``; returns the stored record. Idempotent.

        ``protocol=2`` is what a 0.2.0 client sends (a 0.1.x controller refuses it); a
        0.1.x client sends no ``protocol`` and gets the record as a ``V1Reply``, which it
        unpickles as its own one-owner ``Record`` (``client/protocol.py``)."""
        record = await _register(
            self._sc_core, actor, scope=scope, app=app, deployment=deployment, ensure_only=ensure_only,
            grace_s=grace_s, callers_job=bool(callers_job) and scope == "job",
        )
        return record if protocol >= 2 else V1Reply(record, (scope, app, deployment))

    async def serve_cleanup_unregister(
        self, actor_id: str, scope: Optional[str] = None, app: str = "", deployment: str = "",
        kind: Optional[str] = None,
    ) -> bool:
        """Without ``scope``: remove the registration without killing the actor. With an
        app or deployment owner: remove that owner (the last one leaves the actor
        registered for shutdown). False if there was nothing to remove. The call shape of
        0.1.0's client (the actor id alone) is the first. ``kind`` (since 0.3.0; a client
        sends it for a placement group only, so None is an actor): a registration of
        another kind under that id is left alone (False)."""
        owner = None if scope is None else (scope, app, deployment)
        actor_id = normalize_actor_id(actor_id)
        kind = KIND_ACTOR if kind is None else kind
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; use one of {KINDS}.")
        if actor_id in self._sc_core.registry and self._sc_core.registry.kind_of(actor_id) != kind:
            return False
        return await self._sc_core.unregister(actor_id, owner)

    async def serve_cleanup_gc(self, dry_run: bool = False) -> list[dict[str, Any]]:
        """Registrations whose owner is gone or whose actor is dead; killed unless dry_run."""
        return await self._sc_core.gc(dry_run)

    def serve_cleanup_status(self) -> dict[str, Any]:
        return {
            "controller": "durable",
            "version": _VERSION,
            "pid": os.getpid(),
            "shutting_down": _ray.serve_shutting_down(self),
            **self._sc_core.status(),
        }

    # --- shutdown ---------------------------------------------------------------------

    def _kill_registered_cleanup_actors(self) -> None:
        if not self._sc_core.shutdown_step():
            raise _CleanupPending()
        if self._sc_flag is not None:
            self._sc_flag.clear()
        super()._kill_registered_cleanup_actors()  # any kept in memory (GCS was down)

    def shutdown(self) -> None:
        if self._sc_flag is not None and _ray.serve_shutting_down(self):
            self._sc_flag.persist()
        try:
            super().shutdown()
        except _CleanupPending:
            pass  # the pass runs on the loop; Serve calls shutdown() again next tick


class ShutdownFlag:
    """Resuming an interrupted ``serve.shutdown()`` before Ray 2.56.

    From 2.56 Serve persists ``SHUTDOWN_IN_PROGRESS_KEY`` when a shutdown starts, and a
    restarted controller resumes the shutdown. Before 2.56 it does not: a controller that
    crashed mid-shutdown comes back as a running Serve (with its checkpoints already
    deleted), and only a retry of the caller's in-flight ``graceful_shutdown`` call (the
    controller runs with ``max_task_retries=-1``) starts the shutdown again. A caller that
    is gone, or a ``graceful_shutdown(wait=False)``, would leave Serve running and the
    registered actors alive. So on those releases the durable controller keeps its own
    flag beside the records: written on the first shutdown tick (before Serve deletes any
    checkpoint), read at the end of ``__init__``, deleted when the controller may exit. Its
    value is the controller's actor id, so only a restart of the same actor resumes; a
    flag a dead controller left behind is deleted by the next one. Every method is
    synchronous (Serve's hooks are) and never raises.
    """

    KEY = "serve-cleanup-shutdown-in-progress"

    def __init__(self, kv: KvStore, own_id: Optional[str] = None) -> None:
        self._kv = kv
        self._own_id = own_id or ray.get_runtime_context().get_actor_id()
        self._written = False

    def persist(self) -> None:
        """On every shutdown tick; writes once (retried on the next tick if it failed)."""
        if self._written:
            return
        try:
            self._kv.put(self.KEY, self._own_id.encode())
            self._written = True
        except Exception as e:
            logger.warning(
                f"serve_cleanup: could not persist the shutdown flag ({e!r}); retrying on the "
                "next control-loop tick."
            )

    def resume(self) -> bool:
        """At the end of ``__init__``: whether this controller actor was shutting down
        when it crashed (then the caller sets Serve's ``_shutting_down``)."""
        try:
            flag = self._kv.get(self.KEY)
            if flag is None:
                return False
            if flag.decode(errors="replace") != self._own_id:  # left by an earlier controller
                self.clear()
                return False
        except Exception as e:
            logger.error(
                f"serve_cleanup: could not read the shutdown flag ({e!r}); if this controller "
                "was restarted in the middle of serve.shutdown(), call serve.shutdown() again."
            )
            return False
        self._written = True
        logger.warning(
            "serve_cleanup: this controller was restarted in the middle of serve.shutdown(); "
            f"resuming the shutdown (Ray {ray.__version__} does not do it by itself before 2.56)."
        )
        return True

    def clear(self) -> None:
        """When the controller may exit: the next controller must not resume anything."""
        try:
            self._kv.delete(self.KEY)
        except Exception as e:
            logger.warning(f"serve_cleanup: could not delete the shutdown flag ({e!r}).")
