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
from serve_cleanup.controller import DurableServeController
from serve_cleanup.errors import ControllerUnavailableError, NotDurableControllerError
from serve_cleanup.records import Record
from serve_cleanup.registry import Registry
from serve_cleanup.store import GcsRecordStore

DEFAULT_TIMEOUT_S = 60.0
_DURABLE_CLASS = DurableServeController.__name__


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
    """``"durable"``, ``"plain"`` (upstream Serve) or ``"none"``."""
    handle = handle if handle is not None else find_controller()
    if handle is None:
        return "none"
    return "durable" if _compat.handle_class_name(handle) == _DURABLE_CLASS else "plain"


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
    with _compat.durable_controller_factory(DurableServeController):
        serve.start(**serve_start_kwargs)


def register(
    actor: Any,
    *,
    scope: str = records.SCOPE_SERVE,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Record:
    """Register ``actor`` to be killed when Serve shuts down. Durable when it returns.

    Survives a controller restart in flight: retries until the (restarted) controller
    accepts the registration, or raises ``ControllerUnavailableError`` after
    ``timeout_s``. Registering the same actor again is a no-op.
    """
    if not isinstance(actor, _compat.ActorHandle):
        raise TypeError(
            f"expected a Ray ActorHandle, got {type(actor).__name__}; pass the handle "
            "returned by MyActor.remote() or ray.get_actor()."
        )
    if scope != records.SCOPE_SERVE:
        raise ValueError(f"unsupported scope {scope!r}; this version supports 'serve'.")
    return _call_controller("serve_cleanup_register", actor, scope, timeout_s=timeout_s)


def _call_controller(method: str, *args: Any, timeout_s: float) -> Any:
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
    _connect()
    registry = Registry(GcsRecordStore(_compat.driver_gcs_client()))
    registry.load()
    return sorted(registry.records(), key=lambda r: (r.registered_at, r.actor_id))
