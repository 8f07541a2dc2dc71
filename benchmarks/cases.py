"""The measurements. Each returns plain dicts that ``report`` turns into tables."""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray

from benchmarks.harness import (
    burst,
    DURABLE,
    PLAIN,
    BenchApp,
    Samples,
    controller,
    kill_actors,
    kill_controller_and_wait,
    kv_store,
    log,
    make_actors,
    probe_key,
    purge_records,
    seed_synthetic,
    start_serve,
    stop_serve,
    stored_actor_ids,
    unregister,
)
from benchmarks.harness import gcs as driver_gcs
from ray import serve


@dataclass
class Sizes:
    rounds: int = 3           # A/B rounds for the latency comparison
    pool: int = 16            # distinct actors per round and side
    passes: int = 20          # registrations per actor per round
    record_counts: tuple = (10, 1_000, 10_000)
    scaling_samples: int = 640
    concurrent: int = 8       # registrants
    per_registrant: int = 5
    concurrent_reps: int = 3
    restart_reps: int = 5
    shutdown_ks: tuple = (0, 40)
    shutdown_reps: int = 2


SMOKE = Sizes(rounds=1, pool=2, passes=3, record_counts=(10, 50), scaling_samples=10,
              concurrent=2, per_registrant=2, concurrent_reps=1, restart_reps=1,
              shutdown_ks=(1,), shutdown_reps=1)


def _register(ctrl, actor) -> float:
    started = time.perf_counter()
    ray.get(ctrl._register_shutdown_cleanup_actor.remote(actor))
    return time.perf_counter() - started


def _unregister_all(actors) -> None:
    unregister(actors)


def registration_latency(sizes: Sizes) -> dict:
    """Upstream method, durable vs plain controller, alternating A/B rounds."""
    samples = {PLAIN: Samples(), DURABLE: Samples()}
    for rnd in range(sizes.rounds):
        order = (PLAIN, DURABLE) if rnd % 2 == 0 else (DURABLE, PLAIN)
        for kind in order:
            start_serve(kind)
            ctrl = controller()
            actors = make_actors(sizes.pool)
            for _ in range(3):  # warm up the path
                _register(ctrl, actors[0])
            if kind == DURABLE:
                _unregister_all(actors[:1])
            for _ in range(sizes.passes):
                for a in actors:
                    samples[kind].add(_register(ctrl, a))
                if kind == DURABLE:
                    _unregister_all(actors)  # so every timed call is a new registration
            stop_serve()
            kill_actors(actors)
            log(f"latency round {rnd + 1}/{sizes.rounds} {kind}: p50 {samples[kind].ms():.2f} ms")
    return {
        "n": len(samples[PLAIN].values),
        "plain_p50": samples[PLAIN].ms("p50"), "plain_p99": samples[PLAIN].ms("p99"),
        "durable_p50": samples[DURABLE].ms("p50"), "durable_p99": samples[DURABLE].ms("p99"),
    }


