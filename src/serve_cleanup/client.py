"""The caller's side: start Serve with the durable controller, register, list.

Works from a driver, a replica or a router. Calls to the controller ride Ray's own
actor-task retries (the controller runs with ``max_task_retries=-1``), and when the
controller is briefly gone (killed, restarting) each call looks it up again until its
timeout. Every call that waits for the controller has an awaitable twin
(``register_async``, ...) for ``async`` code; both share the argument checks and the
retry policy (``_attempts``).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Generator, Literal, Optional, Union

import ray
from ray.actor import ActorHandle

from serve_cleanup import _compat
from serve_cleanup.core import records
from serve_cleanup.core.records import Record
from serve_cleanup.core.registry import SetAside, read_all
from serve_cleanup.errors import ControllerUnavailableError, NotDurableControllerError

Scope = Literal["serve", "app", "deployment"]
ControllerKind = Literal["durable", "plain", "none"]

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


def controller_kind(handle: Optional[ActorHandle] = None) -> ControllerKind:
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


# --- argument checks, shared by the blocking and the awaitable calls -------------------


def _check_timeout(timeout_s: object) -> float:
    ok = (
        isinstance(timeout_s, (int, float))
        and not isinstance(timeout_s, bool)
        and math.isfinite(timeout_s)
        and timeout_s > 0
    )
    if not ok:
        raise ValueError(
            f"timeout_s must be a finite positive number of seconds, got {timeout_s!r}"
        )
    return float(timeout_s)  # type: ignore[arg-type]


def _register_args(
    actor: object, scope: object, app: object, deployment: object
) -> tuple[ActorHandle, str, str, str]:
    if not isinstance(actor, ActorHandle):
        raise TypeError(
            f"expected a Ray ActorHandle, got {type(actor).__name__}; pass the handle "
            "returned by MyActor.remote() or ray.get_actor()."
        )
    for label, value in (("app", app), ("deployment", deployment)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{label} must be a str, got {type(value).__name__}")
    owner_app, owner_deployment = _resolve_owner(scope, app, deployment)  # type: ignore[arg-type]
    return actor, scope, owner_app, owner_deployment  # type: ignore[return-value]


def _resolve_owner(scope: str, app: Optional[str], deployment: Optional[str]) -> tuple[str, str]:
    """Fill in the replica's own app and deployment where the scope needs them and the
    caller left them out; then the owner rule of ``records.check_owner``."""
    if scope in (records.SCOPE_APP, records.SCOPE_DEPLOYMENT) and (app is None or (
            scope == records.SCOPE_DEPLOYMENT and deployment is None)):
        here = _compat.replica_owner()
        if here is None and app is not None:
            raise ValueError(f"scope='deployment' outside a Serve replica needs deployment=... (app {app!r}).")
        if here is None:
            raise ValueError(
                f"scope={scope!r} outside a Serve replica needs app=" +
                ("... and deployment=..." if scope == records.SCOPE_DEPLOYMENT else "...")
            )
        if app is None:
            app = here[0]
        if scope == records.SCOPE_DEPLOYMENT and deployment is None:
            if here[0] != app:
                raise ValueError(f"scope='deployment' needs deployment=... (app {app!r}).")
            deployment = here[1]
    app, deployment = app or "", deployment or ""
    records.check_owner(scope, app, deployment)
    return app, deployment


def _unregister_args(actor: object) -> str:
    if isinstance(actor, ActorHandle):
        return _compat.actor_id_hex(actor)
    if isinstance(actor, str):
        return records.normalize_actor_id(actor)
    raise TypeError(f"expected a Ray ActorHandle or an actor id, got {type(actor).__name__}")


# --- the public calls: each a blocking function and its awaitable twin -----------------


def register(
    actor: ActorHandle,
    *,
    scope: Scope = "serve",
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

    Blocks while it waits. In ``async`` code use :func:`register_async`.
    """
    args = _register_args(actor, scope, app, deployment)
    return _call_controller("serve_cleanup_register", *args, timeout_s=timeout_s, api="register")


