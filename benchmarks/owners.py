"""Issue 11's target 4 (kept for ``--only owners``): many owners, idle controller CPU.

50 apps x 4 deployments at zero replicas, each deployment and app owning a registration
of an actor that stays PENDING_CREATION; idle controller CPU over a window and Serve's
control-loop duration (``get_health_metrics``), plain vs durable.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import ray
from ray import serve

from benchmarks.harness import (
    DURABLE,
    PLAIN,
    controller,
    controller_process,
    controller_status,
    cpu_s,
    kill_actors,
    log,
    pending_actors,
    purge_records,
    register_owned,
    start_serve,
    stop_serve,
)


@dataclass
class OwnerSizes:
    owner_apps: int = 50
    owner_deployments: int = 4   # per app
    owner_settle_s: float = 5.0
    owner_window_s: float = 12.0
    owner_reps: int = 2


QUICK = OwnerSizes(owner_apps=2, owner_deployments=2, owner_settle_s=0.2, owner_window_s=0.5, owner_reps=1)


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


def owners(sizes: OwnerSizes) -> dict:
    """Target 4: the same apps on both kinds, each deployment and app owning a record."""
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
                        register_owned(a, scope="deployment", app=app, deployment=f"d{j}")
                    else:
                        ray.get(ctrl._register_shutdown_cleanup_actor.remote(a))
                a = next(it)
                if kind == DURABLE:
                    register_owned(a, scope="app", app=app)
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
                   "records": (controller_status()["records"] if kind == DURABLE
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
