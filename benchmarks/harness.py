"""Shared plumbing: the cluster, each kind of Serve, actors, records, stats.

The ONE module of ``benchmarks`` that imports serve_cleanup. What the benchmarks use of it:

* the public API (``serve_cleanup.start``, ``register``, ``unregister``,
  ``controller_kind``), and the durable controller's remote ``serve_cleanup_status``;
* the GCS KV through the package's one store (``serve_adapter.kv``: ``KvStore`` and its
  awaitable face ``.aio``; keys below its prefix) and the record keys of ``core.records``
  (``KEY_PREFIX``, ``pair_key``, ``record_key``, ``encode``, ``encode_v1``): records are
  seeded, counted and purged, and the probes put, through it, so no module of
  ``benchmarks`` composes a KV key or names the KV namespace. Records are seeded in the
  layout the package writes today, records v2 (one key per (actor, owner) pair, the
  value through ``records.encode``; ``record_items``), or with ``layout=V1`` in 0.1.0's
  layout (one key per actor, ``records.encode_v1``) for the figures of an upgrade, which
  are reported apart. These imports need a serve_cleanup that has both modules and
  records v2: to measure older code, run the benchmarks of its own time (as issue 14's
  "before" run did: c39582f, raw GCS KV calls; before records v2 they seed v1);
* ``internals()``: private modules, for ``benchmarks.micro`` and
  ``benchmarks.memory_per_record`` only. When the package is restructured, fix the
  imports here and in ``internals()``.

Everything else is Ray (its private GCS client and protos included).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterable, Optional, Sequence

import psutil
import ray
from ray import cloudpickle, serve
from ray.core.generated import core_worker_pb2, gcs_pb2
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

import serve_cleanup
import serve_cleanup.errors
from serve_cleanup.core import records
from serve_cleanup.serve_adapter.kv import KvStore, full_key
from serve_cleanup.serve_adapter.kv import NAMESPACE as _KV_NAMESPACE

PLAIN, DURABLE = "plain", "durable"

# The layouts a seeder writes (serve_cleanup's records module docstring, "Version history"):
# V2, one key per (actor, owner) pair, is what the package writes; V1 is 0.1.0's, one key
# per actor, for the upgrade figure (issue 21, row 7).
V1, V2 = "v1", "v2"
LAYOUTS = (V2, V1)
# Keys the probes put (below the store's prefix, like every key of the package; never
# under records.KEY_PREFIX, so they are never taken for records).
PROBE_KEY_PREFIX = "serve-cleanup-bench-"
KV_TIMEOUT_S = 60.0

NEVER_RESOURCE = "serve_cleanup_bench_never"  # no node has it
BENCH_NAMESPACE = "serve-cleanup-bench"

# Workers need not import the benchmarks package: ship this module's classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def internals() -> SimpleNamespace:
    """serve_cleanup's private modules (``benchmarks.micro`` and ``benchmarks.memory_per_record``
    only). Fix moves here."""
    from serve_cleanup.core import registry
    from serve_cleanup.serve_adapter import _ray

    return SimpleNamespace(ray_side=_ray, records=records, registry=registry)


def probe_key(name: str) -> str:
    """A probe's KV key (below the store's prefix), e.g. ``probe_key("micro")``."""
    return PROBE_KEY_PREFIX + name


def stored_layout() -> str:
    """How a record is stored, for report text: its whole KV key and the namespace."""
    fields = ("<id hex>", records.KEY_VERSION, records.KIND_ACTOR, "<scope>", "<app>", "<deployment>",
              "<time µs>", "<name>", "<namespace>")
    key = full_key(records.KEY_PREFIX + records.SEP.join(fields)).decode()
    return f"key `{key}` per (actor, owner) pair, KV namespace `{_KV_NAMESPACE.decode()}`"


def package_commit() -> str:
    """Which serve_cleanup this process imported: the HEAD of its checkout, and the last
    commit that changed its package directory ("-dirty": uncommitted changes there), e.g.
    ``c39582f (src 2ad1c19)``: a benchmarks-only commit on top of 2ad1c19's code."""
    src = Path(serve_cleanup.__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        last = git("log", "-1", "--format=%h", "--", ".")
        dirty = "-dirty" if git("status", "--porcelain", "--", ".") else ""
        return f"{head} (src {last}{dirty})"
    except Exception:
        return "unknown"


def package_dir() -> str:
    return str(Path(serve_cleanup.__file__).resolve().parent)


# --- actors --------------------------------------------------------------------------


@ray.remote(num_cpus=0)
class BenchActor:
    """A real actor: one worker process (~100 MB here)."""

    def ping(self) -> int:
        return 1


@ray.remote(num_cpus=0, resources={NEVER_RESOURCE: 1})
class PendingActor:
    """Never scheduled: PENDING_CREATION in the actor table (live, killable), no process."""


@serve.deployment(ray_actor_options={"num_cpus": 0})
class BenchApp:
    def __call__(self) -> str:
        return "ok"


def pending_actors(n: int, named: bool = True) -> list:
    """Detached named actors (with a namespace) or anonymous ones, all PENDING_CREATION."""
    if not named:
        return [PendingActor.remote() for _ in range(n)]
    tag = os.urandom(4).hex()
    return [PendingActor.options(lifetime="detached", name=f"pending-{tag}-{i}",
                                 namespace=BENCH_NAMESPACE).remote() for i in range(n)]


def pending_placement_groups(n: int, named: Optional[bool] = None) -> list:
    """``n`` placement groups of one bundle asking for a resource no node has: PENDING in
    the placement group table (live, removable), no CPU reserved. ``named``: each with a
    name of its own (a tag), or none; None: half and half. ``placement_group()`` is a
    synchronous GCS call: GCS knows each one when it returns."""
    from ray.util.placement_group import placement_group

    tag = os.urandom(4).hex()

    def name(i: int) -> str:
        return f"pending-pg-{tag}-{i}" if (i % 2 == 0 if named is None else named) else ""

    return [placement_group([{NEVER_RESOURCE: 1}], name=name(i)) for i in range(n)]


def placement_group_states(pg_ids: Iterable[str]) -> dict[str, str]:
    """The state (``PENDING``, ``CREATED``, ``REMOVED``, ...) of each of ``pg_ids`` GCS
    knows: one read of its placement group table (removed ones included)."""
    wanted = set(pg_ids)
    names = gcs_pb2.PlacementGroupTableData.PlacementGroupState.Name
    out: dict[str, str] = {}
    for data in state_accessor().get_placement_group_table():
        entry = gcs_pb2.PlacementGroupTableData.FromString(data)
        pg_id = entry.placement_group_id.hex()
        if pg_id in wanted:
            out[pg_id] = names(entry.state)
    return out


def placement_group_count() -> int:
    """Placement groups GCS's table holds, removed ones included (no parsing)."""
    return len(state_accessor().get_placement_group_table())


def not_removed(pg_ids: Sequence[str]) -> int:
    """How many of ``pg_ids`` are not REMOVED (one GCS does not know counts too)."""
    states = placement_group_states(pg_ids)
    return sum(1 for i in pg_ids if states.get(i) != "REMOVED")


def remove_placement_groups(pgs: Iterable, wait_s: float = 120.0) -> None:
    """Remove every one of ``pgs`` not removed yet and wait until GCS says REMOVED."""
    from ray.util.placement_group import remove_placement_group

    pgs = list(pgs)
    ids = [pg.id.hex() for pg in pgs]
    states = placement_group_states(ids)
    for pg, pg_id in zip(pgs, ids):
        if states.get(pg_id) != "REMOVED":
            try:
                remove_placement_group(pg)
            except Exception:
                pass
    wait_for(lambda: not_removed(ids) == 0, wait_s, "the placement groups to be REMOVED", every_s=0.1)


def make_actors(n: int) -> list:
    """``n`` real detached actors, started."""
    actors = [BenchActor.options(lifetime="detached").remote() for _ in range(n)]
    ray.get([a.ping.remote() for a in actors])
    return actors


def kill_actors(actors: Iterable) -> None:
    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:
            pass


def make_dead_actors(n: int, batch: int = 2000) -> float:
    """Add ``n`` dead actors to GCS's cache (created PENDING and killed: no process);
    waits until GCS has processed every kill. Returns seconds."""
    started = time.perf_counter()
    while n > 0:
        group = [PendingActor.remote() for _ in range(min(batch, n))]
        for a in group:
            ray.kill(a, no_restart=True)
        n -= len(group)
        del group
    wait_for(lambda: count_actors("PENDING_CREATION") == 0 and count_actors("DEPENDENCIES_UNREADY") == 0,
             300, "GCS to process the kills")
    return time.perf_counter() - started


def handle_bytes(actor) -> bytes:
    """Ray's own serialization of a handle (what the durable controller stores)."""
    return actor._serialization_helper()[0]


def handle_like(template: bytes, actor_id: bytes, name: str = "", namespace: str = "") -> bytes:
    """``template`` (a real serialized handle) with another actor id, name and namespace."""
    proto = core_worker_pb2.ActorHandle()
    proto.ParseFromString(template)
    proto.actor_id = actor_id
    proto.name = name
    proto.ray_namespace = namespace
    return proto.SerializeToString()


def handle_name_namespace(data: bytes) -> tuple[str, str]:
    proto = core_worker_pb2.ActorHandle()
    proto.ParseFromString(data)
    return proto.name, proto.ray_namespace


def unknown_actor_id() -> bytes:
    """An id shaped like this job's actor ids (12 unique bytes + the job id) that GCS never knew."""
    return os.urandom(12) + bytes.fromhex(ray.get_runtime_context().get_job_id())


# --- the cluster ---------------------------------------------------------------------


_cluster = {"address": None}


def connect(address: Optional[str]) -> bool:
    """Start a local cluster (True) or connect to ``address`` (False)."""
    _cluster["address"] = address
    if address:
        ray.init(address=address, namespace="serve-cleanup-bench", log_to_driver=False)
        return False
    # address="local": a new cluster even if /tmp/ray/ray_current_cluster names a running one
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="serve-cleanup-bench",
             log_to_driver=False)
    return True


