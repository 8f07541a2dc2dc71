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
controller resumes an interrupted                  its own flag (``controller.ShutdownFlag``)
``serve.shutdown()``
``DeploymentStateManager.get_deployment_  2.56     ``get_deployment_infos()`` before 2.56
ids()``
``serve/_private/controller.py`` imports  2.57     nothing (Serve needs ``jinja2``, which
``jinja2`` (via ``haproxy.py``)                    ``ray[serve]`` declares only from 2.60)
========================================  =======  =========================================

Unchanged across the range: the four ``ServeController`` methods and attributes the
durable controller overrides or reads (``shutdown``, ``graceful_shutdown``,
``_register_shutdown_cleanup_actor``, ``_kill_registered_cleanup_actors``,
``done_recovering_event``, ``_shutting_down``, ``kv_store``), the ``GcsClient`` methods
(``[async_]internal_kv_*``, same signatures), ``GlobalStateAccessor.get_actor_info`` and
``get_actor_table``,
``ActorHandle._serialization_helper``/``_deserialization_helper``, the
``core_worker_pb2.ActorHandle`` fields read here (``name``, ``ray_namespace``; 2.57 adds
``actor_generator_backpressure_num_objects``), Serve's constants and KV key layout.

Serve's controller module (``ray.serve._private.controller``, ``api``, ``default_impl``)
is imported only when something needs it (the durable controller, ``start``): replicas
and routers that only register do not pay for it. ``ServeController`` and
``get_controller_impl`` are lazy attributes of this module.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from typing import Any, Iterator, Optional

import ray

from serve_cleanup.serve_adapter.versions import check_ray_version, minor_of
from serve_cleanup.core.ports import LIVE_STATES, ActorInfo

check_ray_version(ray.__version__)

RAY_MINOR = minor_of(ray.__version__) or (0, 0)
# Version-keyed facts (see the table in the module docstring).
HAS_DEPLOYMENT_ACTORS = RAY_MINOR >= (2, 55)
HAS_CONTROLLER_OPTIONS = RAY_MINOR >= (2, 56)
SERVE_RESUMES_SHUTDOWN = RAY_MINOR >= (2, 56)
HAS_GET_DEPLOYMENT_IDS = RAY_MINOR >= (2, 56)

# These imports happen after the version check on purpose: on another Ray they may
# fail with an unhelpful ImportError. None of them imports Serve (``import ray.serve``
# costs about a second, which `serve-cleanup list` and `status` must not pay).
from ray._raylet import GcsClient  # noqa: E402
from ray._private.state import state as _global_state  # noqa: E402
from ray.actor import ActorHandle  # noqa: E402
from ray.core.generated import core_worker_pb2, gcs_pb2  # noqa: E402

# Serve's names, the same in every supported release, written out so that reading the KV
# and the actor table never imports Serve. tests/ray_no_cluster/test_compat.py checks each one
# against the installed Serve (``ray.serve._private.constants``, ``storage.kv_store``).
SERVE_NAMESPACE = "serve"
SERVE_CONTROLLER_NAME = "SERVE_CONTROLLER_ACTOR"
SERVE_LOGGER_NAME = "ray.serve"


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

@functools.lru_cache(maxsize=1)
def _system_name_prefixes() -> tuple[str, ...]:
    from ray.serve._private import constants
    from ray.serve._private.common import REPLICA_ID_FULL_ID_STR_PREFIX

    return (
        constants.SERVE_CONTROLLER_NAME,
        constants.SERVE_PROXY_NAME,
        REPLICA_ID_FULL_ID_STR_PREFIX,
    ) + ((constants.SERVE_DEPLOYMENT_ACTOR_PREFIX,) if HAS_DEPLOYMENT_ACTORS else ())


def is_serve_system_actor(name: str, namespace: str) -> bool:
    """Serve's own actors: the controller, proxies, replicas and controller-managed
    deployment actors (all in namespace ``serve``)."""
    return namespace == SERVE_NAMESPACE and name.startswith(_system_name_prefixes())


