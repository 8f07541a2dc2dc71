"""Every private Ray symbol serve_cleanup touches, in one place.

A Ray upgrade should be one diff to this module plus a run of the test suite. Nothing
else in the package imports from ``ray._private``, ``ray._raylet``, ``ray.core`` or
``ray.serve._private``.

Supported: ``ray[serve]>=2.54.0,<2.61`` (2.54.0 is the first release with Serve's
``_register_shutdown_cleanup_actor``). What differs between those releases, read from
the published wheels (2.54.0, 2.55.0, 2.56.0, 2.57.0, 2.60.0) and used below:

========================================  =======  =========================================
difference                                since    what this module does about it
========================================  =======  =========================================
controller-managed deployment actors      2.55     their name prefix is a Serve system-actor
(``SERVE_DEPLOYMENT_ACTOR_PREFIX``)                prefix only where it exists
``default_impl.get_controller_impl(        2.56     called without arguments before 2.56
controller_options=)``; ``serve.start(              (Serve then ignores ``controller_options``)
controller_options=)``
``SHUTDOWN_IN_PROGRESS_KEY``: a restarted  2.56     before 2.56 the durable controller keeps
controller resumes an interrupted                  its own flag (``persist_shutdown_flag``,
``serve.shutdown()``                               ``resume_interrupted_shutdown``)
``DeploymentStateManager.get_deployment_  2.56     ``get_deployment_infos()`` before 2.56
ids()``
``serve/_private/controller.py`` imports  2.57     nothing (Serve needs ``jinja2``, which
``jinja2`` (via ``haproxy.py``)                    ``ray[serve]`` declares only from 2.60)
========================================  =======  =========================================

Unchanged across the range: the four ``ServeController`` methods and attributes the
durable controller overrides or reads (``shutdown``, ``graceful_shutdown``,
``_register_shutdown_cleanup_actor``, ``_kill_registered_cleanup_actors``,
``done_recovering_event``, ``_shutting_down``, ``kv_store``), the ``GcsClient`` methods
(``async_get_all_actor_info``, ``[async_]internal_kv_*``, same signatures),
``ActorHandle._serialization_helper``/``_deserialization_helper``, the
``core_worker_pb2.ActorHandle`` fields read here (``name``, ``ray_namespace``; 2.57 adds
``actor_generator_backpressure_num_objects``), Serve's constants and KV key layout.

Serve's controller module (``ray.serve._private.controller``, ``api``, ``default_impl``)
is imported only when something needs it (the durable controller, ``start``): replicas
and routers that only register do not pay for it. ``ServeController`` and
``get_controller_impl`` are lazy attributes of this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any, Iterator, Optional

import ray
from packaging.version import Version

from serve_cleanup.errors import UnsupportedRayVersionError
from serve_cleanup.ports import ActorInfo

SUPPORTED_RAY = ">=2.54.0,<2.61"
_OLDEST, _NEWEST = (2, 54), (2, 60)  # minor releases, both included


def _minor(version: str) -> tuple[int, int]:
    release = Version(version).release
    return (release[0], release[1] if len(release) > 1 else 0)


def check_ray_version(version: str = ray.__version__) -> None:
    """Fail with a clear message on a Ray we have not tested against.

    Compared by minor release, so a pre-release of an unsupported minor (``2.61.0rc1``,
    nightly ``3.0.0.dev0``) is refused too.
    """
    try:
        minor = _minor(version)
    except Exception:
        minor = (0, 0)
    if not (_OLDEST <= minor <= _NEWEST):
        raise UnsupportedRayVersionError(
            f"serve_cleanup supports ray[serve]{SUPPORTED_RAY}, but ray {version} is "
            f"installed. It subclasses Serve's controller, so other versions are not "
            f'safe. Install a supported Ray: pip install "ray[serve]{SUPPORTED_RAY}".'
        )


check_ray_version()

RAY_MINOR = _minor(ray.__version__)
# Version-keyed facts (see the table in the module docstring).
HAS_DEPLOYMENT_ACTORS = RAY_MINOR >= (2, 55)
HAS_CONTROLLER_OPTIONS = RAY_MINOR >= (2, 56)
SERVE_RESUMES_SHUTDOWN = RAY_MINOR >= (2, 56)
HAS_GET_DEPLOYMENT_IDS = RAY_MINOR >= (2, 56)

# These imports happen after the version check on purpose: on another Ray they may
# fail with an unhelpful ImportError. None of them loads Serve's controller module.
from ray._raylet import GcsClient  # noqa: E402
from ray.actor import ActorHandle  # noqa: E402
from ray.core.generated import core_worker_pb2, gcs_pb2  # noqa: E402
from ray.serve._private import constants as _serve_constants  # noqa: E402
from ray.serve._private.common import REPLICA_ID_FULL_ID_STR_PREFIX  # noqa: E402
from ray.serve._private.constants import (  # noqa: E402
    SERVE_CONTROLLER_NAME,
    SERVE_LOGGER_NAME,
    SERVE_NAMESPACE,
    SERVE_PROXY_NAME,
)
from ray.serve._private.storage.kv_store import (  # noqa: E402
    SERVE_INTERNAL_KV_NAMESPACE,  # noqa: F401 (re-export)
    get_storage_key,
)


def __getattr__(name: str) -> Any:
    """``ServeController`` and ``get_controller_impl``, imported on first use (PEP 562)."""
    if name == "ServeController":
        from ray.serve._private.controller import ServeController

        return ServeController
    if name == "get_controller_impl":
        from ray.serve._private.default_impl import get_controller_impl

        return get_controller_impl
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Serve's controller logger: records logged here land in the controller log users read.
controller_logger = logging.getLogger(SERVE_LOGGER_NAME)

_SYSTEM_NAME_PREFIXES: tuple[str, ...] = (
    SERVE_CONTROLLER_NAME,
    SERVE_PROXY_NAME,
    REPLICA_ID_FULL_ID_STR_PREFIX,
) + ((_serve_constants.SERVE_DEPLOYMENT_ACTOR_PREFIX,) if HAS_DEPLOYMENT_ACTORS else ())


def is_serve_system_actor(name: str, namespace: str) -> bool:
    """Serve's own actors: the controller, proxies, replicas and controller-managed
    deployment actors (all in namespace ``serve``)."""
    return namespace == SERVE_NAMESPACE and name.startswith(_SYSTEM_NAME_PREFIXES)


def serve_kv_key_prefix() -> str:
    """The fixed prefix before every key serve_cleanup stores (``ray-serve-serve-``).

    It is the prefix Serve's own ``RayInternalKVStore`` uses when the job that started
    Serve runs in Ray namespace ``serve``. Serve's prefix is really
    ``ray-serve-<namespace of that job>`` (checked on 2.54: a driver in namespace ``dbg``
    gave a controller whose ``kv_store`` did not see a key written here), so serve_cleanup
    never relies on the two being equal: it reads and writes its own keys only here.
    """
    return get_storage_key(f"ray-serve-{SERVE_NAMESPACE}", "")


def driver_gcs_client() -> GcsClient:
    """The GCS client of this (already connected) driver or worker process."""
    return ray._private.worker.global_worker.gcs_client


# --- actor handles --------------------------------------------------------------------


def handle_to_bytes(handle: ActorHandle) -> bytes:
    """Ray's own (non-pickle) serialization of an actor handle.

    A later process rebuilds a working handle from these bytes with
    :func:`handle_from_bytes`, which is how an anonymous actor is reached again.
    """
    state = handle._serialization_helper()
    return state[0]


def handle_from_bytes(data: bytes) -> ActorHandle:
    return ActorHandle._deserialization_helper(data, False)


def actor_id_hex(handle: ActorHandle) -> str:
    return handle._actor_id.hex()


def actor_id_from_hex(actor_id: str) -> Any:
    return ray.ActorID(bytes.fromhex(actor_id))


def handle_name_namespace(data: bytes) -> tuple[str, str]:
    """Name and namespace written into a serialized handle (empty name if anonymous)."""
    proto = core_worker_pb2.ActorHandle()
    proto.ParseFromString(data)
    return proto.name, proto.ray_namespace


def handle_has_method(handle: ActorHandle, method: str) -> bool:
    """Whether the actor's class defines ``method`` (from the handle's own method table)."""
    return method in handle._ray_method_signatures


# --- the GCS actor table --------------------------------------------------------------


def parse_actor_table_entry(entry: Any) -> ActorInfo:
    return ActorInfo(
        actor_id=entry.actor_id.hex(),
        name=entry.name,
        namespace=entry.ray_namespace,
        state=gcs_pb2.ActorTableData.ActorState.Name(entry.state),
        node_id=entry.address.node_id.hex(),
        num_restarts=entry.num_restarts,
    )


async def lookup_actor(gcs: GcsClient, actor_id: str, timeout_s: float) -> Optional[ActorInfo]:
    """The actor table entry for ``actor_id`` (None if GCS does not know it)."""
    found = await gcs.async_get_all_actor_info(
        actor_id=actor_id_from_hex(actor_id), timeout=timeout_s
    )
    for entry in found.values():
        return parse_actor_table_entry(entry)
    return None


async def all_actors(gcs: GcsClient, timeout_s: float) -> dict[str, ActorInfo]:
    """The whole actor table in one read, by actor id."""
    found = await gcs.async_get_all_actor_info(timeout=timeout_s)
    # Parsing is ~34 us an entry: off the event loop (a worker thread) for large tables.
    return await asyncio.to_thread(
        lambda: {info.actor_id: info for info in map(parse_actor_table_entry, found.values())}
    )


def lookup_actor_sync(gcs: GcsClient, actor_id: str, timeout_s: float) -> Optional[ActorInfo]:
    """Blocking twin of :func:`lookup_actor`, for drivers and the CLI."""
    import asyncio

    async def _one() -> Optional[ActorInfo]:
        return await lookup_actor(gcs, actor_id, timeout_s)

    return asyncio.run(_one())


# --- what the controller knows about apps and deployments ------------------------------


def live_owners(controller: Any, apps: set[str]) -> tuple[set[str], set[tuple[str, str]]]:
    """Of ``apps``, those Serve still has; and every (app, deployment) Serve still has.

    An app or deployment that is being deleted still counts until Serve removed it.
    """
    asm = controller.application_state_manager
    live_apps = {a for a in apps if asm.does_app_exist(a)}
    dsm = controller.deployment_state_manager
    ids = dsm.get_deployment_ids() if HAS_GET_DEPLOYMENT_IDS else dsm.get_deployment_infos()
    live_deployments = {(d.app_name, d.name) for d in ids}
    return live_apps, live_deployments


def serve_done_recovering(controller: Any) -> bool:
    return controller.done_recovering_event.is_set()


def serve_shutdown_in_progress(gcs: GcsClient) -> bool:
    """Serve's own "shutdown in progress" flag in the KV (set by ``graceful_shutdown``,
    deleted right before the controller exits), read from outside the controller."""
    from ray.serve._private import controller as serve_controller

    key = getattr(serve_controller, "SHUTDOWN_IN_PROGRESS_KEY", None)
    if key is None:  # a Ray without the flag
        return False
    full = (serve_kv_key_prefix() + key).encode()
    found = gcs.internal_kv_multi_get([full], SERVE_INTERNAL_KV_NAMESPACE, timeout=10)
    return full in found


def serve_shutting_down(controller: Any) -> bool:
    return bool(getattr(controller, "_shutting_down", False))


# --- resuming an interrupted serve.shutdown() before Ray 2.56 ---------------------------
#
# From 2.56 Serve persists SHUTDOWN_IN_PROGRESS_KEY when a shutdown starts, and a
# restarted controller resumes the shutdown. Before 2.56 it does not: a controller that
# crashed mid-shutdown comes back as a running Serve (with its checkpoints already
# deleted), and only a retry of the caller's in-flight ``graceful_shutdown`` call (the
# controller runs with max_task_retries=-1) starts the shutdown again. A caller that is
# gone, or a ``graceful_shutdown(wait=False)``, leaves Serve running and the registered
# actors alive. On those releases the durable controller keeps its own flag: written on
# the first shutdown tick (before Serve deletes any checkpoint), read at the end of
# ``__init__``. Its value is the controller's actor id, so only a restart of the same
# actor resumes; a flag a dead controller left behind is deleted by the next one.

SHUTDOWN_FLAG_KEY = "serve-cleanup-shutdown-in-progress"
# Stored beside the records, under the fixed prefix the records use, through the GCS
# client. Not through Serve's ``controller.kv_store``: its key prefix is
# ``ray-serve-<namespace of the job that started Serve>``, which differs between
# clusters and cannot be written from outside without knowing that job.
_FLAG_TIMEOUT_S = 10.0


def _shutdown_flag_key() -> bytes:
    return (serve_kv_key_prefix() + SHUTDOWN_FLAG_KEY).encode()


def persist_shutdown_flag(controller: Any) -> None:
    """Call at the top of ``shutdown()``, on every tick. A no-op from Ray 2.56 and
    while Serve is not shutting down. Never raises (retried on the next tick)."""
    if SERVE_RESUMES_SHUTDOWN or not serve_shutting_down(controller):
        return
    if getattr(controller, "_sc_shutdown_flag_written", False):
        return
    try:
        own_id = ray.get_runtime_context().get_actor_id()
        controller.gcs_client.internal_kv_put(
            _shutdown_flag_key(), own_id.encode(), True, SERVE_INTERNAL_KV_NAMESPACE,
            timeout=_FLAG_TIMEOUT_S,
        )
        controller._sc_shutdown_flag_written = True
    except Exception as e:
        controller_logger.warning(
            f"serve_cleanup: could not persist the shutdown flag ({e!r}); retrying on the "
            "next control-loop tick."
        )


def resume_interrupted_shutdown(controller: Any) -> bool:
    """Call at the end of ``__init__`` (after Serve's own, before the first control-loop
    tick). Before Ray 2.56: if this controller actor was shutting down when it crashed,
    shut down again; True if so. A no-op from 2.56 (Serve does it). Never raises."""
    if SERVE_RESUMES_SHUTDOWN:
        return False
    try:
        own_id = ray.get_runtime_context().get_actor_id()
        gcs = controller.gcs_client
        flag = gcs.internal_kv_get(
            _shutdown_flag_key(), SERVE_INTERNAL_KV_NAMESPACE, timeout=_FLAG_TIMEOUT_S
        )
        if flag is None:
            return False
        if flag.decode(errors="replace") != own_id:  # left by an earlier controller
            gcs.internal_kv_del(
                _shutdown_flag_key(), False, SERVE_INTERNAL_KV_NAMESPACE, timeout=_FLAG_TIMEOUT_S
            )
            return False
    except Exception as e:
        controller_logger.error(
            f"serve_cleanup: could not read the shutdown flag ({e!r}); if this controller "
            "was restarted in the middle of serve.shutdown(), call serve.shutdown() again."
        )
        return False
    controller._shutting_down = True
    controller._sc_shutdown_flag_written = True
    controller_logger.warning(
        "serve_cleanup: this controller was restarted in the middle of serve.shutdown(); "
        f"resuming the shutdown (Ray {ray.__version__} does not do it by itself before 2.56)."
    )
    return True


def replica_owner() -> Optional[tuple[str, str]]:
    """(app, deployment) of the replica this code runs in, or None outside a replica."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        ctx = serve.get_replica_context()
    except RayServeException:
        return None
    return ctx.app_name, ctx.deployment