def fresh_cluster() -> bool:
    """A new local cluster (an empty actor table and KV) unless running on ``--address``.
    True if it is new."""
    if _cluster["address"]:
        return False
    ray.shutdown()
    connect(None)
    return True


def gcs():
    """This process's GCS client (a driver's, or the worker's inside an actor)."""
    return ray._private.worker.global_worker.gcs_client


def own_gcs_client():
    """A GCS client of its own (``GcsClient(address=)``), as the durable controller builds."""
    return ray._raylet.GcsClient(address=ray.get_runtime_context().gcs_address)


def kv_store(client=None, timeout_s: float = KV_TIMEOUT_S) -> KvStore:
    """serve_cleanup's KV store over ``client`` (default: this process's GCS client)."""
    return KvStore(gcs() if client is None else client, timeout_s)


def state_accessor():
    """Ray's GlobalStateAccessor (synchronous by-id ``get_actor_info``: a hash lookup)."""
    return ray._private.state.state._connect_and_get_accessor()


def count_actors(state: Optional[str] = None) -> int:
    """Actors GCS holds (registered + cached dead), optionally of one state; no parsing."""
    return len(state_accessor().get_actor_table(None, state))


def gcs_server_process() -> psutil.Process:
    """The gcs_server of the cluster this driver is connected to (its own child, or the
    one started with this session's directory, or the one listening on the GCS port)."""
    for p in psutil.Process().children(recursive=True):
        if p.name() == "gcs_server":
            return p
    session = session_dir()
    port = int(ray.get_runtime_context().gcs_address.rsplit(":", 1)[1])
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.info["name"] != "gcs_server":
            continue
        if session is not None and f"--session-dir={session}" in (p.info["cmdline"] or ()):
            return p
        try:
            if any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in p.net_connections()):
                return p
        except psutil.Error:
            pass
    raise RuntimeError(f"no gcs_server process found for {ray.get_runtime_context().gcs_address}")


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def cores_over(proc: psutil.Process, seconds: float) -> float:
    """CPU cores ``proc`` used over a window of ``seconds``."""
    c0, t0 = cpu_s(proc), time.perf_counter()
    time.sleep(seconds)
    return (cpu_s(proc) - c0) / (time.perf_counter() - t0)