def driver_gcs_client() -> GcsClient:
    """The GCS client of this (already connected) driver or worker process."""
    return ray._private.worker.global_worker.gcs_client


# --- actor handles --------------------------------------------------------------------


def require_actor_handle(obj: Any) -> ActorHandle:
    """``obj`` if it is an actor handle; else a ``TypeError`` that says what to pass."""
    if not isinstance(obj, ActorHandle):
        raise TypeError(
            f"expected a Ray ActorHandle, got {type(obj).__name__}; pass the handle "
            "returned by MyActor.remote() or ray.get_actor()."
        )
    return obj


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


def handle_class_module(handle: ActorHandle) -> str:
    """The module of the class the handle's actor was created from (no RPC)."""
    return handle._ray_actor_creation_function_descriptor.module_name


# --- killing an actor by its id alone ---------------------------------------------------
#
# ray.kill needs a handle that this worker's core worker has registered (CoreWorker::
# KillActor refuses an id it holds no handle of), and Ray's Python has no way to get one
# from an id: ray.get_actor goes by name, and CoreWorker.get_actor_handle(id) assumes
# the handle exists (a RAY_CHECK: it would abort the controller process). What ray.kill
# sends in the end is GCS's KillActorViaGcs(actor_id, force_kill, no_restart), which goes
# by id only; serve_cleanup sends that same request itself, on a gRPC channel built the
# way Ray's own Python builds its GCS channels (``init_grpc_channel``: TLS from
# RAY_USE_TLS, the token interceptor when token auth is on). Read from the 2.58.0 and
# 2.60.0 wheels (``ray._private.grpc_utils.init_grpc_channel``, ``gcs_service_pb2``'s
# ``KillActorViaGcsRequest`` fields ``actor_id``, ``force_kill``, ``no_restart``); older
# releases are tried at ``ray._private.utils.init_grpc_channel``, where earlier Rays kept it.


def _init_grpc_channel() -> Any:
    try:
        from ray._private.grpc_utils import init_grpc_channel
    except ImportError:
        from ray._private.utils import init_grpc_channel  # type: ignore[no-redef]
    return init_grpc_channel


KILL_BY_ID_TIMEOUT_S = 10.0


def kill_by_id(actor_id: str, gcs_address: str, timeout_s: float = KILL_BY_ID_TIMEOUT_S) -> bool:
    """``ray.kill(no_restart=True)`` of the actor ``actor_id`` without a handle: GCS's
    ``KillActorViaGcs`` with ``force_kill`` and ``no_restart``, as ray.kill sends it.
    True if GCS accepted it (an id GCS does not know: False). Blocking (one channel per
    call; only a record whose stored value is unreadable, an anonymous actor, comes here)."""
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    channel = _init_grpc_channel()(gcs_address)
    try:
        stub = gcs_service_pb2_grpc.ActorInfoGcsServiceStub(channel)
        reply = stub.KillActorViaGcs(
            gcs_service_pb2.KillActorViaGcsRequest(
                actor_id=bytes.fromhex(actor_id), force_kill=True, no_restart=True
            ),
            timeout=timeout_s,
        )
    finally:
        channel.close()
    return reply.status.code == 0


# --- a graceful exit's process ------------------------------------------------------------
#
# ``__ray_terminate__`` makes the actor exit through ``ray.actor.exit_actor``: Ray marks it
# DEAD in GCS at once, then runs its ``__ray_shutdown__`` hook in the still-running
# process (measured on 2.60: DEAD within 0.1 s, a hook that sleeps keeps the process for
# as long). From then on GCS refuses a kill (``ray.kill``, ``KillActorViaGcs``: the actor
# is dead), so a hook that hangs can only be ended at the process: the actor's core
# worker's own ``KillActor`` RPC (what GCS itself sends to kill an actor; the worker
# checks ``intended_actor_id`` is its own and exits at once, so the call ends with
# UNAVAILABLE). Whether the process has ended is read at its gRPC port: refused once the
# process is gone (a port reused by another worker meanwhile reads as "still running",
# and that worker ignores a KillActor for another actor id).


