"""Issue 11's five targets, each measured side by side with plain Serve in one run.

1. ``floor``   new-registration p50 vs (plain p50 + one GCS KV put p50), same run; and
   repeat-registration p50 vs plain.
2. ``burst``   controller CPU per new registration and throughput, 8 registrants at once
   (part of the same rounds as 1).
3. ``scale``   100,000 stored records: rehydrate, controller RSS growth, ``serve-cleanup
   list --json``, new-registration p50 vs 10 records, ``serve.shutdown()`` with records
   of actors that are already dead.
4. ``owners``  50 apps x 4 deployments at zero replicas, each owning records: idle
   controller CPU and Serve's control-loop duration vs plain.
5. shutdown with K registered real actors vs plain (``cases.shutdown_time``).

Registrations in 1, 2 and 4 go to actors that stay PENDING_CREATION: they ask for a
resource no node has, so the actor table holds them as live (every registration takes
the full new-registration path, the durable controller's liveness check included) while
no worker process is started for them. Real actors cost ~100 MB each here; 5 uses real
ones. Controller CPU comes from psutil on the controller's pid (Serve's own ``get_pid``,
on either kind of controller).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import psutil
import ray
from ray import cloudpickle, serve

from benchmarks.harness import (
    burst as run_burst,
    DURABLE,
    PLAIN,
    Samples,
    controller,
    kill_actors,
    kill_controller_and_wait,
    log,
    purge_records,
    seed_synthetic,
    start_serve,
    stop_serve,
    wait_for,
)
from serve_cleanup import _compat
from serve_cleanup.core import records

# Workers need not import the benchmarks package: ship this module's classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass
class TargetSizes:
    rounds: int = 4              # A/B rounds of targets 1 and 2 (kinds alternate first)
    new_per_round: int = 160     # timed new registrations per round and side
    repeat_per_round: int = 160  # timed repeat registrations per round and side
    puts_per_round: int = 160    # driver GCS KV puts per round
    burst_registrants: int = 8
    burst_per_registrant: int = 50
    scale_records: int = 100_000
    scale_base_records: int = 10
    scale_samples: int = 300
    shutdown_wait_s: float = 60.0
    owner_apps: int = 50
    owner_deployments: int = 4   # per app
    owner_settle_s: float = 5.0
    owner_window_s: float = 12.0
    owner_reps: int = 2
    settle_s: float = 1.0        # pause before reading a controller's memory or idle CPU


QUICK = TargetSizes(rounds=1, new_per_round=10, repeat_per_round=10, puts_per_round=10,
                    burst_registrants=2, burst_per_registrant=3, scale_records=300,
                    scale_base_records=10, scale_samples=5, shutdown_wait_s=30.0,
                    owner_apps=2, owner_deployments=2, owner_settle_s=0.2, owner_window_s=0.5,
                    owner_reps=1, settle_s=0.1)

NEVER_RESOURCE = "serve_cleanup_bench_never"


@ray.remote(num_cpus=0, resources={NEVER_RESOURCE: 1})
class PendingActor:
    """Never scheduled: PENDING_CREATION in the actor table, and no process."""


def pending_actors(n: int) -> list:
    tag = os.urandom(4).hex()
    return [
        PendingActor.options(lifetime="detached", name=f"pending-{tag}-{i}",
                             namespace="serve-cleanup-bench").remote()
        for i in range(n)
    ]


def controller_process() -> psutil.Process:
    return psutil.Process(ray.get(controller().get_pid.remote()))


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _register(ctrl, actor) -> float:
    started = time.perf_counter()
    ray.get(ctrl._register_shutdown_cleanup_actor.remote(actor))
    return time.perf_counter() - started


def kv_put_samples(n: int) -> list[float]:
    """One GCS KV put at a time from the driver, the size of a record, Serve's namespace."""
    gcs = _compat.driver_gcs_client()
    key = b"serve-cleanup-bench-floor-probe"
    value = os.urandom(300)

    async def run() -> list[float]:
        xs = []
        for _ in range(n + 3):
            t = time.perf_counter()
            await gcs.async_internal_kv_put(key, value, True, _compat.KV_NAMESPACE, timeout=5)
            xs.append(time.perf_counter() - t)
        return xs[3:]

    try:
        return asyncio.run(run())
    finally:
        gcs.internal_kv_del(key, False, _compat.KV_NAMESPACE)


