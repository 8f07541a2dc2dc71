"""Every private Ray symbol serve_cleanup touches, in one place.

A Ray upgrade should be one diff to this module plus a run of the test suite. Nothing
else in the package imports from ``ray._private``, ``ray._raylet``, ``ray.core`` or
``ray.serve._private``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import ray
from packaging.version import Version

from serve_cleanup.errors import UnsupportedRayVersionError

SUPPORTED_RAY = ">=2.60.0,<2.61"
_MIN, _MAX = Version("2.60.0"), Version("2.61")


def check_ray_version(version: str = ray.__version__) -> None:
    """Fail with a clear message on a Ray we have not tested against."""
    v = Version(version)
    if not (_MIN <= v < _MAX):
        raise UnsupportedRayVersionError(
            f"serve_cleanup supports ray[serve]{SUPPORTED_RAY}, but ray {version} is "
            f"installed. It subclasses Serve's controller, so other versions are not "
            f'safe. Install a supported Ray: pip install "ray[serve]{SUPPORTED_RAY}".'
        )


check_ray_version()

# These imports happen after the version check on purpose: on another Ray they may
# fail with an unhelpful ImportError.
from ray._raylet import GcsClient  # noqa: E402
from ray.actor import ActorHandle  # noqa: E402
from ray.core.generated import core_worker_pb2, gcs_pb2  # noqa: E402
from ray.serve._private import api as _serve_private_api  # noqa: E402
from ray.serve._private.common import REPLICA_ID_FULL_ID_STR_PREFIX  # noqa: E402
from ray.serve._private.constants import (  # noqa: E402
    SERVE_CONTROLLER_NAME,
    SERVE_DEPLOYMENT_ACTOR_PREFIX,
    SERVE_LOGGER_NAME,
    SERVE_NAMESPACE,
    SERVE_PROXY_NAME,
)
from ray.serve._private.controller import ServeController  # noqa: E402, F401 (re-export)
from ray.serve._private.default_impl import get_controller_impl  # noqa: E402
from ray.serve._private.storage.kv_store import (  # noqa: E402
    SERVE_INTERNAL_KV_NAMESPACE,  # noqa: F401 (re-export)
    get_storage_key,
)

# Serve's controller logger: records logged here land in the controller log users read.
controller_logger = logging.getLogger(SERVE_LOGGER_NAME)

_SYSTEM_NAME_PREFIXES = (
    SERVE_CONTROLLER_NAME,
    SERVE_PROXY_NAME,
    REPLICA_ID_FULL_ID_STR_PREFIX,
    SERVE_DEPLOYMENT_ACTOR_PREFIX,
)


def is_serve_system_actor(name: str, namespace: str) -> bool:
    """Serve's own actors: the controller, proxies, replicas and controller-managed
    deployment actors (all in namespace ``serve``)."""
    return namespace == SERVE_NAMESPACE and name.startswith(_SYSTEM_NAME_PREFIXES)


def serve_kv_key_prefix() -> str:
    """The prefix Serve's own ``RayInternalKVStore`` puts before every key.

    Serve's controller always runs in namespace ``serve``, so its KV store namespace is
    ``ray-serve-serve`` and a checkpoint key ``k`` is stored as ``ray-serve-serve-k``.
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


@dataclass(frozen=True)
class ActorInfo:
    """What the GCS actor table says about one actor id."""

    actor_id: str
    name: str
    namespace: str
    state: str  # DEPENDENCIES_UNREADY, PENDING_CREATION, ALIVE, RESTARTING, DEAD
    node_id: str
    num_restarts: int = 0

    @property
    def dead(self) -> bool:
        return self.state == "DEAD"


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
    live_deployments = {
        (d.app_name, d.name) for d in controller.deployment_state_manager.get_deployment_ids()
    }
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
    upstream = get_controller_impl(controller_options=controller_options)
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
    with _factory_lock:
        original = _serve_private_api.get_controller_impl

        def factory(controller_options: Any = None) -> Any:
            return make_controller_actor_class(cls, controller_options)

        _serve_private_api.get_controller_impl = factory
        try:
            yield
        finally:
            _serve_private_api.get_controller_impl = original
