"""Helpers and fixtures of the tests that use Ray (tests/shared_cluster, tests/own_cluster,
tests/chaos; each folder's conftest imports the fixtures it uses): at most one local Ray
cluster at a time on this machine, shut down at the end of the session.

One Ray cluster for the whole session (Ray takes ~5 s to start here), and one durable
Serve instance shared by the tests that need nothing else (``durable_serve``: cleaned
after each test, started again when a test shut it down); the tests about other
controllers (plain Serve, other options) get a fresh instance of their own. Actors a test
makes are killed at its teardown.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from typing import Callable, Iterator, Optional

import pytest
import ray
from ray import serve
from ray.cluster_utils import Cluster
from ray.serve._private import client as serve_client

import serve_cleanup
from processes import Seen, kill, marked_tree
from waiting import TimedOut, assert_stays, wait_for  # noqa: F401  (re-exported for the tests)
from serve_cleanup.serve_adapter import _ray
from serve_cleanup.serve_adapter.kv import KvStore
from serve_cleanup.client.controller import find_controller
from serve_cleanup.client.gcs import read_kv
from serve_cleanup.core import records

pytestmark = pytest.mark.ray

TEST_NAMESPACE = "serve-cleanup-tests"
TESTS = os.path.dirname(os.path.abspath(__file__))
# Replicas unpickle deployment classes defined in test modules by reference (module name,
# class name): every folder holding such modules (and the shared helpers here) must be on
# the workers' PYTHONPATH.
WORKER_PATHS = [TESTS] + [os.path.join(TESTS, d) for d in ("shared_cluster", "own_cluster", "chaos")]


def worker_pythonpath() -> str:
    """``WORKER_PATHS`` first, then whatever PYTHONPATH this process already had."""
    old = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in WORKER_PATHS]
    return os.pathsep.join(WORKER_PATHS + old)


# Serve's client in this process (serve.run, serve.delete, serve.start waiting for an app
# or a deployment) asks the controller once a second whether it is done yet; the tests
# wait for that a hundred times. Ask every 0.1 s: only the waiting of this driver
# changes, not Serve's controller or what a test checks.
serve_client.CLIENT_POLLING_INTERVAL_S = 0.1

# Options of the tests' deployments: no CPU (the machine has two), and replicas that stop
# at once when their app is deleted or Serve shuts down (Serve's default first waits 2 s
# for requests to drain: no test sends one then). The tests whose point is a stop that
# takes a while (test_shutdown's Slow, SlowToStop) keep Serve's defaults.
DEPLOYMENT = {"ray_actor_options": {"num_cpus": 0}, "graceful_shutdown_wait_loop_s": 0.1}


def temp_dir_of_its_own(role: str) -> str:
    """A fresh temp dir for a cluster a test starts (its sessions, logs, sockets, and the
    ``ray_current_cluster`` a head writes), so that Ray's default one (/tmp/ray) is never
    touched; remove it with ``shutil.rmtree`` once the cluster is gone. Short, under /tmp:
    Ray's Unix sockets live below it (108-byte limit)."""
    return tempfile.mkdtemp(prefix=f"sc-{role}-", dir="/tmp")


_local_temp_dir: Optional[str] = None  # the temp dir of the cluster start_local_ray started


def start_local_ray(**init_kwargs) -> None:
    """The local test cluster: 2 CPUs, no dashboard (the facts note's setup), a temp dir of
    its own; a test that needs more (a metrics export port) passes it in ``init_kwargs``.

    ``address="local"`` always starts a new cluster, also where ``RAY_ADDRESS`` names
    another one (KubeRay pods set it): the tests never touch a cluster they did not start.
    """
    global _local_temp_dir
    # The raylet (and so every worker) inherits this path from the driver.
    os.environ["PYTHONPATH"] = worker_pythonpath()
    _local_temp_dir = temp_dir_of_its_own("local")
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, namespace=TEST_NAMESPACE,
        log_to_driver=False, _temp_dir=_local_temp_dir, **init_kwargs,
    )