def floor_and_burst(sizes: TargetSizes) -> dict:
    """Targets 1 and 2. Per round and kind: one Serve instance; new registrations one at a
    time, repeat registrations of one registered actor, driver KV puts, then a burst."""
    new = {PLAIN: Samples(), DURABLE: Samples()}
    repeat = {PLAIN: Samples(), DURABLE: Samples()}
    puts = Samples()
    burst = {PLAIN: [], DURABLE: []}
    controller_code = "?"
    per_round = {PLAIN: [], DURABLE: []}  # new-registration p50 of each round (drift check)
    for rnd in range(sizes.rounds):
        for kind in ((PLAIN, DURABLE) if rnd % 2 == 0 else (DURABLE, PLAIN)):
            start_serve(kind)
            ctrl = controller()
            proc = controller_process()
            fresh = pending_actors(sizes.new_per_round + 4)
            groups = [pending_actors(sizes.burst_per_registrant) for _ in range(sizes.burst_registrants)]
            for a in fresh[:3]:  # warm the path
                _register(ctrl, a)
            this_round = Samples()
            for a in fresh[4:]:
                this_round.add(_register(ctrl, a))
            new[kind].values.extend(this_round.values)
            per_round[kind].append(this_round.ms())
            for _ in range(sizes.repeat_per_round):
                repeat[kind].add(_register(ctrl, fresh[0]))  # registered while warming up
            for x in kv_put_samples(sizes.puts_per_round):
                puts.add(x)
            time.sleep(sizes.settle_s / 2)
            c0, t0 = cpu_s(proc), time.perf_counter()
            time.sleep(sizes.settle_s)
            idle = (cpu_s(proc) - c0) / (time.perf_counter() - t0)
            c0 = cpu_s(proc)
            took = run_burst(ctrl, groups)
            busy = cpu_s(proc) - c0
            n = sizes.burst_registrants * sizes.burst_per_registrant
            burst[kind].append({"per_s": n / took, "cpu_ms": busy / n * 1000,
                                "cpu_ms_minus_idle": (busy - idle * took) / n * 1000,
                                "idle_cores": idle})
            if kind == DURABLE:  # which controller code ran (CleanupCore's status has "loaded")
                status = ray.get(ctrl.serve_cleanup_status.remote())
                controller_code = "CleanupCore" if "loaded" in status else "pre-core"
            stop_serve()
            purge_records()
            kill_actors(fresh + [a for g in groups for a in g])
            log(f"floor/burst round {rnd + 1}/{sizes.rounds} {kind}: new p50 {per_round[kind][-1]:.2f} ms, "
                f"repeat p50 {repeat[kind].ms():.2f} ms, put p50 {puts.ms():.2f} ms, burst "
                f"{burst[kind][-1]['per_s']:.0f}/s at {burst[kind][-1]['cpu_ms']:.2f} ms CPU each")

    def med(xs: list[dict], k: str) -> float:
        return sorted(x[k] for x in xs)[len(xs) // 2]

    out = {
        "controller_code": controller_code,
        "n_new": len(new[PLAIN].values), "n_repeat": len(repeat[PLAIN].values), "n_puts": len(puts.values),
        "put_p50": puts.ms(),
        "burst_registrations": sizes.burst_registrants * sizes.burst_per_registrant,
        "burst_registrants": sizes.burst_registrants, "burst_reps": sizes.rounds,
    }
    for kind in (PLAIN, DURABLE):
        out[kind] = {
            "new_p50": new[kind].ms(), "new_p99": new[kind].ms("p99"), "new_p50_by_round": per_round[kind],
            "repeat_p50": repeat[kind].ms(), "repeat_p99": repeat[kind].ms("p99"),
            "burst_per_s": med(burst[kind], "per_s"), "burst_cpu_ms": med(burst[kind], "cpu_ms"),
            "burst_cpu_ms_minus_idle": med(burst[kind], "cpu_ms_minus_idle"),
            "idle_cores": med(burst[kind], "idle_cores"),
        }
    return out


def _record_count() -> int:
    gcs = _compat.driver_gcs_client()
    prefix = _compat.kv_key(records.KEY_PREFIX)
    return len(gcs.internal_kv_keys(prefix, _compat.KV_NAMESPACE, timeout=30))


def _cli_list_json_s() -> tuple[float, int]:
    """Wall time of ``serve-cleanup list --json`` in a fresh process, and its entries."""
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    with tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "serve_cleanup.cli", "list", "--json"],
                              stdout=out, stderr=subprocess.PIPE, text=True, env=env, timeout=600)
        took = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"serve-cleanup list --json failed: {proc.stderr[-2000:]}")
        out.seek(0)
        return took, len(json.load(out))