def process_exited(address: str, timeout_s: float = 0.5) -> bool:
    """Whether nothing answers at ``address`` (``ip:port`` of an actor's worker) any more."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except (ConnectionRefusedError, ValueError):
        return True
    except OSError:
        return False  # unreachable for now (a timeout): not known to have ended
    return False


def kill_worker_process(actor_id: str, address: str, timeout_s: float = 2.0) -> None:
    """The worker at ``address`` ends at once if it runs actor ``actor_id`` (its core
    worker's ``KillActor`` with ``force_kill``). Blocking; never raises for a worker that
    is gone or ends while answering."""
    from ray.core.generated import core_worker_pb2, core_worker_pb2_grpc

    channel = _init_grpc_channel()(address)
    try:
        core_worker_pb2_grpc.CoreWorkerServiceStub(channel).KillActor(
            core_worker_pb2.KillActorRequest(intended_actor_id=bytes.fromhex(actor_id), force_kill=True),
            timeout=timeout_s)
    except Exception:
        pass  # UNAVAILABLE: the worker ended before it answered (or was gone already)
    finally:
        channel.close()


def register_upstream(controller: ActorHandle, actor: ActorHandle) -> Any:
    """Serve's own registration call (``_register_shutdown_cleanup_actor``) on the
    controller ``controller``, as Ray's routers make it; returns its ObjectRef."""
    return controller._register_shutdown_cleanup_actor.remote(actor)


# --- the GCS actor table --------------------------------------------------------------
#
# GCS answers ``GetAllActorInfo`` filtered by actor id by scanning every actor it knows,
# the up to 100,000 dead ones it caches included (7.4 ms with 40,000 dead here, 0.7 ms
# with none), so serve_cleanup never uses it. ``GetActorInfo`` (one id, a hash lookup:
# 0.44-0.57 ms) and ``GetAllActorInfo`` filtered by state (1.0-1.5 ms for the live set)
# are what it asks instead. Ray's Python has them only on the synchronous
# ``GlobalStateAccessor`` (which releases the GIL while it waits): callers run them off
# the event loop.


def state_accessor() -> Any:
    """The global state accessor of this connected process (driver or worker)."""
    return _global_state._connect_and_get_accessor()


def _info_of(entry: Any, state: Optional[str] = None) -> ActorInfo:
    """An ``ActorTableData`` as the core's ``ActorInfo`` (``state``: when the caller
    knows it already)."""
    return ActorInfo(
        actor_id=entry.actor_id.hex(),
        name=entry.name,
        namespace=entry.ray_namespace,
        state=state or gcs_pb2.ActorTableData.ActorState.Name(entry.state),
        address=f"{entry.address.ip_address}:{entry.address.port}" if entry.address.port else "",
    )


def actor_entry(actor_id: str, accessor: Any = None) -> Any:
    """The raw ``ActorTableData`` of ``actor_id`` (None if GCS does not know it): a
    lookup by id. Blocking."""
    data = (accessor or state_accessor()).get_actor_info(actor_id_from_hex(actor_id))
    return None if data is None else gcs_pb2.ActorTableData.FromString(data)


def actor_info(actor_id: str, accessor: Any = None) -> Optional[ActorInfo]:
    """``actor_entry`` as the core's ``ActorInfo``. Blocking."""
    entry = actor_entry(actor_id, accessor)
    return None if entry is None else _info_of(entry)


def actors_in_state(state: str, wanted: "set[str] | frozenset[str]", accessor: Any = None) -> dict[str, ActorInfo]:
    """The entries of the actors of ``wanted`` that are in ``state``, from one read of
    every actor in that state. Blocking."""
    out: dict[str, ActorInfo] = {}
    for data in (accessor or state_accessor()).get_actor_table(None, state.encode()):
        entry = gcs_pb2.ActorTableData.FromString(data)
        if entry.actor_id.hex() in wanted:
            info = _info_of(entry, state)
            out[info.actor_id] = info
    return out


# --- placement groups -------------------------------------------------------------------
#
# A placement group is registered by its id and removed by its id: GCS's
# RemovePlacementGroup, which ``ray.util.remove_placement_group`` sends from any connected
# worker (it also kills the actors scheduled in it). Its table is read like the actor
# table: ``GlobalStateAccessor.get_placement_group_info(id)`` is a lookup by id,
# ``get_placement_group_table()`` one read of every placement group GCS keeps (removed ones
# included, up to GCS's cache of them).


def is_placement_group(obj: Any) -> bool:
    from ray.util.placement_group import PlacementGroup

    return isinstance(obj, PlacementGroup)


def placement_group_id_hex(pg: Any) -> str:
    return pg.id.hex()


def _pg_info_of(entry: Any) -> ActorInfo:
    return ActorInfo(
        actor_id=entry.placement_group_id.hex(),
        name=entry.name,
        namespace=entry.ray_namespace,
        state=gcs_pb2.PlacementGroupTableData.PlacementGroupState.Name(entry.state),
        creator=entry.creator_actor_id.hex() if entry.creator_actor_id else "",
    )


@functools.lru_cache(maxsize=1)
def _serve_pg_prefixes() -> tuple[str, ...]:
    from ray.serve._private import constants
    from ray.serve._private.common import REPLICA_ID_FULL_ID_STR_PREFIX

    gang = getattr(constants, "GANG_PG_NAME_PREFIX", None)
    return (REPLICA_ID_FULL_ID_STR_PREFIX,) + ((gang,) if gang else ())


def is_serve_placement_group_name(name: str) -> bool:
    """Named as Serve names its placement groups: a replica's own (its full replica id,
    ``SERVE_REPLICA::...``), a gang's (``GANG_PG_NAME_PREFIX``, where Serve has gangs)."""
    return bool(name) and name.startswith(_serve_pg_prefixes())


def placement_group_info(pg_id: str, accessor: Any = None) -> Optional[ActorInfo]:
    """What GCS says of the placement group ``pg_id`` (None if it does not know it): a
    lookup by id. Blocking."""
    data = (accessor or state_accessor()).get_placement_group_info(ray.PlacementGroupID(bytes.fromhex(pg_id)))
    return None if data is None else _pg_info_of(gcs_pb2.PlacementGroupTableData.FromString(data))


def placement_groups_in(wanted: "set[str] | frozenset[str]", accessor: Any = None) -> dict[str, ActorInfo]:
    """The entries of the placement groups of ``wanted`` GCS knows, from one read of its
    placement group table. Blocking."""
    out: dict[str, ActorInfo] = {}
    for data in (accessor or state_accessor()).get_placement_group_table():
        entry = gcs_pb2.PlacementGroupTableData.FromString(data)
        pg_id = entry.placement_group_id.hex()
        if pg_id in wanted:
            out[pg_id] = _pg_info_of(entry)
    return out


def remove_placement_group(pg_id: str) -> None:
    """Remove exactly the placement group ``pg_id`` (GCS's RemovePlacementGroup, as
    ``ray.util.remove_placement_group`` sends it). Blocking: one GCS round trip."""
    from ray.util.placement_group import PlacementGroup, remove_placement_group as remove

    remove(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))


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


