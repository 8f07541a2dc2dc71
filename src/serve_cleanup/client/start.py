"""Starting Serve with the durable controller (``serve_cleanup.start``)."""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable, Optional

import ray

from serve_cleanup.serve_adapter import _ray
from serve_cleanup.serve_adapter.kv import KvStore
from serve_cleanup.client.controller import connect, controller_kind, find_controller
from serve_cleanup.errors import ControllerUnavailableError, NotDurableControllerError

# How long start() waits for a controller that is shutting down to be gone.
SHUTDOWN_WAIT_S = 60.0

_SWITCH_HINT = (
    "Switch with serve.shutdown() (this deletes your Serve apps) and then "
    "serve_cleanup.start(), and redeploy; or run `serve-cleanup enable` in the head node's "
    "Python environment before `ray start`, so every controller is the durable one."
)
_PLAIN_RUNNING = (
    "a plain Ray Serve controller is already running, so registrations would not "
    "survive a controller restart. " + _SWITCH_HINT
)


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


def start_durable(
    *, say: Optional[Callable[[str], None]] = None,
    waiting: Optional[Callable[[str], None]] = None,
    **serve_start_kwargs: Any,
) -> str:
    """:func:`start`, returning what happened: ``"started"`` or ``"already running"``.

    ``say(message)`` is called for news worth telling a person, ``waiting(what)`` each
    time the call starts waiting for something else (the CLI shows both).
    """
    from ray import serve

    connect()
    _wait_out_shutdown(say, waiting)
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
    from serve_cleanup.serve_adapter.controller import ServeController as DurableServeController

    if waiting is not None:
        waiting("Serve to start (the durable controller and the proxies)")
    try:
        with _ray.durable_controller_factory(DurableServeController):
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


def shutting_down(handle: Optional[_ray.ActorHandle] = None) -> bool:
    """Whether the running Serve controller is in the middle of ``serve.shutdown()``."""
    handle = handle if handle is not None else find_controller()
    if handle is None:
        return False
    if controller_kind(handle) == "durable":
        try:
            return bool(ray.get(handle.serve_cleanup_status.remote(), timeout=10)["shutting_down"])
        except Exception:
            pass  # exiting or restarting: fall back to Serve's own flag
    key = _ray.serve_shutdown_in_progress_key()
    if key is None:  # a Ray without the flag
        return False
    return key.encode() in KvStore(_ray.driver_gcs_client()).get_many([key])


def _wait_out_shutdown(say: Optional[Callable[[str], None]], waiting: Optional[Callable[[str], None]]) -> None:
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
        _ray.controller_logger.warning(f"serve_cleanup: {message}")
    if waiting is not None:
        waiting(f"the Serve controller to finish shutting down (up to {SHUTDOWN_WAIT_S:.0f}s)")
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