def session_dir() -> Optional[Path]:
    try:
        return Path(ray._private.worker.global_worker.node.get_session_dir_path())
    except Exception:
        return None


# --- Serve ---------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.02) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception:
            pass
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


def find_controller():
    try:
        return ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return None


def controller():
    return ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)


def controller_process() -> psutil.Process:
    return psutil.Process(ray.get(controller().get_pid.remote()))


def controller_status() -> dict:
    """The durable controller's own view (``serve_cleanup_status``: records, rehydrate_ms)."""
    return ray.get(controller().serve_cleanup_status.remote(), timeout=60)


def start_serve(kind: str, **kwargs) -> None:
    stop_serve()
    if kind == DURABLE:
        serve_cleanup.start(**kwargs)
    else:
        serve.start(**kwargs)
    assert serve_cleanup.controller_kind() == kind


def stop_serve() -> float:
    """serve.shutdown(), then wait until the controller is gone; returns seconds."""
    started = time.perf_counter()
    serve.shutdown()
    wait_for(lambda: find_controller() is None, 300, "the controller to exit")
    return time.perf_counter() - started


_STARTER = """
import sys, ray, serve_cleanup
from ray import serve
ray.init(address=sys.argv[1], namespace=sys.argv[2], log_to_driver=False)
serve_cleanup.start() if sys.argv[3] == "durable" else serve.start()
print(ray.get_runtime_context().get_job_id())
"""


