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


# How long start() waits for a controller that is shutting down to be gone.
SHUTDOWN_WAIT_S = 60.0


def start(
    proxy_location: Any = None,
    http_options: Any = None,
    grpc_options: Any = None,
    logging_config: Any = None,
    tracing_config: Any = None,
    controller_options: Any = None,
    **kwargs: Any,
) -> None:
    """Start Serve with the durable controller. Same arguments as ``serve.start()``.

    A no-op if the durable controller already runs (options given are then ignored, with
    a warning, as Serve ignores them). A controller that is shutting down is waited out
    (up to ``SHUTDOWN_WAIT_S``) and a new durable one started. Raises
    ``NotDurableControllerError`` if a plain Serve controller runs, including one that
    someone else (``serve deploy``, the dashboard) created while this call was starting
    Serve: it never returns with a plain controller running. ``serve.run()`` afterwards
    uses the durable controller.
    """
    start_durable(
        proxy_location=proxy_location,
        http_options=http_options,
        grpc_options=grpc_options,
        logging_config=logging_config,
        tracing_config=tracing_config,
        controller_options=controller_options,
        **kwargs,
    )


def start_durable(*, say: Any = None, **serve_start_kwargs: Any) -> str:
    """:func:`start`, returning what happened: ``"started"`` or ``"already running"``.

    ``say(message)`` is called for progress worth telling a person (the CLI prints it).
    """
    import warnings

    from ray import serve

    _connect()
    _wait_out_shutdown(say)
    kind = controller_kind()
    if kind == "durable":
        given = sorted(k for k, v in serve_start_kwargs.items() if v is not None)
        if given:
            warnings.warn(
                f"serve_cleanup.start(): the durable Serve controller is already running, so "
                f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} ignored (as by "
                "serve.start()). Shut Serve down first to change them.",
                RuntimeWarning,
                stacklevel=3,
            )
        return "already running"
    if kind == "plain":
        raise NotDurableControllerError(_PLAIN_RUNNING)
    # Imported here, not at module level: replicas and routers that only register
    # need not load Serve's controller module.
    from serve_cleanup.controller import ServeController as DurableServeController

    try:
        with _compat.durable_controller_factory(DurableServeController):
            serve.start(**serve_start_kwargs)
    except ValueError as e:
        # Another process created a controller between our check and ours (Ray refuses
        # a second actor with the controller's name). Which kind won is checked below.
        if find_controller() is None:
            raise
        if say is not None:
            say(f"Another process started Serve at the same time ({e}).")
    kind = controller_kind()
    if kind != "durable":
        raise NotDurableControllerError(
            "a plain Ray Serve controller was started by another process (for example "
            "`serve deploy` through the dashboard) while serve_cleanup was starting Serve, "
            "and Serve uses that one: registrations are NOT durable. " + _SWITCH_HINT
            if kind == "plain"
            else "the Serve controller is gone right after it was started (see the "
            "controller log under /tmp/ray/session_latest/logs/serve/)."
        )
    return "started"


_SWITCH_HINT = (
    "Switch with serve.shutdown() (this deletes your Serve apps) and then "
    "serve_cleanup.start(), and redeploy; or run `serve-cleanup enable` in the head node's "
    "Python environment before `ray start`, so every controller is the durable one."
)
_PLAIN_RUNNING = (
    "a plain Ray Serve controller is already running, so registrations would not "
    "survive a controller restart. " + _SWITCH_HINT
)


def shutting_down(handle: Optional[_compat.ActorHandle] = None) -> bool:
    """Whether the running Serve controller is in the middle of ``serve.shutdown()``."""
    handle = handle if handle is not None else find_controller()
    if handle is None:
        return False
    if controller_kind(handle) == "durable":
        try:
            return bool(ray.get(handle.serve_cleanup_status.remote(), timeout=10)["shutting_down"])
        except Exception:
            pass  # exiting or restarting: fall back to Serve's own flag
    return _compat.serve_shutdown_in_progress(_compat.driver_gcs_client())


def _wait_out_shutdown(say: Any) -> None:
    """Wait (bounded) until a controller that is shutting down is gone."""
    if not shutting_down():
        return
    message = (
        f"The Serve controller is shutting down; waiting up to {SHUTDOWN_WAIT_S:.0f}s for "
        "it to finish before starting a new durable one."
    )
    if say is not None:
        say(message)
    else:
        _compat.controller_logger.warning(f"serve_cleanup: {message}")
    deadline = time.monotonic() + SHUTDOWN_WAIT_S
    while time.monotonic() < deadline:
        # The controller exits at the end of its shutdown (and one restarted meanwhile
        # resumes it), so wait for it to be gone, not for the flag to clear.
        if find_controller() is None:
            return
        time.sleep(0.2)
    raise ControllerUnavailableError(
        f"the Serve controller was still shutting down after {SHUTDOWN_WAIT_S:.0f}s; "
        "`serve-cleanup status` shows what it waits for. Try again when it is gone."
    )


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