def stop_ray() -> None:
    """Shut down Serve and disconnect (stopping the local cluster if this process owns it,
    and removing its temp dir)."""
    global _local_temp_dir
    if ray.is_initialized():
        try:
            serve.shutdown()
        except Exception:
            pass
        ray.shutdown()
    if _local_temp_dir is not None:
        shutil.rmtree(_local_temp_dir, ignore_errors=True)
        _local_temp_dir = None


@pytest.fixture
def ray_cluster() -> Iterator[None]:
    """A local Ray cluster, started on first use and kept for the session (fast), unless a
    test with its own cluster (multi-node, Redis) shut it down in between."""
    if not ray.is_initialized():
        start_local_ray()
    yield


@pytest.fixture(scope="session", autouse=True)
def _ray_down_at_exit() -> Iterator[None]:
    yield
    stop_ray()


def actor_state(actor_id: str) -> str:
    info = _ray.actor_info(actor_id)
    return "DEAD" if info is None else info.state


def is_dead(handle) -> bool:
    return actor_state(handle._actor_id.hex()) == "DEAD"


def wait_dead(handle, timeout_s: float = 30.0) -> None:
    wait_for(lambda: is_dead(handle), timeout_s, f"actor {handle._actor_id.hex()} to die")


def kv() -> KvStore:
    """serve_cleanup's keys in this driver's cluster (the store the product uses)."""
    return KvStore(_ray.driver_gcs_client())


def kv_record_keys() -> list[str]:
    """Record keys in the KV (undecodable bytes shown as backslash escapes)."""
    return sorted(k.decode("utf-8", "backslashreplace") for k in kv().keys(records.KEY_PREFIX))


def controller_handle():
    return ray.get_actor(_ray.SERVE_CONTROLLER_NAME, namespace=_ray.SERVE_NAMESPACE)


def controller_status(timeout_s: float = 30.0) -> dict:
    return ray.get(controller_handle().serve_cleanup_status.remote(), timeout=timeout_s)


def kill_controller_and_wait_restart(timeout_s: float = 60.0) -> dict:
    """Crash the controller the way a real failure would; return the new one's status."""
    ctrl = controller_handle()
    old_pid = ray.get(ctrl.serve_cleanup_status.remote(), timeout=30)["pid"]
    ray.kill(ctrl, no_restart=False)

    def restarted():
        status = ray.get(ctrl.serve_cleanup_status.remote(), timeout=10)
        return status if status["pid"] != old_pid else None

    return wait_for(restarted, timeout_s, "the controller to restart")


@ray.remote(num_cpus=0)
class Aux:
    def ping(self) -> str:
        return "pong"

    def actor_id(self) -> str:
        return ray.get_runtime_context().get_actor_id()


@contextlib.contextmanager
def own_cluster(**head_node_args) -> Iterator[Cluster]:
    """A ``ray.cluster_utils.Cluster`` of this test's own, after stopping the shared one
    (one cluster at a time on this machine). Add worker nodes to it as needed."""
    stop_ray()
    os.environ["PYTHONPATH"] = worker_pythonpath()
    # Cluster writes ray_current_cluster into Ray's *default* temp dir (and its nodes use
    # it): RAY_TMPDIR makes that default one of this test's own while the cluster lives.
    temp_dir = temp_dir_of_its_own("nodes")
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp_dir
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"include_dashboard": False, **head_node_args})
        ray.init(address=cluster.address, namespace=TEST_NAMESPACE, log_to_driver=False)
        yield cluster
    finally:
        stop_ray()
        if cluster is not None:
            cluster.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(temp_dir, ignore_errors=True)


# Every process of a `ray start` a test runs carries this variable (with a token of the
# test's own) in its environment: how the test finds and ends exactly those processes.
CLUSTER_MARKER = "SERVE_CLEANUP_TEST_CLUSTER"