def start_serve_elsewhere(kind: str) -> str:
    """Start Serve (``kind``) from a short-lived driver of its own (a subprocess that
    exits once Serve runs: the controller is detached), so that this driver's job is not
    the one that started Serve and may own registrations (``scope="job"`` refuses Serve's
    own job). Returns the starter's job id (hex), ended by then."""
    stop_serve()
    out = subprocess.run([sys.executable, "-c", _STARTER, ray.get_runtime_context().gcs_address,
                          BENCH_NAMESPACE, kind], capture_output=True, text=True, timeout=300,
                         env={**os.environ})
    if out.returncode != 0:
        raise RuntimeError(f"starting Serve from a subprocess failed: {out.stderr[-3000:]}")
    wait_for(lambda: find_controller() is not None, 60, "the controller")
    assert serve_cleanup.controller_kind() == kind
    return out.stdout.strip().splitlines()[-1]


def kill_controller_and_wait() -> float:
    """Crash the controller; seconds until a *new* process answers (Serve's ``get_pid``)."""
    ctrl = controller()
    old_pid = ray.get(ctrl.get_pid.remote())
    started = time.perf_counter()
    ray.kill(ctrl, no_restart=False)
    # Calls queue while the controller restarts (infinite task retries); the old process
    # may still answer one or two before the kill lands.
    wait_for(lambda: ray.get(ctrl.get_pid.remote(), timeout=120) != old_pid, 300, "restart", every_s=0.005)
    return time.perf_counter() - started


def register_upstream(ctrl, actor) -> float:
    """One registration through Serve's upstream method; seconds."""
    started = time.perf_counter()
    ray.get(ctrl._register_shutdown_cleanup_actor.remote(actor))
    return time.perf_counter() - started


def register_public(actor, **options) -> float:
    """One registration through ``serve_cleanup.register`` (the public path; ``options``
    its keyword arguments: ``scope``, ``job``, ``grace_s``, ...); seconds."""
    started = time.perf_counter()
    serve_cleanup.register(actor, **options)
    return time.perf_counter() - started


def register_owned(actor, scope: str, app: str, deployment: Optional[str] = None) -> None:
    """``serve_cleanup.register`` with an owner (app or deployment scope)."""
    serve_cleanup.register(actor, scope=scope, app=app, deployment=deployment)


def unregister(actors: Iterable) -> None:
    for a in actors:
        serve_cleanup.unregister(a)


# What a registration call raises when it was refused (nothing registered: an owner that
# is not there, a dead actor), and when the controller did not answer in time (unknown).
REFUSED = (serve_cleanup.errors.RegistrationError, ValueError)
UNAVAILABLE = serve_cleanup.errors.ControllerUnavailableError


def unregister_one(actor, **options) -> bool:
    """``serve_cleanup.unregister`` (the whole registration without ``options``)."""
    return serve_cleanup.unregister(actor, **options)