def latency_vs_records(sizes: Sizes) -> list[dict]:
    """Durable registration latency with N synthetic records already stored.

    Two blocks, the second in reverse order of N, so drift over the run does not favour
    either end; samples of both blocks are pooled per N.
    """
    samples = {n: Samples() for n in sizes.record_counts}
    rehydrate = {n: [] for n in sizes.record_counts}
    per_block = max(1, sizes.scaling_samples // 2)
    for block in range(2):
        order = sizes.record_counts if block == 0 else tuple(reversed(sizes.record_counts))
        for n in order:
            start_serve(DURABLE)
            purge_records()
            seed_synthetic(n)
            kill_controller_and_wait()  # the restarted controller rehydrates all n
            ctrl = controller()
            status = ray.get(ctrl.serve_cleanup_status.remote())
            assert status["records"] == n, status["records"]
            rehydrate[n].append(status["rehydrate_ms"])
            actors = make_actors(min(sizes.pool, per_block))
            taken = 0
            while taken < per_block:
                for a in actors:
                    samples[n].add(_register(ctrl, a))
                taken += len(actors)
                _unregister_all(actors)
            purge_records()
            kill_controller_and_wait()  # forget the synthetic records before shutdown
            stop_serve()
            kill_actors(actors)
            log(f"latency with {n} records (block {block + 1}/2): p50 so far {samples[n].ms():.2f} ms")
    return [
        {"records": n, "p50": samples[n].ms("p50"), "p99": samples[n].ms("p99"),
         "rehydrate_ms": sorted(rehydrate[n])[len(rehydrate[n]) // 2]}
        for n in sizes.record_counts
    ]


def concurrent_registration(sizes: Sizes) -> dict:
    """``concurrent`` threads register distinct actors at once; throughput and losses."""
    result = {}
    for kind in (PLAIN, DURABLE):
        rates, lost = [], 0
        for _ in range(sizes.concurrent_reps):
            start_serve(kind)
            ctrl = controller()
            groups = [make_actors(sizes.per_registrant) for _ in range(sizes.concurrent)]
            took = burst(ctrl, groups)  # raises if a registrant failed
            total = sizes.concurrent * sizes.per_registrant
            rates.append(total / took)
            if kind == DURABLE:
                stored = stored_actor_ids()
                lost += sum(1 for g in groups for a in g if a._actor_id.hex() not in stored)
            stop_serve()
            for g in groups:
                kill_actors(g)
        result[kind] = {"per_s": sorted(rates)[len(rates) // 2], "lost": lost}
        log(f"concurrent {kind}: {result[kind]['per_s']:.0f} registrations/s, lost {lost}")
    return result


def restart_time(sizes: Sizes, records_n: int) -> dict:
    """Controller kill -> first answer from the new process, with one app deployed:
    plain, durable with no records, durable with ``records_n`` records. Two blocks in
    opposite orders; the median of every kill."""
    configs = [(PLAIN, 0), (DURABLE, 0), (DURABLE, records_n)]
    samples = {c: Samples() for c in configs}
    rehydrate = {c: [] for c in configs}
    for block in range(2):
        for kind, n in (configs if block == 0 else configs[::-1]):
            start_serve(kind)
            serve.run(BenchApp.bind(), name="bench", route_prefix=None)
            if kind == DURABLE:
                purge_records()
                seed_synthetic(n)
            for _ in range(sizes.restart_reps):
                samples[(kind, n)].add(kill_controller_and_wait())
                if kind == DURABLE:
                    rehydrate[(kind, n)].append(ray.get(controller().serve_cleanup_status.remote())["rehydrate_ms"])
            if kind == DURABLE:
                purge_records()
                kill_controller_and_wait()
            stop_serve()
    out = {}
    for (kind, n), s in samples.items():
        key = PLAIN if kind == PLAIN else f"{DURABLE}-{n}"
        r = sorted(rehydrate[(kind, n)])
        out[key] = {"p50_s": s.p50, "rehydrate_ms": r[len(r) // 2] if r else None, "records": n}
        log(f"restart {key}: {s.p50:.3f} s" + (f" (rehydrate {out[key]['rehydrate_ms']} ms)" if r else ""))
    return out


def latency_breakdown(sizes: Sizes) -> dict:
    """Where a durable registration's time goes, measured side by side."""
    import asyncio
    import statistics

    n = max(50, sizes.pool * sizes.passes // 2)

    def timed(f, count=n) -> float:
        xs = []
        for _ in range(count):
            t = time.perf_counter()
            f()
            xs.append(time.perf_counter() - t)
        return statistics.median(xs) * 1000

    out = {}
    start_serve(PLAIN)
    ctrl = controller()
    actors = make_actors(4)
    out["plain: no-op sync RPC (check_alive)"] = timed(lambda: ray.get(ctrl.check_alive.remote()))
    out["plain: upstream registration (sync method + handle argument)"] = timed(
        lambda: ray.get(ctrl._register_shutdown_cleanup_actor.remote(actors[0]))
    )
    stop_serve()
    kill_actors(actors)

    start_serve(DURABLE)
    ctrl = controller()
    actors = make_actors(4)
    out["durable: no-op sync RPC (check_alive)"] = timed(lambda: ray.get(ctrl.check_alive.remote()))
    ray.get(ctrl._register_shutdown_cleanup_actor.remote(actors[0]))
    out["durable: already registered (async method + handle argument, no GCS)"] = timed(
        lambda: ray.get(ctrl._register_shutdown_cleanup_actor.remote(actors[0]))
    )
    s = Samples()
    for _ in range(max(1, n // len(actors))):
        for a in actors:
            s.add(_register(ctrl, a))
        _unregister_all(actors)
    out["durable: new registration (+ KV put and actor lookup, concurrent)"] = s.ms()

    gcs = driver_gcs()
    store = kv_store(gcs, timeout_s=5)
    key = probe_key("probe")
    actor_id = actors[0]._actor_id

    async def probe() -> dict:
        async def amed(make) -> float:
            xs = []
            for _ in range(n):
                t = time.perf_counter()
                await make()
                xs.append(time.perf_counter() - t)
            return statistics.median(xs) * 1000

        # AsyncKvStore.put: the put the controller makes.
        put = lambda: store.aio.put(key, b"x" * 300)  # noqa: E731
        look = lambda: gcs.async_get_all_actor_info(actor_id=actor_id, timeout=5)  # noqa: E731
        return {
            "GCS KV put alone (from the driver)": await amed(put),
            "GCS actor lookup alone (from the driver)": await amed(look),
            "both concurrently (from the driver)": await amed(lambda: asyncio.gather(put(), look())),
        }

    out.update(asyncio.run(probe()))
    store.delete(key)
    stop_serve()
    kill_actors(actors)
    for k, v in out.items():
        log(f"breakdown: {k}: {v:.3f} ms")
    return out


def shutdown_time(sizes: Sizes) -> list[dict]:
    """serve.shutdown() with one app and K registered actors: plain vs durable."""
    out = []
    for k in sizes.shutdown_ks:
        row = {"k": k}
        for kind in (PLAIN, DURABLE):
            s = Samples()
            for _ in range(sizes.shutdown_reps):
                start_serve(kind)
                serve.run(BenchApp.bind(), name="bench", route_prefix=None)
                actors = make_actors(k)
                ctrl = controller()
                ray.get([ctrl._register_shutdown_cleanup_actor.remote(a) for a in actors])
                s.add(stop_serve())
                kill_actors(actors)
            row[kind] = s.p50
        out.append(row)
        log(f"shutdown K={k}: plain {row[PLAIN]:.2f} s, durable {row[DURABLE]:.2f} s")
    return out
