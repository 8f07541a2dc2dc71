"""The caller's side: start Serve with the durable controller, register, list.

Works from a driver, a replica or a router. Calls to the controller ride Ray's own
actor-task retries (the controller runs with ``max_task_retries=-1``), and when the
controller is briefly gone (killed, restarting) ``register`` looks it up again until
its timeout.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import ray

from serve_cleanup import _compat, records
from serve_cleanup.errors import ControllerUnavailableError, NotDurableControllerError
from serve_cleanup.records import Record
from serve_cleanup.registry import Registry, SetAside
from serve_cleanup.store import GcsRecordStore

DEFAULT_TIMEOUT_S = 60.0
# A method only the durable controller (and its subclasses) has; see controller.py.
_MARKER_METHOD = "serve_cleanup_status"


def _connect() -> None:
    """Connect to the running cluster like Serve's own APIs do."""
    if not ray.is_initialized():
        ray.init(namespace=_compat.SERVE_NAMESPACE)


def find_controller() -> Optional[_compat.ActorHandle]:
    """The Serve controller actor, or None if Serve is not running."""
    try:
        return ray.get_actor(_compat.SERVE_CONTROLLER_NAME, namespace=_compat.SERVE_NAMESPACE)
    except ValueError:
        return None


def controller_kind(handle: Optional[_compat.ActorHandle] = None) -> str:
    """``"durable"``, ``"plain"`` (upstream Serve) or ``"none"``.

    Decided from the handle's method table (no RPC): the durable controller, or any
    subclass of it, has ``serve_cleanup_status``.
    """
    handle = handle if handle is not None else find_controller()
    if handle is None:
        return "none"
    return "durable" if _compat.handle_has_method(handle, _MARKER_METHOD) else "plain"


def start(**serve_start_kwargs: Any) -> None:
    """Start Serve with the durable controller. Takes what ``serve.start()`` takes.

    A no-op if the durable controller already runs. ``serve.run()`` afterwards uses it.
    """
    from ray import serve

    _connect()
    kind = controller_kind()
    if kind == "durable":
        return
    if kind == "plain":
        raise NotDurableControllerError(
            "a plain Ray Serve controller is already running, so registrations would not "
            "survive a controller restart. Switch with serve.shutdown() (this deletes your "
            "Serve apps) and then serve_cleanup.start(), and redeploy; or start Serve with "
            "serve_cleanup.start() / `serve-cleanup start` before `serve deploy`/`serve run`."
        )
    # Imported here, not at module level: replicas and routers that only register
    # need not load Serve's controller module.
    from serve_cleanup.controller import ServeController as DurableServeController

    with _compat.durable_controller_factory(DurableServeController):
        serve.start(**serve_start_kwargs)