def record_pairs() -> set[tuple[str, tuple]]:
    """``(actor id, owner)`` of every v2 key under the record prefix (``records.parse_key``;
    owner ``(scope, app, deployment)``); a key that does not parse counts as
    ``(key, ("unparsed", "", ""))``."""
    out: set[tuple[str, tuple]] = set()
    for key in record_keys():
        try:
            parsed = records.parse_key(bytes(key))
            out.add((parsed.actor_id, tuple(parsed.owner)))
        except Exception:
            out.add((bytes(key).decode(errors="replace"), ("unparsed", "", "")))
    return out


def live_actor_ids(actor_ids: Iterable[str]) -> set[str]:
    """Of ``actor_ids`` (hex), those GCS's actor table holds in a state that is not DEAD
    (one read per live state; the controller's own read, ``serve_adapter.ports.live_actors``)."""
    from serve_cleanup.serve_adapter.ports import live_actors

    wanted = set(actor_ids)
    return set(live_actors(wanted, state_accessor())) if wanted else set()


def stored_actor_ids() -> set[str]:
    """Actor ids of every record the KV holds (decoded from the keys, v1 or v2)."""
    return {key_actor_id(k) for k in record_keys()}


def key_actor_id(key: bytes) -> str:
    """The actor id of a record key below the store's prefix (v1: all of it after
    ``KEY_PREFIX``; v2: its first field)."""
    return bytes(key)[len(records.KEY_PREFIX):].decode().split(records.SEP, 1)[0]


def burst(ctrl, groups: list[list]) -> float:
    """Each group registered through the upstream method by its own thread, all at once;
    the wall time of the whole burst."""
    barrier = threading.Barrier(len(groups))
    errors: list = []

    def run(group):
        barrier.wait()
        try:
            ray.get([ctrl._register_shutdown_cleanup_actor.remote(a) for a in group])
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(g,)) for g in groups]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} registrant(s) failed: {errors[0]!r}")
    return time.perf_counter() - started


# --- the job table (GCS's job RPCs) -------------------------------------------------------

_SKIP = {"skip_submission_job_info_field": True, "skip_is_running_tasks_field": True}


def _job_stub():
    from ray.core.generated import gcs_service_pb2_grpc

    try:
        from ray._private.grpc_utils import init_grpc_channel
    except ImportError:  # older Ray
        from ray._private.utils import init_grpc_channel
    channel = init_grpc_channel(ray.get_runtime_context().gcs_address)
    return channel, gcs_service_pb2_grpc.JobInfoGcsServiceStub(channel)


def job_table() -> dict[str, bool]:
    """GCS's job table: job id (hex) -> whether it has ended (one read, both skip flags,
    as the durable controller reads it)."""
    from ray.core.generated import gcs_service_pb2

    channel, stub = _job_stub()
    try:
        reply = stub.GetAllJobInfo(gcs_service_pb2.GetAllJobInfoRequest(**_SKIP), timeout=60)
    finally:
        channel.close()
    return {j.job_id.hex(): bool(j.is_dead) for j in reply.job_info_list}


def make_finished_jobs(n: int, in_flight: int = 200) -> float:
    """Add ``n`` finished jobs to GCS's job table the way a driver's start and end do:
    per job ``GetNextJobID`` (a real id from GCS's counter), ``AddJob`` with a copy of
    this driver's own ``JobTableData`` (its job config, entrypoint, address; that job id,
    the driver worker id made from it, a pid no process has) and ``MarkJobFinished``,
    ``in_flight`` jobs at a time (gRPC futures). GCS runs for each what it runs for a
    driver (publishes the job to the raylets, its job-finished listeners), but no driver
    process starts. Returns seconds."""
    started = time.perf_counter()
    _add_jobs(n, in_flight, finish=True)
    return time.perf_counter() - started


def make_running_jobs(n: int, in_flight: int = 200) -> list[str]:
    """``n`` jobs GCS's table holds as running (``make_finished_jobs`` without the
    ``MarkJobFinished``: a driver's start, no driver process): job owners without a driver
    each. Their ids (hex); end them with ``finish_jobs``."""
    return _add_jobs(n, in_flight, finish=False)


def finish_jobs(job_ids: Iterable[str], in_flight: int = 200) -> None:
    """``MarkJobFinished`` of each of ``job_ids`` (hex), as a driver's end sends it."""
    from ray.core.generated import gcs_service_pb2 as pb

    ids = list(job_ids)
    channel, stub = _job_stub()
    try:
        for i in range(0, len(ids), in_flight):
            for f in [stub.MarkJobFinished.future(pb.MarkJobFinishedRequest(job_id=bytes.fromhex(j)), timeout=60)
                      for j in ids[i:i + in_flight]]:
                f.result(timeout=60)
    finally:
        channel.close()


