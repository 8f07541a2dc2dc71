"""Calls to the durable controller: ``register``, ``unregister``, ``collect`` and their
awaitable twins.

Works from a driver, a replica or a router. Calls ride Ray's own actor-task retries (the
controller runs with ``max_task_retries=-1``), and when the controller is briefly gone
(killed, restarting) each call looks it up again until its timeout. One retry policy
(``_attempts``, a generator) is driven by a blocking and by an awaitable driver.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Generator, Optional, Union

import ray
from ray.actor import ActorHandle
from ray.util.placement_group import PlacementGroup

from serve_cleanup.client.args import Scope, check_timeout, register_args, unregister_args
from serve_cleanup.client.controller import connect, controller_kind, find_controller
from serve_cleanup.client.protocol import PROTOCOL, needed_release, older_controller
from serve_cleanup.core.records import KIND_ACTOR, KIND_PLACEMENT_GROUP, Record, check_grace
from serve_cleanup.serve_adapter import _ray
from serve_cleanup.errors import ControllerUnavailableError, NotDurableControllerError

DEFAULT_TIMEOUT_S = 60.0


# --- the public calls: each a blocking function and its awaitable twin -----------------


def register(
    actor: Union[ActorHandle, PlacementGroup],
    *,
    scope: Scope = "serve",
    app: Optional[str] = None,
    deployment: Optional[str] = None,
    job: Optional[str] = None,
    grace_s: float = 0.0,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Record:
    """Register ``actor`` for cleanup. Durable when it returns.

    ``actor`` is an actor handle, or a ``PlacementGroup`` (it is then *removed*, by its id,
    where an actor is killed; Serve's own placement groups and a removed one are refused).

    ``scope`` says when the actor is killed:

    * ``"serve"`` (default): at ``serve.shutdown()``;
    * ``"app"``: when application ``app`` is deleted (or at shutdown);
    * ``"deployment"``: when deployment ``deployment`` of ``app`` is deleted, including a
      redeploy of the app without it (or at shutdown);
    * ``"job"``: when Ray job ``job`` (hex id) has ended, while Serve keeps running (or at
      shutdown). From a driver ``job`` defaults to the driver's own job; inside a replica
      it must be given (a replica's job is the one that started Serve, which is refused).

    Inside a replica, ``app`` and ``deployment`` default to the replica's own. Survives a
    controller restart in flight: retries until the (restarted) controller accepts the
    registration, or raises ``ControllerUnavailableError`` after ``timeout_s``.
    Registering the same actor again with the same owner is a no-op; with another app or
    deployment owner it adds that owner (the actor is killed when the last of its owners
    is deleted). ``scope="serve"`` leaves a registered actor's owners as they are.

    ``grace_s`` (0 to ``MAX_GRACE_S``, 10 s): when the actor's time comes it is first asked
    to exit gracefully (``__ray_terminate__``: its queued calls, then its
    ``__ray_shutdown__`` hook) and killed only if it is still alive ``grace_s`` later. 0
    (the default) kills at once, as upstream. An actor registered more than once gets the
    largest; a repeat of an owner keeps the grace it was registered with.

    Needs a 0.2.0 controller or later (0.3.0 for a placement group or ``grace_s``): an
    older one refuses the call before registering anything (``ControllerVersionError``).

    Blocks while it waits. In ``async`` code use :func:`register_async`.
    """
    args = register_args(actor, scope, app, deployment, job)
    return _call_controller(
        "serve_cleanup_register", *args, timeout_s=timeout_s, api="register",
        kwargs=_register_kwargs(actor, grace_s, scope == "job" and job is None),
    )


async def register_async(
    actor: Union[ActorHandle, PlacementGroup],
    *,
    scope: Scope = "serve",
    app: Optional[str] = None,
    deployment: Optional[str] = None,
    job: Optional[str] = None,
    grace_s: float = 0.0,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Record:
    """:func:`register` for ``async`` code: the same arguments, result and errors, but
    waiting (also between retries while the controller restarts) never blocks the loop."""
    args = register_args(actor, scope, app, deployment, job)
    return await _call_controller_async(
        "serve_cleanup_register", *args, timeout_s=timeout_s,
        kwargs=_register_kwargs(actor, grace_s, scope == "job" and job is None),
    )


def unregister(
    actor: Union[ActorHandle, PlacementGroup, str],
    *,
    scope: Optional[Scope] = None,
    app: Optional[str] = None,
    deployment: Optional[str] = None,
    job: Optional[str] = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> bool:
    """Remove ``actor``'s registration, or one of its owners (durably), without killing it.

    Accepts an actor handle, a ``PlacementGroup``, an actor id (hex) or ``"pg:<id>"`` (a
    placement group's id; the prefix says the kind). Without ``scope``, removes the whole
    registration. With ``scope="app"`` or ``"deployment"`` (and ``app``/``deployment`` as
    for :func:`register`, defaulting to the replica's own), removes that owner only: the
    actor is still killed when its last remaining owner is deleted, and when none is left
    it stays registered for ``serve.shutdown()``. False if there was nothing to remove.
    Removing one owner needs a 0.2.0 controller or later (``ControllerVersionError``).
    Blocks while it waits; in ``async`` code use :func:`unregister_async`.
    """
    args, kwargs = unregister_args(actor, scope, app, deployment, job)
    return _call_controller("serve_cleanup_unregister", *args, timeout_s=timeout_s, api="unregister",
                            kwargs=kwargs)


async def unregister_async(
    actor: Union[ActorHandle, PlacementGroup, str],
    *,
    scope: Optional[Scope] = None,
    app: Optional[str] = None,
    deployment: Optional[str] = None,
    job: Optional[str] = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> bool:
    """:func:`unregister` for ``async`` code (same arguments, result and errors)."""
    args, kwargs = unregister_args(actor, scope, app, deployment, job)
    return await _call_controller_async("serve_cleanup_unregister", *args, timeout_s=timeout_s, kwargs=kwargs)


def collect(*, dry_run: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
    """Kill registrations whose owner is gone or whose actor is dead (only list them if
    ``dry_run``). Each item is a record as a dict plus ``why`` (and ``outcome``).

    What ``serve-cleanup gc`` runs. Blocks while it waits; in ``async`` code use :func:`collect_async`.
    """
    return _call_controller("serve_cleanup_gc", bool(dry_run), timeout_s=timeout_s, api="collect")


async def collect_async(
    *, dry_run: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S
) -> list[dict[str, Any]]:
    """:func:`collect` for ``async`` code (same arguments, result and errors)."""
    return await _call_controller_async("serve_cleanup_gc", bool(dry_run), timeout_s=timeout_s)


# What serve_cleanup_register is sent beside its arguments: the call shape, which a 0.1.x
# controller refuses (client/protocol.py).
_REGISTER_KWARGS = {"protocol": PROTOCOL}


def _register_kwargs(actor: object, grace_s: object, callers_job: bool = False) -> dict[str, Any]:
    """``_REGISTER_KWARGS``, ``grace_s`` when it is not 0, and ``callers_job`` for a job
    owner that is this driver's own job (running: the controller skips its read of the
    job table, which costs GCS a copy of the whole table). A 0.2.0 controller, which
    takes neither, refuses the call (``ControllerVersionError``)."""
    grace = check_grace(grace_s, KIND_PLACEMENT_GROUP if _ray.is_placement_group(actor) else KIND_ACTOR)
    kwargs = {**_REGISTER_KWARGS, "grace_s": grace} if grace else dict(_REGISTER_KWARGS)
    if callers_job:
        kwargs["callers_job"] = True
    return kwargs


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
    kwargs: Optional[dict[str, Any]] = None,
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
            try:
                ref = getattr(controller, method).remote(*args, **(kwargs or {}))
            except TypeError as e:  # Ray's check against the handle's signatures
                raise older_controller(method, e, raised_by_ray=True, needed=needed_release(kwargs)) or e
            try:
                return (yield _Await(ref, min(remaining, _MAX_WAIT_S)))
            except ray.exceptions.RayTaskError as e:
                cause = e.as_instanceof_cause() if e.cause is None else e.cause
                raise older_controller(method, cause, needed=needed_release(kwargs)) or cause from None
            except _RETRYABLE as e:
                last_error = e
        pause = min(delay, deadline - clock())
        if pause > 0:
            yield _Sleep(pause)
        delay = min(delay * 2, _MAX_DELAY_S)


def _call_controller(
    method: str, *args: Any, timeout_s: float, api: Optional[str] = None,
    kwargs: Optional[dict[str, Any]] = None,
) -> Any:
    """Run ``method`` on the durable controller, blocking, with the shared retry policy."""
    attempts = _attempts(method, args, check_timeout(timeout_s), kwargs=kwargs)
    if api is not None:
        _warn_if_blocking_a_loop(api)
    connect()
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


async def _call_controller_async(
    method: str, *args: Any, timeout_s: float, kwargs: Optional[dict[str, Any]] = None
) -> Any:
    """Run ``method`` on the durable controller without blocking the running loop."""
    attempts = _attempts(method, args, check_timeout(timeout_s), kwargs=kwargs)
    connect()
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
