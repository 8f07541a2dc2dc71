"""Issue 14, target 1: a new registration at its floor.

Per round and kind (plain, durable; which goes first alternates), on one Serve instance:

1. ``named``: new registrations through the upstream ``_register_shutdown_cleanup_actor``,
   one at a time, of detached named actors with a namespace created beforehand (GCS knows
   them; serialized handles ~300 bytes);
2. ``anon``: anonymous actors, each registered right after its ``.remote()`` returned
   (GCS may not know it yet: Ray registers an anonymous actor asynchronously);
3. ``public`` (durable only): ``serve_cleanup.register(actor)`` of named actors created
   beforehand, one at a time: the public path and its extra checks;
4. ``put``: one GCS KV put from the driver (300-byte value), awaited one at a time;
5. a burst: ``burst_registrants`` driver threads at once, each submitting its
   ``burst_per_registrant`` new registrations at once; controller CPU (psutil on the
   controller's pid) per registration, and throughput;
6. the probe: an async Ray actor (started once per section) doing as many
   ``await KvStore(gcs_client).aio.put(...)`` calls as the burst registered, as many in
   flight at once (``burst_registrants`` x ``burst_per_registrant``; each repeated
   ``probe_repeat`` times by the coroutine that made it), its own process CPU (psutil)
   per put: what one async KV put costs an actor process.
   Also one put at a time, and through a separate ``GcsClient(address=)`` (as the durable
   controller at 1984f6e builds its own), for reference.

Every put here is ``AsyncKvStore.put`` (``serve_cleanup.serve_adapter.kv``), the call the
durable controller makes to store a record, on a key below the store's prefix: the floor
is one put exactly as the controller makes it (the store's key composition and coroutine
frames, about a microsecond, included).

Every actor asks for a resource no node has: PENDING_CREATION, live in the actor table
(every call takes the full new-registration path), no worker process. Figures are pooled
medians over the rounds, and each round's own ratio beside them.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass

import ray
from ray import cloudpickle

from benchmarks.harness import (
    DURABLE,
    PLAIN,
    Samples,
    burst as run_burst,
    controller,
    controller_process,
    cores_over,
    cpu_s,
    gcs,
    handle_bytes,
    kill_actors,
    kv_store,
    log,
    median,
    own_gcs_client,
    pending_actors,
    probe_key,
    purge_records,
    ratio,
    register_public,
    register_upstream,
    start_serve,
    stop_serve,
)


@dataclass
class FloorSizes:
    rounds: int = 4
    named_per_round: int = 150
    anon_per_round: int = 60
    public_per_round: int = 60
    puts_per_round: int = 150
    burst_registrants: int = 8
    burst_per_registrant: int = 50
    probe_repeat: int = 5        # the probe repeats the burst's puts (CPU times tick every 10 ms)
    settle_s: float = 1.0


QUICK = FloorSizes(rounds=1, named_per_round=10, anon_per_round=5, public_per_round=5, puts_per_round=10,
                   burst_registrants=2, burst_per_registrant=3, probe_repeat=1, settle_s=0.1)

PROBE_PREFIX = probe_key("probe-")

# Workers need not import the benchmarks package: ship this module's classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@ray.remote(num_cpus=0)
class KvPutProbe:
    """What one async GCS KV put costs an actor process (its own CPU, psutil)."""

    async def pid(self) -> int:
        return os.getpid()

    async def measure(self, groups: int, per_group: int, value_size: int, idle_s: float, repeat: int) -> dict:
        import psutil

        proc = psutil.Process()
        # The put the controller makes is AsyncKvStore.put: measure through it, over the
        # worker's GCS client and over one of its own (the controller builds its own).
        worker_kv = kv_store(gcs(), timeout_s=10)
        own_kv = kv_store(own_gcs_client(), timeout_s=10)
        value = os.urandom(value_size)
        n = groups * per_group * repeat  # repeated: psutil's CPU times tick every 10 ms

        def cpu() -> float:
            t = proc.cpu_times()
            return t.user + t.system

        async def timed(coro_factory) -> tuple[float, float]:
            c0, t0 = cpu(), time.perf_counter()
            await coro_factory()
            return cpu() - c0, time.perf_counter() - t0

        c0, t0 = cpu(), time.perf_counter()
        await asyncio.sleep(idle_s)
        idle = (cpu() - c0) / (time.perf_counter() - t0)

        def burst_shape(store, times: int = repeat):
            # groups x per_group puts in flight at once, each awaited inside a coroutine of
            # its own that then makes its next one (``times`` each), as the controller awaits
            # its put inside the registration's own task. Not a gather over the puts
            # themselves: that would add a task per put (~4 µs of CPU here) that the
            # controller's put does not cost.
            async def run():
                async def slot(key: str):
                    for _ in range(times):
                        await store.aio.put(key, value)
                await asyncio.gather(*(slot(PROBE_PREFIX + f"{g}-{i}")
                                       for g in range(groups) for i in range(per_group)))
            return run

        def one_at_a_time(store):
            async def run():
                for i in range(n):
                    await store.aio.put(PROBE_PREFIX + f"s-{i}", value)
            return run

        await burst_shape(worker_kv, 1)()  # warm up
        out = {"idle_cores": idle, "puts": n}
        for label, factory in (("burst", burst_shape(worker_kv)), ("sequential", one_at_a_time(worker_kv)),
                               ("burst_own_client", burst_shape(own_kv))):
            busy, took = await timed(factory)
            out[label] = {"cpu_ms": busy / n * 1000, "cpu_ms_minus_idle": (busy - idle * took) / n * 1000,
                          "wall_s": took}
        worker_kv.delete_prefix(PROBE_PREFIX)
        return out


def kv_put_samples(n: int) -> list[float]:
    """One KV put at a time from the driver, the size of a record: ``AsyncKvStore.put``,
    the put the controller makes."""
    store = kv_store(timeout_s=5)
    key = PROBE_PREFIX + "driver"
    value = os.urandom(300)

    async def run() -> list[float]:
        xs = []
        for _ in range(n + 3):
            t = time.perf_counter()
            await store.aio.put(key, value)
            xs.append(time.perf_counter() - t)
        return xs[3:]

    try:
        return asyncio.run(run())
    finally:
        store.delete(key)


def _anon_registrations(ctrl, n: int) -> tuple[Samples, list, list[int]]:
    s, made, sizes = Samples(), [], []
    for _ in range(n):
        [a] = pending_actors(1, named=False)
        s.add(register_upstream(ctrl, a))  # right after .remote(): GCS may not know it yet
        made.append(a)
    sizes = [len(handle_bytes(a)) for a in made[:20]]
    return s, made, sizes


def floor(sizes: FloorSizes) -> dict:
    rounds: list[dict] = []
    pooled = {k: {PLAIN: Samples(), DURABLE: Samples()} for k in ("named", "anon")}
    public, puts = Samples(), Samples()
    handle_sizes = {"named": [], "anon": []}
    probe = KvPutProbe.remote()
    ray.get(probe.pid.remote())
    try:
        for rnd in range(sizes.rounds):
            row: dict = {"round": rnd + 1, "order": []}
            round_puts = Samples()
            for kind in ((PLAIN, DURABLE) if rnd % 2 == 0 else (DURABLE, PLAIN)):
                row["order"].append(kind)
                start_serve(kind)
                ctrl = controller()
                proc = controller_process()
                named = pending_actors(sizes.named_per_round + 3)
                groups = [pending_actors(sizes.burst_per_registrant) for _ in range(sizes.burst_registrants)]
                for a in named[:3]:  # warm the path
                    register_upstream(ctrl, a)
                s_named = Samples([register_upstream(ctrl, a) for a in named[3:]])
                s_anon, anon, anon_sizes = _anon_registrations(ctrl, sizes.anon_per_round)
                handle_sizes["named"] += [len(handle_bytes(a)) for a in named[:20]]
                handle_sizes["anon"] += anon_sizes
                for k, s in (("named", s_named), ("anon", s_anon)):
                    pooled[k][kind].values.extend(s.values)
                k_row = {"named_p50": s_named.ms(), "anon_p50": s_anon.ms(), "anon_max": max(s_anon.values) * 1000}
                extra = []
                if kind == DURABLE:
                    extra = pending_actors(sizes.public_per_round + 2)
                    for a in extra[:2]:
                        register_public(a)
                    s_public = Samples([register_public(a) for a in extra[2:]])
                    public.values.extend(s_public.values)
                    k_row["public_p50"] = s_public.ms()
                for x in kv_put_samples(sizes.puts_per_round):
                    round_puts.add(x)
                time.sleep(sizes.settle_s / 2)
                idle = cores_over(proc, sizes.settle_s)
                c0 = cpu_s(proc)
                took = run_burst(ctrl, groups)
                busy = cpu_s(proc) - c0
                n = sizes.burst_registrants * sizes.burst_per_registrant
                k_row.update({"burst_per_s": n / took, "burst_cpu_ms": busy / n * 1000,
                              "burst_cpu_ms_minus_idle": (busy - idle * took) / n * 1000, "idle_cores": idle})
                k_row["probe"] = ray.get(probe.measure.remote(sizes.burst_registrants, sizes.burst_per_registrant,
                                                              300, sizes.settle_s, sizes.probe_repeat))
                row[kind] = k_row
                stop_serve()
                purge_records()
                kill_actors(named + anon + extra + [a for g in groups for a in g])
                log(f"floor round {rnd + 1}/{sizes.rounds} {kind}: named p50 {k_row['named_p50']:.2f} ms, "
                    f"anon p50 {k_row['anon_p50']:.2f} ms" +
                    (f", public p50 {k_row['public_p50']:.2f} ms" if "public_p50" in k_row else "") +
                    f", burst {k_row['burst_per_s']:.0f}/s at {k_row['burst_cpu_ms']:.2f} ms CPU each; "
                    f"probe put {k_row['probe']['burst']['cpu_ms']:.3f} ms CPU")
            puts.values.extend(round_puts.values)
            row["put_p50"] = round_puts.ms()
            p, d = row[PLAIN], row[DURABLE]
            probe_cpu = median([p["probe"]["burst"]["cpu_ms"], d["probe"]["burst"]["cpu_ms"]])
            row["ratios"] = {
                "named": ratio(d["named_p50"], p["named_p50"] + row["put_p50"]),
                "anon": ratio(d["anon_p50"], p["anon_p50"] + row["put_p50"]),
                "burst_cpu": ratio(d["burst_cpu_ms"], p["burst_cpu_ms"] + probe_cpu),
                "burst_cpu_vs_plain": ratio(d["burst_cpu_ms"], p["burst_cpu_ms"]),
                "throughput": ratio(d["burst_per_s"], p["burst_per_s"]),
                "public_vs_named": ratio(d["public_p50"], d["named_p50"]),
            }
            rounds.append(row)
    finally:
        kill_actors([probe])

    def per_kind(kind: str, key: str) -> float:
        return median(r[kind][key] for r in rounds)

    probe_cpu = {label: median(r[k]["probe"][label]["cpu_ms"] for r in rounds for k in (PLAIN, DURABLE))
                 for label in ("burst", "sequential", "burst_own_client")}
    out = {
        "rounds": rounds,
        "n_rounds": sizes.rounds,
        "n_named": len(pooled["named"][PLAIN].values), "n_anon": len(pooled["anon"][PLAIN].values),
        "n_public": len(public.values), "n_puts": len(puts.values),
        "put_p50": puts.ms(),
        "probe_put_cpu_ms": probe_cpu["burst"],
        "probe_put_cpu_ms_sequential": probe_cpu["sequential"],
        "probe_put_cpu_ms_own_client": probe_cpu["burst_own_client"],
        "burst_registrants": sizes.burst_registrants,
        "burst_registrations": sizes.burst_registrants * sizes.burst_per_registrant,
        "handle_bytes": {k: (sum(v) / len(v) if v else 0) for k, v in handle_sizes.items()},
        "public_p50": public.ms(), "public_p99": public.ms("p99"),
    }
    for kind in (PLAIN, DURABLE):
        out[kind] = {
            "named_p50": pooled["named"][kind].ms(), "named_p99": pooled["named"][kind].ms("p99"),
            "anon_p50": pooled["anon"][kind].ms(), "anon_p99": pooled["anon"][kind].ms("p99"),
            "burst_cpu_ms": per_kind(kind, "burst_cpu_ms"),
            "burst_cpu_ms_minus_idle": per_kind(kind, "burst_cpu_ms_minus_idle"),
            "burst_per_s": per_kind(kind, "burst_per_s"), "idle_cores": per_kind(kind, "idle_cores"),
        }
    return out