# --- building and starting the controller ---------------------------------------------


def make_controller_actor_class(cls: type, controller_options: Any = None) -> Any:
    """Make ``cls`` (a ServeController subclass) an actor with Ray's own controller options.

    The options come from ``get_controller_impl()``, so name, namespace, restart policy,
    head-node resource and concurrency stay exactly what this Ray version uses.
    """
    from ray.serve._private.default_impl import get_controller_impl

    if HAS_CONTROLLER_OPTIONS:
        upstream = get_controller_impl(controller_options=controller_options)
    else:  # before 2.56: no argument (and Serve has no controller_options to pass)
        upstream = get_controller_impl()
    return ray.remote(**upstream._default_options)(cls)


_factory_lock = threading.Lock()


@contextlib.contextmanager
def durable_controller_factory(cls: type) -> Iterator[None]:
    """While active, Serve's own start path (``serve.start``) creates ``cls``.

    ``ray.serve._private.api`` imports ``get_controller_impl`` by name; we swap that name
    in this driver process only, so everything else Serve does on start (argument
    validation, proxy readiness, the global client) runs unchanged. The controller
    process itself is never patched.
    """
    from ray.serve._private import api as _serve_private_api

    with _factory_lock:
        original = _serve_private_api.get_controller_impl

        def factory(controller_options: Any = None) -> Any:
            return make_controller_actor_class(cls, controller_options)

        _serve_private_api.get_controller_impl = factory
        try:
            yield
        finally:
            _serve_private_api.get_controller_impl = original