def marked_pids(token: str) -> set[int]:
    """The live processes started with ``CLUSTER_MARKER=token``, and those below them (a
    raylet's agents and workers rewrite their environment: see processes.py)."""
    return marked_tree(CLUSTER_MARKER, token)


def end_marked_processes(token: str) -> None:
    """End the processes started with ``CLUSTER_MARKER=token``, and those below them, by
    pid with SIGKILL (a test's cluster has nothing to save; SIGTERM takes a raylet 10 s
    here), and wait until they are gone (never `ray stop`, which ends every Ray on the
    machine)."""
    doomed = Seen()
    doomed.add(marked_pids(token))
    kill(doomed.alive())
    wait_for(lambda: not (marked_pids(token) | doomed.alive()), 30, "the marked processes to exit",
             interval_s=0.1)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``serve-cleanup ARGS`` in a subprocess, pointed at this test's cluster."""
    return subprocess.run(
        [sys.executable, "-m", "serve_cleanup.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address},
    )


def crash_plain_controller_and_wait() -> None:
    """Kill a plain Serve controller and wait until Ray restarted it."""
    ctrl = controller_handle()
    ray.kill(ctrl, no_restart=False)
    wait_for(lambda: ray.get(ctrl.check_alive.remote(), timeout=10) is None, 60, "restart")


def _plant_record(record: records.Record) -> None:
    """Write a record straight into the KV (as a controller that is gone left it): one
    key per (actor, owner) pair, each with its pair's value."""
    for key, (owner, _) in zip(record.keys(), record.pairs):
        kv().put(key, records.encode(record, owner))


def _purge_records() -> None:
    kv().delete_prefix(records.KEY_PREFIX)


@pytest.fixture
def actors(ray_cluster) -> Iterator[Callable[..., object]]:
    """Factory for detached test actors; every one is killed at teardown."""
    made = []

    def make(name: Optional[str] = None, namespace: str = TEST_NAMESPACE, **options):
        opts = dict(lifetime="detached", **options)
        if name is not None:
            opts.update(name=name, namespace=namespace)
        handle = Aux.options(**opts).remote()
        ray.get(handle.ping.remote())
        made.append(handle)
        return handle

    yield make
    for handle in made:
        try:
            ray.kill(handle, no_restart=True)
        except Exception:
            pass


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]


def _teardown_serve() -> None:
    """No Serve, no record: ``serve.shutdown()``, wait until the controller is gone, then
    delete every key under the record prefix (what a shutdown left, or a test planted)."""
    global _shared_controller_id
    _shared_controller_id = None
    try:
        serve.shutdown()
    except Exception:
        pass
    wait_for(lambda: find_controller() is None, 60, "the Serve controller to exit")
    _purge_records()


# The durable Serve instance the tests share (as Ray Serve's own suite shares one): the
# actor id of its controller, which a restart keeps. None when no shared instance runs.
_shared_controller_id: Optional[str] = None


def _shared_instance_running() -> bool:
    ctrl = find_controller()
    return ctrl is not None and ctrl._actor_id.hex() == _shared_controller_id


def _clean_shared_instance() -> bool:
    """Bring the shared instance back to "just started": no app, no registration (each
    registered actor killed, its record unregistered through the controller, so that its
    memory and the KV agree). False if that is not possible (it is shutting down, or the
    KV holds entries it set aside, which only a restart forgets): then it must go."""
    status = controller_status(timeout_s=10)
    if status["shutting_down"] or status["set_aside"]:
        return False
    for app in list(serve.status().applications):
        serve.delete(app)
    found, set_aside = read_kv(_ray.driver_gcs_client())
    if set_aside:
        return False
    for record in found:
        try:
            if record.kind == records.KIND_PLACEMENT_GROUP:
                _ray.remove_placement_group(record.actor_id)
            else:
                ray.kill(_ray.handle_from_bytes(record.handle), no_restart=True)
        except Exception:
            pass  # gone already, or a handle a test made up: the record goes all the same
        serve_cleanup.unregister(records.target_text(record.kind, record.actor_id), timeout_s=30)
    return kv_record_keys() == [] and controller_status(timeout_s=10)["records"] == 0