def serve_shutdown_in_progress_key() -> Optional[str]:
    """The key (below ``kv.PREFIX``) of Serve's own "shutdown in progress" flag (set by
    ``graceful_shutdown``, deleted right before the controller exits); None on a Ray
    without it (before 2.56)."""
    from ray.serve._private import controller as serve_controller

    return getattr(serve_controller, "SHUTDOWN_IN_PROGRESS_KEY", None)


def serve_shutting_down(controller: Any) -> bool:
    return bool(getattr(controller, "_shutting_down", False))


def set_serve_shutting_down(controller: Any) -> None:
    """Make Serve's control loop carry on with a shutdown (a resumed one, before 2.56)."""
    controller._shutting_down = True


def current_job_id() -> str:
    """The hex id of this process's Ray job (a driver's own)."""
    return ray.get_runtime_context().get_job_id()


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


# --- reading the cluster without becoming a Ray driver (`status`, `list`) ----------------
#
# A probe runs every few seconds. `ray.init()` would register a new driver (a job and a
# core worker) each time, and start a new local Ray where it finds none; Ray's own
# `ray status` instead talks to GCS with a bare client, and so do these. GCS is reached
# at the address Ray's CLIs resolve; the cluster's auth token is sent when one is found
# (see ``use_cluster_token``).


