"""Shared plumbing: the cluster, starting/stopping each kind of Serve, stats, seeding."""

from __future__ import annotations

import threading

import asyncio
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import sys

import ray
from ray import cloudpickle, serve

import serve_cleanup
from serve_cleanup import _compat
from serve_cleanup.client.controller import controller_kind, find_controller
from serve_cleanup.core import records
from serve_cleanup.core.records import Record
from serve_cleanup.adapters import GcsRecordStore

PLAIN, DURABLE = "plain", "durable"

# Workers need not import the benchmarks package: ship these classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@ray.remote(num_cpus=0)
class BenchActor:
    def ping(self) -> int:
        return 1


@serve.deployment(ray_actor_options={"num_cpus": 0})
class BenchApp:
    def __call__(self) -> str:
        return "ok"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


def connect(address: Optional[str]) -> bool:
    """Start a local cluster (True) or connect to ``address`` (False)."""
    if address:
        ray.init(address=address, namespace="serve-cleanup-bench", log_to_driver=False)
        return False
    ray.init(num_cpus=2, include_dashboard=False, namespace="serve-cleanup-bench", log_to_driver=False)
    return True


def controller():
    return ray.get_actor(_compat.SERVE_CONTROLLER_NAME, namespace=_compat.SERVE_NAMESPACE)


def start_serve(kind: str, **kwargs) -> None:
    stop_serve()
    if kind == DURABLE:
        serve_cleanup.start(**kwargs)
    else:
        serve.start(**kwargs)
    assert controller_kind() == kind


def stop_serve() -> float:
    """serve.shutdown(), then wait until the controller is gone; returns seconds."""
    started = time.perf_counter()
    serve.shutdown()
    wait_for(lambda: find_controller() is None, 120, "the controller to exit")
    return time.perf_counter() - started


def make_actors(n: int) -> list:
    actors = [BenchActor.options(lifetime="detached").remote() for _ in range(n)]
    ray.get([a.ping.remote() for a in actors])
    return actors


def kill_actors(actors: list) -> None:
    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:
            pass


def kill_controller_and_wait() -> float:
    """Crash the controller; seconds until a *new* process answers (Serve's ``get_pid``)."""
    ctrl = controller()
    old_pid = ray.get(ctrl.get_pid.remote())
    started = time.perf_counter()
    ray.kill(ctrl, no_restart=False)
    # Calls queue while the controller restarts (infinite task retries); the old process
    # may still answer one or two before the kill lands.
    wait_for(lambda: ray.get(ctrl.get_pid.remote(), timeout=60) != old_pid, 120, "restart")
    return time.perf_counter() - started


def store() -> GcsRecordStore:
    return GcsRecordStore(_compat.driver_gcs_client())


def seed_synthetic(n: int) -> None:
    """``n`` records of actors that never existed, written through the package's store."""
    s = store()
    now = time.time()

    async def put_all() -> None:
        batch = []
        for i in range(n):
            r = Record(
                actor_id=os.urandom(16).hex(), name=f"synthetic-{i}", namespace="bench",
                handle=b"", registered_at=now,
            )
            batch.append(s.put(r.key, records.encode(r)))
            if len(batch) >= 500:
                await asyncio.gather(*batch)
                batch = []
        await asyncio.gather(*batch)

    asyncio.run(put_all())


def purge_records() -> None:
    gcs = _compat.driver_gcs_client()
    gcs.internal_kv_del(
        _compat.kv_key(records.KEY_PREFIX), True,
        _compat.KV_NAMESPACE,
    )


@dataclass
class Samples:
    values: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.values.append(seconds)

    @property
    def p50(self) -> float:
        return statistics.median(self.values)

    @property
    def p99(self) -> float:
        if len(self.values) < 100:
            return max(self.values)
        return statistics.quantiles(self.values, n=100, method="inclusive")[98]

    def ms(self, which: str = "p50") -> float:
        return getattr(self, which) * 1000


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