async def register_async(
    actor: ActorHandle,
    *,
    scope: Scope = "serve",
    app: Optional[str] = None,
    deployment: Optional[str] = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Record:
    """:func:`register` for ``async`` code: the same arguments, result and errors, but
    waiting (also between retries while the controller restarts) never blocks the loop."""
    args = _register_args(actor, scope, app, deployment)
    return await _call_controller_async("serve_cleanup_register", *args, timeout_s=timeout_s)


def unregister(actor: Union[ActorHandle, str], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Remove ``actor``'s registration (durably) without killing it.

    Accepts an actor handle or an actor id (hex). False if it was not registered.
    Blocks while it waits; in ``async`` code use :func:`unregister_async`.
    """
    actor_id = _unregister_args(actor)
    return _call_controller("serve_cleanup_unregister", actor_id, timeout_s=timeout_s, api="unregister")


async def unregister_async(
    actor: Union[ActorHandle, str], *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> bool:
    """:func:`unregister` for ``async`` code (same arguments, result and errors)."""
    actor_id = _unregister_args(actor)
    return await _call_controller_async("serve_cleanup_unregister", actor_id, timeout_s=timeout_s)


def collect(*, dry_run: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
    """Kill registrations whose owner is gone or whose actor is dead (only list them if
    ``dry_run``). Each item is a record as a dict plus ``why`` (and ``outcome``).

    What ``serve-cleanup gc`` runs. Also available as ``serve_cleanup.gc`` (not exported
    by ``from serve_cleanup import *``: it would shadow the standard library's ``gc``).
    Blocks while it waits; in ``async`` code use :func:`collect_async`.
    """
    return _call_controller("serve_cleanup_gc", bool(dry_run), timeout_s=timeout_s, api="collect")


async def collect_async(
    *, dry_run: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S
) -> list[dict[str, Any]]:
    """:func:`collect` for ``async`` code (same arguments, result and errors)."""
    return await _call_controller_async("serve_cleanup_gc", bool(dry_run), timeout_s=timeout_s)



def controller_status(timeout_s: float = 10.0) -> dict[str, Any]:
    """The durable controller's own view (records, set-aside, last passes)."""
    return _call_controller("serve_cleanup_status", timeout_s=timeout_s)


# --- calling the controller: one retry policy, a blocking and an awaitable driver ------
#
# ``_attempts`` is the whole policy (find the controller, refuse a plain one, call, retry
# on a dead or restarting controller with capped exponential backoff, give up at the
# deadline) as a generator that performs no waiting itself: it yields what to wait for
# (``_Await`` a controller call, or ``_Sleep``) and is sent the result or thrown the
# error. ``_call_controller`` drives it with ``ray.get``/``time.sleep``,
# ``_call_controller_async`` with ``await ref``/``asyncio.sleep``.

_FIRST_DELAY_S = 0.05
_MAX_DELAY_S = 1.0
# The longest single wait handed to ray.get / asyncio.wait_for (a finite timeout_s may
# still be too large for Ray's millisecond conversion); a longer timeout_s just retries.
_MAX_WAIT_S = 24 * 3600.0


@dataclass(frozen=True)
class _Await:
    """Wait at most ``timeout_s`` for the controller call ``ref``."""

    ref: Any
    timeout_s: float


@dataclass(frozen=True)
class _Sleep:
    seconds: float


_Attempts = Generator[Union[_Await, _Sleep], Any, Any]

# Errors of a wait that mean "try again": the call timed out, or the controller died or
# is restarting (the next attempt looks it up again).
_RETRYABLE = (
    ray.exceptions.GetTimeoutError,
    asyncio.TimeoutError,
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
)


def _attempts(
    method: str,
    args: tuple[Any, ...],
    timeout_s: float,
    *,
    find: Callable[[], Optional[ActorHandle]] = lambda: find_controller(),
    kind: Callable[[ActorHandle], str] = lambda h: controller_kind(h),
    clock: Callable[[], float] = time.monotonic,
) -> _Attempts:
    deadline = clock() + timeout_s
    delay = _FIRST_DELAY_S
    last_error: Optional[BaseException] = None
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            raise ControllerUnavailableError(
                f"no durable Serve controller accepted {method} within {timeout_s:g}s "
                f"(last error: {last_error!r}). Is Serve running? Start it with "
                "serve_cleanup.start() or `serve-cleanup start`."
            )
        controller = find()
        if controller is None:
            last_error = ValueError("the Serve controller is not running")
        elif kind(controller) != "durable":
            raise NotDurableControllerError(
                "the running Serve controller is plain Ray Serve, which keeps registrations "
                "in memory only. Start Serve with serve_cleanup.start() (after "
                "serve.shutdown()) to make them durable."
            )
        else:
            ref = getattr(controller, method).remote(*args)
            try:
                return (yield _Await(ref, min(remaining, _MAX_WAIT_S)))
            except ray.exceptions.RayTaskError as e:
                raise e.as_instanceof_cause() if e.cause is None else e.cause from None
            except _RETRYABLE as e:
                last_error = e
        pause = min(delay, deadline - clock())
        if pause > 0:
            yield _Sleep(pause)
        delay = min(delay * 2, _MAX_DELAY_S)


def _call_controller(method: str, *args: Any, timeout_s: float, api: Optional[str] = None) -> Any:
    """Run ``method`` on the durable controller, blocking, with the shared retry policy."""
    attempts = _attempts(method, args, _check_timeout(timeout_s))
    if api is not None:
        _warn_if_blocking_a_loop(api)
    _connect()
    try:
        action = next(attempts)
        while True:
            if isinstance(action, _Sleep):
                time.sleep(action.seconds)
                action = attempts.send(None)
                continue
            try:
                value = ray.get(action.ref, timeout=action.timeout_s)
            except Exception as e:
                action = attempts.throw(e)
            else:
                action = attempts.send(value)
    except StopIteration as done:
        return done.value


async def _call_controller_async(method: str, *args: Any, timeout_s: float) -> Any:
    """Run ``method`` on the durable controller without blocking the running loop."""
    attempts = _attempts(method, args, _check_timeout(timeout_s))
    _connect()
    try:
        action = next(attempts)
        while True:
            if isinstance(action, _Sleep):
                await asyncio.sleep(action.seconds)
                action = attempts.send(None)
                continue
            try:
                value = await asyncio.wait_for(_awaitable(action.ref), action.timeout_s)
            except Exception as e:
                action = attempts.throw(e)
            else:
                action = attempts.send(value)
    except StopIteration as done:
        return done.value


async def _awaitable(ref: Any) -> Any:
    return await ref  # an ObjectRef is awaitable on any running event loop


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_if_blocking_a_loop(api: str) -> None:
    """Warn (once per function and process) when a blocking call runs on an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop running in this thread: blocking is fine
    with _warned_lock:
        if api in _warned:
            return
        _warned.add(api)
    warnings.warn(
        f"serve_cleanup.{api}() was called on a running asyncio event loop. It blocks the "
        "loop (every request this process serves waits) until the Serve controller "
        f"answers, up to timeout_s while the controller restarts. Use "
        f"`await serve_cleanup.{api}_async(...)` instead.",
        RuntimeWarning,
        stacklevel=4,
    )


def list_registrations() -> list[Record]:
    """Every durable registration, read from the GCS KV (works while the controller is down).

    Unreadable entries are skipped here; ``serve-cleanup status`` reports them.
    """
    return read_kv()[0]


def read_kv() -> tuple[list[Record], list[SetAside]]:
    """Records and set-aside entries as the GCS KV holds them now."""
    from serve_cleanup.adapters import GcsRecordStore

    _connect()
    found, set_aside = asyncio.run(read_all(GcsRecordStore(_compat.driver_gcs_client())))
    return sorted(found.values(), key=lambda r: (r.registered_at, r.actor_id)), list(set_aside.values())


def actor_states(actor_ids: list[str]) -> dict[str, str]:
    """Actor table state per id: ALIVE, RESTARTING, ..., DEAD (or not known to the
    table), or UNKNOWN when the table cannot be read. One bulk read of the live set,
    however many ids (never a scan per id)."""
    try:
        live = _compat.live_actors(frozenset(actor_ids))
    except Exception:
        return {a: "UNKNOWN" for a in actor_ids}
    return {a: live[a].state if a in live else "DEAD" for a in actor_ids}