def _add_jobs(n: int, in_flight: int, finish: bool) -> list[str]:
    from ray.core.generated import gcs_pb2, gcs_service_pb2 as pb

    channel, stub = _job_stub()
    me = ray.get_runtime_context().get_job_id()
    out: list[str] = []
    try:
        reply = stub.GetAllJobInfo(pb.GetAllJobInfoRequest(job_or_submission_id=me, **_SKIP), timeout=60)
        template = next(j for j in reply.job_info_list if j.job_id.hex() == me)
        worker_tail = template.driver_address.worker_id[len(template.job_id):]
        while len(out) < n:
            k = min(in_flight, n - len(out))
            ids = [f.result(timeout=60).job_id for f in
                   [stub.GetNextJobID.future(pb.GetNextJobIDRequest(), timeout=60) for _ in range(k)]]
            adds = []
            for int_id in ids:
                data = gcs_pb2.JobTableData()
                data.CopyFrom(template)
                data.job_id = ray.JobID.from_int(int_id).binary()
                data.is_dead = False
                data.driver_pid = 0x3FFFFFFF  # above any pid_max: no process
                data.driver_address.worker_id = data.job_id + worker_tail
                adds.append((data.job_id, stub.AddJob.future(pb.AddJobRequest(data=data), timeout=60)))
            finishing = []
            for job_id, f in adds:
                f.result(timeout=60)
                out.append(job_id.hex())
                if finish:
                    finishing.append(stub.MarkJobFinished.future(pb.MarkJobFinishedRequest(job_id=job_id), timeout=60))
            for f in finishing:
                f.result(timeout=60)
    finally:
        channel.close()
    return out


def job_read_probe(n: int, gcs_proc: psutil.Process, job_id: Optional[str] = None) -> dict:
    """``n`` reads of the job table through ``GcsClient.async_get_all_job_info`` with both
    skip flags (the durable controller's call), filtered to ``job_id`` or whole, awaited
    one at a time from this driver (its own GcsClient): p50 ms, gcs_server CPU ms per call,
    and how many jobs one returned."""
    client = own_gcs_client()

    async def run() -> tuple[list[float], int]:
        times, got = [], 0
        for _ in range(n):
            t = time.perf_counter()
            found = await client.async_get_all_job_info(job_or_submission_id=job_id, timeout=60, **_SKIP)
            times.append(time.perf_counter() - t)
            got = len(found)
        return times, got

    c0 = cpu_s(gcs_proc)
    times, got = asyncio.run(run())
    return {"p50_ms": statistics.median(times) * 1000, "gcs_cpu_ms": (cpu_s(gcs_proc) - c0) / n * 1000,
            "returned": got, "n": n}


# --- records, through serve_cleanup's KV store -------------------------------------------


