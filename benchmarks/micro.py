"""Isolated costs of the steps a registration takes, in a driver (no controller).

    python -m benchmarks.micro [--n 2000] [--address ADDR]

Per step: wall time per call (median of batches) and process CPU per call (all threads
of this process, so GCS client I/O threads count). GCS calls are awaited one at a time,
as the controller's hot path does, and also fired ``--n`` at once (pipelined).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from typing import Callable

import msgpack
import ray

from benchmarks.harness import connect, internals, kv_store, log, probe_key

_internal = internals()
_ray, records = _internal.ray_side, _internal.records
Record = records.Record

BATCHES = 10


def measure(fn: Callable[[], object], n: int) -> dict:
    """Median over BATCHES of (wall per call, CPU per call), in microseconds."""
    fn()
    walls, cpus = [], []
    per = max(1, n // BATCHES)
    for _ in range(BATCHES):
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(per):
            fn()
        walls.append((time.perf_counter() - w0) / per)
        cpus.append((time.process_time() - c0) / per)
    return {"wall_us": statistics.median(walls) * 1e6, "cpu_us": statistics.median(cpus) * 1e6}


def ameasure(make: Callable[[], object], n: int, loop: asyncio.AbstractEventLoop) -> dict:
    async def one_batch(per: int) -> tuple[float, float]:
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(per):
            await make()
        return (time.perf_counter() - w0) / per, (time.process_time() - c0) / per

    per = max(1, n // BATCHES)
    loop.run_until_complete(one_batch(3))
    walls, cpus = zip(*(loop.run_until_complete(one_batch(per)) for _ in range(BATCHES)))
    return {"wall_us": statistics.median(walls) * 1e6, "cpu_us": statistics.median(cpus) * 1e6}


def apipelined(make: Callable[[], object], n: int, loop: asyncio.AbstractEventLoop) -> dict:
    async def run() -> tuple[float, float]:
        w0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(make() for _ in range(n)))
        return (time.perf_counter() - w0) / n, (time.process_time() - c0) / n

    loop.run_until_complete(run())
    wall, cpu = loop.run_until_complete(run())
    return {"wall_us": wall * 1e6, "cpu_us": cpu * 1e6}


@ray.remote(num_cpus=0)
class Probe:
    def ping(self) -> int:
        return 1


def serve_controller_logger() -> logging.Logger:
    """Serve's logger configured the way the controller configures it (file + stderr)."""
    from ray.serve._private.logging_utils import configure_component_logger
    from ray.serve.schema import LoggingConfig

    configure_component_logger(component_name="controller", component_id="bench-micro",
                               logging_config=LoggingConfig())
    return _ray.controller_logger