def register(
    actor: Any,
    *,
    scope: str = records.SCOPE_SERVE,
    app: Optional[str] = None,
    deployment: Optional[str] = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Record:
    """Register ``actor`` for cleanup. Durable when it returns.

    ``scope`` says when the actor is killed:

    * ``"serve"`` (default): at ``serve.shutdown()``;
    * ``"app"``: when application ``app`` is deleted (or at shutdown);
    * ``"deployment"``: when deployment ``deployment`` of ``app`` is deleted, including a
      redeploy of the app without it (or at shutdown).

    Inside a replica, ``app`` and ``deployment`` default to the replica's own. Survives a
    controller restart in flight: retries until the (restarted) controller accepts the
    registration, or raises ``ControllerUnavailableError`` after ``timeout_s``.
    Registering the same actor again with the same owner is a no-op; with another owner
    it moves the registration to that owner.
    """
    if not isinstance(actor, _compat.ActorHandle):
        raise TypeError(
            f"expected a Ray ActorHandle, got {type(actor).__name__}; pass the handle "
            "returned by MyActor.remote() or ray.get_actor()."
        )
    for label, value in (("app", app), ("deployment", deployment)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{label} must be a str, got {type(value).__name__}")
    app, deployment = _resolve_owner(scope, app, deployment)
    return _call_controller(
        "serve_cleanup_register", actor, scope, app, deployment, timeout_s=timeout_s
    )


def _resolve_owner(scope: str, app: Optional[str], deployment: Optional[str]) -> tuple[str, str]:
    if not isinstance(scope, str) or scope not in records.SCOPES:
        raise ValueError(f"unknown scope {scope!r}; use one of {records.SCOPES}.")
    if scope == records.SCOPE_SERVE:
        if app or deployment:
            raise ValueError("scope='serve' takes no app or deployment; use scope='app' or 'deployment'.")
        return "", ""
    if scope == records.SCOPE_APP and deployment:
        raise ValueError("scope='app' takes no deployment; use scope='deployment'.")
    here = _compat.replica_owner()
    if app is None:
        if here is None:
            raise ValueError(
                f"scope={scope!r} outside a Serve replica needs app=" +
                ("... and deployment=..." if scope == records.SCOPE_DEPLOYMENT else "...")
            )
        app = here[0]
    if scope == records.SCOPE_APP:
        return app, ""
    if deployment is None:
        if here is None or here[0] != app:
            raise ValueError(f"scope='deployment' needs deployment=... (app {app!r}).")
        deployment = here[1]
    return app, deployment


def unregister(actor: Any, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Remove ``actor``'s registration (durably) without killing it.

    Accepts an actor handle or an actor id (hex). False if it was not registered.
    """
    if isinstance(actor, _compat.ActorHandle):
        actor_id = _compat.actor_id_hex(actor)
    elif isinstance(actor, str):
        actor_id = actor.strip().lower()
    else:
        raise TypeError(f"expected a Ray ActorHandle or an actor id, got {type(actor).__name__}")
    return _call_controller("serve_cleanup_unregister", actor_id, timeout_s=timeout_s)


def gc(*, dry_run: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
    """Kill registrations whose owner is gone or whose actor is dead (only list them if
    ``dry_run``). Each item is a record as a dict plus ``why`` (and ``outcome``)."""
    return _call_controller("serve_cleanup_gc", dry_run, timeout_s=timeout_s)


def controller_status(timeout_s: float = 10.0) -> dict[str, Any]:
    """The durable controller's own view (records, set-aside, last passes)."""
    return _call_controller("serve_cleanup_status", timeout_s=timeout_s)


def _call_controller(method: str, *args: Any, timeout_s: float) -> Any:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    _connect()
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    last_error: Optional[BaseException] = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ControllerUnavailableError(
                f"no durable Serve controller accepted {method} within {timeout_s:.0f}s "
                f"(last error: {last_error!r}). Is Serve running? Start it with "
                "serve_cleanup.start() or `serve-cleanup start`."
            )
        controller = find_controller()
        if controller is None:
            last_error = ValueError("the Serve controller is not running")
        elif controller_kind(controller) != "durable":
            raise NotDurableControllerError(
                "the running Serve controller is plain Ray Serve, which keeps registrations "
                "in memory only. Start Serve with serve_cleanup.start() (after "
                "serve.shutdown()) to make them durable."
            )
        else:
            try:
                ref = getattr(controller, method).remote(*args)
                return ray.get(ref, timeout=remaining)
            except ray.exceptions.RayTaskError as e:
                raise e.as_instanceof_cause() if e.cause is None else e.cause from None
            except ray.exceptions.GetTimeoutError as e:
                last_error = e
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                last_error = e  # the controller died or is restarting: look it up again
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 1.0)


def list_registrations() -> list[Record]:
    """Every durable registration, read from the GCS KV (works while the controller is down).

    Unreadable entries are skipped here; ``serve-cleanup status`` reports them.
    """
    return read_kv()[0]


def read_kv() -> tuple[list[Record], list[SetAside]]:
    """Records and set-aside entries as the GCS KV holds them now."""
    _connect()
    registry = Registry(GcsRecordStore(_compat.driver_gcs_client()))
    registry.load()
    return sorted(registry.records(), key=lambda r: (r.registered_at, r.actor_id)), registry.set_aside()


def actor_states(actor_ids: list[str]) -> dict[str, str]:
    """Actor table state per id: ALIVE, RESTARTING, ..., DEAD, or UNKNOWN on error."""
    import asyncio

    gcs = _compat.driver_gcs_client()

    async def one(actor_id: str) -> str:
        try:
            info = await _compat.lookup_actor(gcs, actor_id, 5.0)
        except Exception:
            return "UNKNOWN"
        return "DEAD" if info is None else info.state

    async def all_() -> list[str]:
        return list(await asyncio.gather(*(one(a) for a in actor_ids)))

    return dict(zip(actor_ids, asyncio.run(all_())))