def record_items(actor_id_hex: str, name: str, namespace: str, handle: bytes, registered_at: float,
                 owners: Sequence[records.Owner] = (), layout: str = V2) -> list[tuple[str, bytes]]:
    """The KV entries ``(key below the store's prefix, value)`` of one registered actor.

    ``V2``: one key per (actor, owner) pair, through ``records.pair_key`` and
    ``records.encode``: one ``serve`` pair when ``owners`` is empty (what the upstream
    method and ``scope="serve"`` write), else one pair per owner, the i-th registered
    i microseconds after ``registered_at``. ``V1``: 0.1.0's one key per actor
    (``records.record_key``, ``records.encode_v1``) with the first owner (serve-wide
    without one)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use one of {LAYOUTS}")
    t = records.in_micros(registered_at)
    owned = tuple(owners) or (records.SERVE_OWNER,)
    if layout == V1:
        record = records.Record(actor_id_hex, name, namespace, handle, pairs=((owned[0], t),))
        return [(records.record_key(actor_id_hex), records.encode_v1(record))]
    pairs = tuple((owner, records.in_micros(t + i / 1_000_000)) for i, owner in enumerate(owned))
    record = records.Record(actor_id_hex, name, namespace, handle, pairs=pairs)
    return [(records.pair_key(actor_id_hex, owner, at, name, namespace), records.encode(record, owner))
            for owner, at in pairs]


def app_owners(n: int, prefix: str = "bench-app") -> list[records.Owner]:
    """``n`` app owners (``("app", "<prefix>-<i>", "")``), for records of several owners."""
    return [(records.SCOPE_APP, f"{prefix}-{i}", "") for i in range(n)]


def actor_items(actors: Iterable, registered_at: float, owners: Sequence[records.Owner] = (),
                layout: str = V2) -> list[tuple[str, bytes]]:
    """The KV entries of ``actors`` (real handles; name and namespace from the handle, the
    namespace left out of an anonymous actor's record, as ``register`` stores it)."""
    items: list[tuple[str, bytes]] = []
    for a in actors:
        h = handle_bytes(a)
        name, ns = handle_name_namespace(h)
        items += record_items(a._actor_id.hex(), name, ns if name else "", h, registered_at, owners, layout)
    return items


def is_v1_key(key: bytes) -> bool:
    """A key of 0.1.0's layout (``KEY_PREFIX`` + id, no ``/``)."""
    return records.is_v1_key(bytes(key))


def v1_key_count() -> int:
    return sum(1 for k in record_keys() if is_v1_key(k))


def record_keys() -> list[bytes]:
    """The keys of every stored record (below the store's prefix)."""
    return kv_store().keys(records.KEY_PREFIX)


def record_count() -> int:
    return len(record_keys())


def purge_records() -> None:
    kv_store().delete_prefix(records.KEY_PREFIX)


def put_records(items: Iterable[tuple[str, bytes]], in_flight: int = 2000) -> float:
    """Async KV puts (``AsyncKvStore.put``) of ``(key below the store's prefix, value)``
    pairs (``record_items``), ``in_flight`` at a time; seconds."""
    store = kv_store().aio
    pending = iter(items)

    # ``in_flight`` workers share one iterator, each awaiting its put before taking the next
    # item: always ``in_flight`` puts outstanding, and one task per worker, not per put (a
    # gather over 100,000 coroutines would wrap each in a task of its own).
    async def worker() -> None:
        for key, value in pending:
            await store.put(key, value)

    async def run() -> None:
        await asyncio.gather(*(worker() for _ in range(in_flight)))

    started = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - started


def template_handle() -> bytes:
    """A real serialized handle of a named actor with a namespace (the actor is killed)."""
    actor = PendingActor.options(lifetime="detached", name=f"template-{os.urandom(4).hex()}",
                                 namespace=BENCH_NAMESPACE).remote()
    data = handle_bytes(actor)
    kill_actors([actor])
    return data


def seed_unknown_records(n: int, registered_at: float, template: Optional[bytes] = None,
                         owners: Sequence[records.Owner] = (), layout: str = V2) -> dict:
    """``n`` registered actors GCS never knew (as after it evicted them from its cache of
    dead actors), with real-sized handles: ``template`` with each record's own id; half
    named with a namespace, half anonymous. ``layout`` V2 (default): one key per (actor,
    owner) pair, serve-wide without ``owners``; V1: one key per actor, 0.1.0's layout
    (``record_items``). Returns the seeding time, the keys written and value sizes."""
    template = template or template_handle()
    sizes: list[int] = []
    written = 0

    def items():
        nonlocal written
        for i in range(n):
            aid = unknown_actor_id()
            name, ns = (f"seeded-{i}", BENCH_NAMESPACE) if i % 2 == 0 else ("", "")
            h = handle_like(template, aid, name, ns)
            for key, value in record_items(aid.hex(), name, ns, h, registered_at, owners, layout):
                if len(sizes) < 1000:
                    sizes.append(len(value))
                written += 1
                yield key, value

    took = put_records(items())
    return {"records": n, "keys": written, "layout": layout, "owners": len(owners),
            "seed_s": took, "value_bytes_mean": statistics.mean(sizes) if sizes else 0,
            "handle_bytes_template": len(template)}


def _cli() -> tuple[str, dict]:
    return (str(Path(sys.executable).with_name("serve-cleanup")),
            {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address})


def cli_seconds(args: list[str]) -> float:
    """Wall time of ``serve-cleanup ARGS`` in a fresh process."""
    script, env = _cli()
    started = time.perf_counter()
    subprocess.run([script, *args], capture_output=True, check=True, env=env, timeout=600)
    return time.perf_counter() - started


def cli_list_json(profile_as: Optional[str] = None) -> tuple[float, int]:
    """``serve-cleanup list --json`` as a user runs it: a fresh process (the console script
    beside this Python), RAY_ADDRESS set. Wall time, and how many entries it printed.
    With --profile and ``profile_as``, run under py-spy (the time then includes it)."""
    import json
    import tempfile

    script, env = _cli()
    cmd = [script, "list", "--json"]
    if profile_as:
        cmd = profiled_command(cmd, profile_as)
    with tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE,
                              text=True, env=env, timeout=600)
        took = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"serve-cleanup list --json failed: {proc.stderr[-2000:]}")
        out.seek(0)
        # py-spy prints its own lines into the same stdout: no entry count under it.
        entries = -1 if profile_as and _profile["dir"] is not None else len(json.load(out))
    if profile_as and _profile["dir"] is not None:
        summarize_profile(_profile["dir"] / f"{profile_as}.txt")
    return took, entries