def scale(sizes: TargetSizes) -> dict:
    """Target 3 (durable only; the limits are absolute or relative to 10 records)."""
    out: dict = {"records": sizes.scale_records, "base_records": sizes.scale_base_records}
    start_serve(DURABLE)
    for label, n in (("base", sizes.scale_base_records), ("big", sizes.scale_records)):
        purge_records()
        started = time.perf_counter()
        seed_synthetic(n)
        seeded_s = time.perf_counter() - started
        kill_controller_and_wait()  # the restarted controller rehydrates all n
        ctrl = controller()
        time.sleep(sizes.settle_s)  # let the new process settle before reading its memory
        status = ray.get(ctrl.serve_cleanup_status.remote())
        proc = controller_process()
        row = {"records_at_start": status["records"], "rehydrate_ms": status["rehydrate_ms"],
               "rss_mb": proc.memory_info().rss / 2**20, "seed_s": seeded_s}
        fresh = pending_actors(sizes.scale_samples + 3)
        for a in fresh[:3]:
            _register(ctrl, a)
        s = Samples()
        for a in fresh[3:]:
            s.add(_register(ctrl, a))
        row["new_p50"], row["new_p99"] = s.ms(), s.ms("p99")
        row["records_after_samples"] = ray.get(ctrl.serve_cleanup_status.remote())["records"]
        if label == "big":
            row["list_json_s"], row["list_json_entries"] = _cli_list_json_s()
        out[label] = row
        kill_actors(fresh)
        log(f"scale {n} records: rehydrate {row['rehydrate_ms']:.0f} ms, RSS {row['rss_mb']:.0f} MB, "
            f"new p50 {row['new_p50']:.2f} ms" + (f", list --json {row['list_json_s']:.2f} s" if label == "big" else ""))
    # serve.shutdown() with every record's actor already dead (none of them ever existed
    # in this cluster, so the actor table does not know them: as after GCS evicted them).
    left_before = _record_count()
    started = time.perf_counter()
    serve.shutdown()
    returned_s = time.perf_counter() - started
    left_at_return = left_end = _record_count()
    gone_s = None
    # Poll gently: listing 100,000 keys is itself GCS work the shutdown competes with.
    while left_end and time.perf_counter() - started < sizes.shutdown_wait_s:
        time.sleep(0.25)
        left_end = _record_count()
    if left_end == 0:
        gone_s = returned_s if left_at_return == 0 else time.perf_counter() - started
    wait_for(lambda: _no_controller(), 120, "the controller to exit")
    out["shutdown"] = {"records_before": left_before, "returned_s": returned_s,
                       "left_at_return": left_at_return, "all_gone_s": gone_s,
                       "left_at_end": left_end, "waited_s": sizes.shutdown_wait_s}
    log(f"scale shutdown: returned in {returned_s:.1f} s with {left_at_return} records left; "
        f"all gone after {gone_s if gone_s is None else round(gone_s, 1)} s")
    purge_records()
    stop_serve()
    out["rss_growth_mb"] = out["big"]["rss_mb"] - out["base"]["rss_mb"]
    return out