def resolve_gcs_address(address: Optional[str]) -> Optional[str]:
    """``host:port`` of the GCS that ``address`` names, resolved as Ray's CLIs do: the
    address itself, or for ``"auto"``/None ``RAY_ADDRESS`` and then the latest
    ``ray start`` on this machine (``<temp dir>/ray_current_cluster``). None if nothing is
    found; ``ValueError`` for an address that is not ``host:port``."""
    from ray._private.services import canonicalize_bootstrap_address

    return canonicalize_bootstrap_address(address or "auto")


def use_cluster_token() -> None:
    """Send the cluster's auth token if this machine has one (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, where ``ray start --head`` writes it)
    and ``RAY_AUTH_MODE`` does not say otherwise: what ``ray.init`` does when it joins a
    cluster. Without it a bare GCS client sends no token (Ray 2.60's CLIs need
    ``RAY_AUTH_MODE=token`` for that)."""
    try:
        from ray._private.authentication import authentication_token_setup as setup
    except ImportError:  # a Ray without token authentication
        return
    if not hasattr(setup, "maybe_enable_token_auth_if_token_available"):
        # Before 2.60 token authentication is on only where RAY_AUTH_MODE=token is set,
        # and then Ray's GCS client reads the token itself: nothing to enable here.
        return
    # It logs a WARNING that token authentication is on; a probe prints nothing of Ray's.
    log = logging.getLogger(setup.__name__)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        log.setLevel(level)


def bare_gcs_client(gcs_address: str) -> GcsClient:
    return GcsClient(address=gcs_address)


def bare_state_accessor(gcs_address: str) -> Any:
    """A connected state accessor (actor table reads) without a driver."""
    from ray._raylet import GcsClientOptions, GlobalStateAccessor

    accessor = GlobalStateAccessor(
        GcsClientOptions.create(gcs_address, None, allow_cluster_id_nil=True, fetch_cluster_id_if_nil=False)
    )
    if not accessor.connect():
        raise ConnectionError(f"could not connect to GCS at {gcs_address}")
    return accessor


def named_actor_entry(name: str, namespace: str, accessor: Any) -> Optional[Any]:
    """The raw ``ActorTableData`` of the live actor ``namespace/name``, or None: one read
    of the actors in each live state (ALIVE first), never of the dead ones. Blocking."""
    for state in ("ALIVE",) + tuple(s for s in LIVE_STATES if s != "ALIVE"):
        for data in accessor.get_actor_table(None, state.encode()):
            entry = gcs_pb2.ActorTableData.FromString(data)
            if entry.name == name and entry.ray_namespace == namespace:
                return entry
    return None


def entry_facts(entry: Any) -> dict[str, Any]:
    """What an ``ActorTableData`` says about the actor's class and process."""
    return {
        "state": gcs_pb2.ActorTableData.ActorState.Name(entry.state),
        "module": entry.function_descriptor.python_function_descriptor.module_name,
        "class_name": entry.class_name,
        "repr_name": entry.repr_name,
        "pid": entry.pid,
        "num_restarts": entry.num_restarts,
    }


def forget_serve_client() -> None:
    """Drop this process's cached Serve client, as ``serve.shutdown()`` does at its end,
    so a later ``serve.*`` call looks the controller up again. Imports nothing new."""
    import sys

    context = sys.modules.get("ray.serve.context")
    if context is not None:
        context._set_global_client(None)