def run(n: int) -> dict:
    out: dict[str, dict] = {}
    actor = Probe.options(name=f"probe-{os.urandom(4).hex()}", namespace="serve-cleanup-bench",
                          lifetime="detached").remote()
    ray.get(actor.ping.remote())
    handle_bytes = _ray.handle_to_bytes(actor)
    actor_id = _ray.actor_id_hex(actor)
    rec = Record(actor_id=actor_id, name="probe", namespace="serve-cleanup-bench",
                 handle=handle_bytes, registered_at=time.time())

    out["ray.get(actor.ping.remote()) (one actor RPC, for scale)"] = measure(
        lambda: ray.get(actor.ping.remote()), n // 4)
    out["handle._serialization_helper()"] = measure(lambda: actor._serialization_helper(), n)
    out["core_worker_pb2.ActorHandle().ParseFromString"] = measure(
        lambda: _ray.core_worker_pb2.ActorHandle().ParseFromString(handle_bytes), n)
    out["records.encode (validate + msgpack)"] = measure(lambda: records.encode(rec), n)
    out["msgpack.packb of the record map alone"] = measure(
        lambda: msgpack.packb({"v": 1, "actor_id": actor_id, "name": "probe", "namespace": "ns",
                               "handle": handle_bytes, "scope": "serve", "app": "",
                               "deployment": "", "registered_at": 1.0}, use_bin_type=True), n)
    out["Record(...) + records.validate"] = measure(
        lambda: records.validate(Record(actor_id=actor_id, name="p", namespace="n",
                                        handle=handle_bytes, registered_at=1.0)), n)
    out["actor_id_hex(handle)"] = measure(lambda: _ray.actor_id_hex(actor), n)

    from ray.util import metrics as ray_metrics

    counter = ray_metrics.Counter("serve_cleanup_bench_micro_total", "bench", tag_keys=("scope",))
    out["ray.util.metrics Counter.inc(tags=...)"] = measure(lambda: counter.inc(tags={"scope": "serve"}), n)
    gauge = ray_metrics.Gauge("serve_cleanup_bench_micro_gauge", "bench", tag_keys=("scope",))
    out["ray.util.metrics Gauge.set x3 scopes (publish counts)"] = measure(
        lambda: [gauge.set(1, tags={"scope": s}) for s in records.SCOPES], n)

    lg = serve_controller_logger()
    # Keep stderr out of the figures' noise: the controller's stderr goes to a file too.
    saved = sys.stderr
    with tempfile.TemporaryFile("w") as sink:
        sys.stderr = sink
        try:
            out["logger.info via Serve's controller logger (file + stderr)"] = measure(
                lambda: lg.info(f"serve_cleanup: registered ns/name (actor {actor_id}, scope serve)."),
                n)
        finally:
            sys.stderr = saved

    loop = asyncio.new_event_loop()
    try:
        gcs_driver = _ray.driver_gcs_client()
        gcs_own = _ray.GcsClient(address=ray.get_runtime_context().gcs_address)
        key = probe_key("micro")
        value = records.encode(rec)
        aid = _ray.actor_id_from_hex(actor_id)
        for label, gcs in (("driver's GcsClient", gcs_driver), ("own GcsClient(address=)", gcs_own)):
            # The put the controller makes: AsyncKvStore.put (a coroutine; gathered, each
            # in a task of its own).
            put = lambda s=kv_store(gcs, timeout_s=5).aio: s.put(key, value)  # noqa: E731
            look = lambda g=gcs: g.async_get_all_actor_info(actor_id=aid, timeout=5)  # noqa: E731
            out[f"KV put (AsyncKvStore.put), awaited one at a time ({label})"] = ameasure(put, n, loop)
            out[f"async_get_all_actor_info(actor_id=...), one at a time ({label})"] = ameasure(look, n, loop)
            out[f"put + lookup via asyncio.gather, one pair at a time ({label})"] = ameasure(
                lambda p=put, lk=look: asyncio.gather(p(), lk()), n, loop)
            out[f"KV put (AsyncKvStore.put), {n} in flight ({label})"] = apipelined(put, n, loop)
            out[f"async_get_all_actor_info(actor_id=...), {n} in flight ({label})"] = apipelined(look, n, loop)
        sync_kv = kv_store(gcs_driver, timeout_s=5)
        out["KV put, sync (KvStore.put, driver's GcsClient)"] = measure(lambda: sync_kv.put(key, value), n // 4)
        sync_kv.delete(key)

        async def noop() -> None:
            return None

        async def create_task() -> None:
            await asyncio.get_running_loop().create_task(noop())

        async def gather2() -> None:
            await asyncio.gather(noop(), noop())

        async def lock_cycle(lock=asyncio.Lock()) -> None:
            async with lock:
                pass

        out["idle baseline: asyncio.sleep(0.5 ms) (background CPU of this process)"] = ameasure(
            lambda: asyncio.sleep(0.0005), n // 4, loop)
        out["asyncio: create_task + await (no-op)"] = ameasure(create_task, n, loop)
        out["asyncio: gather of 2 no-op coroutines"] = ameasure(gather2, n, loop)
        out["asyncio: await a no-op coroutine"] = ameasure(noop, n, loop)
        out["asyncio: Lock acquire/release"] = ameasure(lock_cycle, n, loop)
    finally:
        loop.close()
    ray.kill(actor, no_restart=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.micro", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--address", default=None)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    connect(args.address)
    try:
        log("micro-benchmarks ...")
        out = run(args.n)
    finally:
        ray.shutdown()
    width = max(len(k) for k in out)
    print(f"{'step':<{width}}  wall µs/call  CPU µs/call")
    for k, v in out.items():
        print(f"{k:<{width}}  {v['wall_us']:12.1f}  {v['cpu_us']:11.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