def _no_controller() -> bool:
    from serve_cleanup.client.controller import find_controller

    return find_controller() is None


# Scaled to zero: Serve 2.60 refuses num_replicas=0 in @serve.deployment, so autoscaling
# with no replica until a request arrives (none does).
@serve.deployment(
    autoscaling_config={"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1},
    ray_actor_options={"num_cpus": 0},
)
class Idle:
    def __init__(self, *children) -> None:
        self.children = children

    def __call__(self) -> str:
        return "ok"


def _owner_apps(n_apps: int, n_deps: int) -> list:
    targets = []
    for i in range(n_apps):
        children = [Idle.options(name=f"d{j}").bind() for j in range(1, n_deps)]
        targets.append(serve.RunTarget(Idle.options(name="d0").bind(*children), name=f"owner-{i}", route_prefix=None))
    return targets


def owners(sizes: TargetSizes) -> dict:
    """Target 4: the same apps on both kinds, each deployment and app owning a record."""
    import serve_cleanup

    result = {PLAIN: [], DURABLE: []}
    for rep in range(sizes.owner_reps):
        for kind in ((PLAIN, DURABLE) if rep % 2 == 0 else (DURABLE, PLAIN)):
            start_serve(kind)
            serve.run_many(_owner_apps(sizes.owner_apps, sizes.owner_deployments))
            ctrl = controller()
            owned = pending_actors(sizes.owner_apps * (sizes.owner_deployments + 1))
            it = iter(owned)
            for i in range(sizes.owner_apps):
                app = f"owner-{i}"
                for j in range(sizes.owner_deployments):
                    a = next(it)
                    if kind == DURABLE:
                        serve_cleanup.register(a, scope="deployment", app=app, deployment=f"d{j}")
                    else:
                        ray.get(ctrl._register_shutdown_cleanup_actor.remote(a))
                a = next(it)
                if kind == DURABLE:
                    serve_cleanup.register(a, scope="app", app=app)
                else:
                    ray.get(ctrl._register_shutdown_cleanup_actor.remote(a))
            proc = controller_process()
            time.sleep(sizes.owner_settle_s)
            c0, t0 = cpu_s(proc), time.perf_counter()
            time.sleep(sizes.owner_window_s)
            cores = (cpu_s(proc) - c0) / (time.perf_counter() - t0)
            health = ray.get(ctrl.get_health_metrics.remote())
            loop = health.get("loop_duration_s") or {}
            row = {"idle_cores": cores, "loop_mean_ms": loop.get("mean", 0.0) * 1000,
                   "loop_max_ms": loop.get("max", 0.0) * 1000,
                   "records": (ray.get(ctrl.serve_cleanup_status.remote())["records"] if kind == DURABLE
                               else len(owned))}
            result[kind].append(row)
            log(f"owners rep {rep + 1} {kind}: idle CPU {cores * 100:.1f}% of a core, control loop "
                f"mean {row['loop_mean_ms']:.2f} ms, {row['records']} registrations")
            stop_serve()
            purge_records()
            kill_actors(owned)

    def med(kind: str, k: str) -> float:
        return statistics.median(r[k] for r in result[kind])

    return {
        "by_rep": result,
        "apps": sizes.owner_apps, "deployments_per_app": sizes.owner_deployments,
        "reps": sizes.owner_reps, "window_s": sizes.owner_window_s,
        **{kind: {"idle_cores": med(kind, "idle_cores"), "loop_mean_ms": med(kind, "loop_mean_ms"),
                  "loop_max_ms": med(kind, "loop_max_ms"), "records": med(kind, "records")}
           for kind in (PLAIN, DURABLE)},
    }