def seed_synthetic(n: int) -> None:
    """``n`` records of actors that never existed (used by the older ``cases`` sections)."""
    seed_unknown_records(n, time.time())


# --- py-spy, when --profile DIR is given ----------------------------------------------

_profile: dict = {"dir": None}
RATE_HZ = 100


def set_profile_dir(path: Optional[str]) -> None:
    _profile["dir"] = Path(path) if path else None
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)


def profiling() -> bool:
    return _profile["dir"] is not None


def _pyspy() -> str:
    return shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))


@contextlib.contextmanager
def profiled(pid: int, name: str):
    """``py-spy record`` attached to ``pid`` for the block (a no-op without --profile):
    raw stacks in DIR/NAME.txt, a summary in DIR/NAME.summary.txt."""
    if _profile["dir"] is None:
        yield
        return
    raw = _profile["dir"] / f"{name}.txt"
    spy = subprocess.Popen([_pyspy(), "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--format", "raw",
                            "--nolineno", "--threads", "--nonblocking", "--output", str(raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attach
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(timeout=120)
        except subprocess.TimeoutExpired:
            spy.kill()
        summarize_profile(raw)


def profiled_command(cmd: list[str], name: str) -> list[str]:
    """``cmd`` run under ``py-spy record`` (with --profile; else ``cmd`` unchanged)."""
    if _profile["dir"] is None:
        return cmd
    raw = _profile["dir"] / f"{name}.txt"
    return [_pyspy(), "record", "--rate", str(RATE_HZ), "--format", "raw", "--nolineno", "--output", str(raw),
            "--", *cmd]


def summarize_profile(raw: Path, top: int = 40) -> None:
    """Self and inclusive time per function (seconds of samples) beside the raw stacks."""
    if not raw.exists():
        return
    total = 0
    self_c: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("thread (", "process "))]
        total += n
        if frames:
            self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    lines = [f"{total} samples at {RATE_HZ} Hz ({total / RATE_HZ:.1f} s of thread time)", "", "self:"]
    lines += [f"  {c / RATE_HZ:8.2f} s {100 * c / max(total, 1):5.1f}%  {f}" for f, c in self_c.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"  {c / RATE_HZ:8.2f} s {100 * c / max(total, 1):5.1f}%  {f}" for f, c in incl.most_common(top)]
    raw.with_suffix(".summary.txt").write_text("\n".join(lines) + "\n")


# --- statistics ----------------------------------------------------------------------


@dataclass
class Samples:
    values: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.values.append(seconds)

    @property
    def p50(self) -> float:
        return statistics.median(self.values)

    @property
    def p90(self) -> float:
        if len(self.values) < 10:
            return max(self.values)
        return statistics.quantiles(self.values, n=10, method="inclusive")[8]

    @property
    def p99(self) -> float:
        if len(self.values) < 100:
            return max(self.values)
        return statistics.quantiles(self.values, n=100, method="inclusive")[98]

    def ms(self, which: str = "p50") -> float:
        return getattr(self, which) * 1000


def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is 0 (tiny --quick sizes: CPU times tick every 10 ms)."""
    return a / b if b else float("nan")


def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")