# Serve instances the tests start through these fixtures run without Serve's HTTP proxy:
# no test sends a request over HTTP (they use handles), the proxy plays no part in what
# serve_cleanup does, and starting it is ~0.8 s of the ~2 s a Serve start takes here,
# which the suite pays some 60 times. Serve's defaults, proxy included, stay where Serve's
# shutdown is the subject or a proxy is needed (fresh_durable_serve: test_shutdown,
# test_shutdown_cli, the system-actor refusal), in the tests that start Serve their own
# way (the start, upgrade and CLI start tests) and in every own-cluster test.
NO_PROXY = {"proxy_location": "Disabled"}


@pytest.fixture
def durable_serve(ray_cluster) -> Iterator[None]:
    """The session's shared Serve instance with the durable controller, clean: no app and
    no registration. Started on first use and again whenever it is gone (a test shut Serve
    down, or replaced it); cleaned after each test that leaves it running. A controller
    restart keeps it (same actor): tests that need a controller of their own (Serve's
    defaults, other options, a plain one) use the fixtures below."""
    global _shared_controller_id
    if not _shared_instance_running():
        _teardown_serve()
        serve_cleanup.start(**NO_PROXY)
        _shared_controller_id = find_controller()._actor_id.hex()
    yield
    if _shared_instance_running():
        try:
            clean = _clean_shared_instance()
        except Exception:
            clean = False
        if not clean:
            _teardown_serve()
    elif find_controller() is None:
        _purge_records()  # Serve went down in the test: what it left must not reach the next


@pytest.fixture
def fresh_durable_serve(ray_cluster) -> Iterator[None]:
    """A durable Serve instance of this test's own, with Serve's defaults (its HTTP proxy
    included): for the tests whose subject is Serve's shutdown, and those that need a proxy."""
    _teardown_serve()
    serve_cleanup.start()
    yield
    _teardown_serve()


@pytest.fixture
def no_serve(ray_cluster) -> Iterator[None]:
    """The session's cluster with no Serve and no record (for tests that start Serve their
    own way, or need it down)."""
    _teardown_serve()
    yield
    _teardown_serve()


@pytest.fixture
def plain_serve(ray_cluster) -> Iterator[None]:
    """A fresh Serve instance running upstream Ray Serve's controller."""
    _teardown_serve()
    serve.start(**NO_PROXY)
    yield
    _teardown_serve()


@pytest.fixture
def slow_reconcile_serve(ray_cluster):
    """Durable Serve whose periodic reconcile is effectively off (it still runs once
    at every controller start), so tests can hold an orphan in place."""
    _teardown_serve()
    serve_cleanup.start(
        controller_options={"runtime_env": {"env_vars": {"SERVE_CLEANUP_RECONCILE_INTERVAL_S": "3600"}}},
        **NO_PROXY,
    )
    yield
    _teardown_serve()


def free_port() -> int:
    """A TCP port no one listens on now (the OS picks it; it may be taken again later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_address(tmp_path_factory) -> Iterator[str]:
    """``127.0.0.1:<port>`` of a Redis server of this module's own (Debian's ``redis-server``),
    for GCS fault tolerance. Skips the test where redis-server is not installed; fails it
    in CI, which must run it (``.ci/run`` installs it)."""
    redis = shutil.which("redis-server")
    if redis is None:
        message = "redis-server is not installed (apt-get install redis-server; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    proc = subprocess.Popen(
        [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def pong() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        wait_for(pong, 10, "redis-server to answer")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
