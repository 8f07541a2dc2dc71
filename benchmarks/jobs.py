"""Issue 22, target 3: job owners with many finished jobs in GCS's job table.

One local cluster. Serve (the durable controller) is started from a short-lived driver
subprocess (``harness.start_serve_elsewhere``): ``scope="job"`` refuses the job that
started Serve. Two kinds of job owner: this benchmark driver's own job, which runs
throughout (``register(a, scope="job")``, the default job), and jobs that GCS's table
holds as running but that have no driver process (``harness.make_running_jobs``: a
driver's ``AddJob`` without its end), one per registration (``register(a, scope="job",
job=<its id>)``): each registration is its job's first, so whatever the controller
learned of a job from an earlier registration does not help it. 100 owning jobs without
100 driver processes on 2 cores.

At each level of finished jobs in the job table (``levels``: the empty table, i.e. this
driver's and the Serve starter's jobs, then ``finished_jobs`` more), first a probe (from
this driver, its own GcsClient, awaited one at a time): ``probe_n`` reads of the whole
table and ``probe_n`` reads filtered to one job, both with the two skip flags the
controller sets (p50 ms, gcs_server CPU ms per call). Then per rep:

* ``owners`` new registrations owned by this driver's job, ``owners`` each owned by a new
  running job, and ``owners`` serve-wide ones (a control: no job check), in turn (the
  order rotating), each of a named detached PENDING_CREATION actor (no process), one at a
  time (``warmup`` of each first, not timed): registration p50 of each kind;
* the serve-wide ones unregistered; ``settle_s`` of rest, then a ``window_s`` window of
  gcs_server's and the controller's CPU (psutil on their pids) with the ``2 * owners``
  job-owned registrations held (``owners`` + 1 owning jobs; ``idle_owned``: the
  controller reads the whole job table while a job owns a record);
* those unregistered too, ``settle_s``, and the same window with no job owner
  (``idle_no_owner``: no job-table read), as a control;
* the running jobs ended (``MarkJobFinished``: they add ``owners + warmup`` finished jobs
  to the table per rep, also at the "empty" level), the actors killed.

The finished jobs (``harness.make_finished_jobs``) are what a driver's start and end
leave in the table: per job ``GetNextJobID``, ``AddJob`` (a copy of this driver's
``JobTableData`` with that id) and ``MarkJobFinished``, over GCS's gRPC service, 200 jobs
in flight; no driver process. GCS keeps finished jobs in its table (no cap).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import psutil
import ray

from benchmarks.harness import (
    DURABLE,
    Samples,
    controller_process,
    cpu_s,
    finish_jobs,
    gcs_server_process,
    job_read_probe,
    job_table,
    kill_actors,
    log,
    make_finished_jobs,
    make_running_jobs,
    median,
    pending_actors,
    profiled,
    purge_records,
    record_count,
    register_public,
    start_serve_elsewhere,
    stop_serve,
    unregister,
)


@dataclass
class JobSizes:
    finished_jobs: int = 10_000
    owners: int = 100
    reps: int = 2
    warmup: int = 5
    settle_s: float = 3.0
    window_s: float = 30.0
    probe_n: int = 50


QUICK = JobSizes(finished_jobs=300, owners=10, reps=1, warmup=2, settle_s=0.2, window_s=2.0, probe_n=5)


def _stats(s: Samples) -> dict:
    return {"p50_ms": s.ms(), "p90_ms": s.ms("p90"), "max_ms": max(s.values) * 1000, "n": len(s.values)}


def _busy(t) -> float:
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


def _window(gcs_proc, ctrl_proc, seconds: float) -> dict:
    """gcs_server's and the controller's CPU over ``seconds`` (cores), and the whole
    machine's (cores busy: other work on this machine shows here)."""
    m0 = psutil.cpu_times()
    g0, c0, t0 = cpu_s(gcs_proc), cpu_s(ctrl_proc), time.perf_counter()
    time.sleep(seconds)
    took = time.perf_counter() - t0
    m1 = psutil.cpu_times()
    return {"gcs_cores": (cpu_s(gcs_proc) - g0) / took, "controller_cores": (cpu_s(ctrl_proc) - c0) / took,
            "machine_cores": (_busy(m1) - _busy(m0)) / took, "seconds": took}


def _level(sizes: JobSizes, gcs_proc, ctrl_proc, me: str) -> dict:
    table = job_table()
    row: dict = {"jobs": len(table), "finished": sum(table.values()),
                 "probe": {"whole": job_read_probe(sizes.probe_n, gcs_proc),
                           "filtered": job_read_probe(sizes.probe_n, gcs_proc, job_id=me)}}
    own_all, new_all, serve_all = Samples(), Samples(), Samples()
    reps = []
    for rep in range(sizes.reps):
        n = sizes.owners + sizes.warmup
        own, other, wide = pending_actors(n), pending_actors(n), pending_actors(n)
        running = make_running_jobs(n)
        warm = sizes.warmup
        for a, b, c, job in zip(own[:warm], other[:warm], wide[:warm], running[:warm]):
            register_public(a, scope="job")
            register_public(b, scope="job", job=job)
            register_public(c)
        o, x, w = Samples(), Samples(), Samples()
        with profiled(ctrl_proc.pid, f"jobs-{row['jobs']}-register-controller") if rep == 0 else nullcontext():
            for i, (a, b, c, job) in enumerate(zip(own[warm:], other[warm:], wide[warm:], running[warm:])):
                turn = [(o, a, {"scope": "job"}), (x, b, {"scope": "job", "job": job}), (w, c, {})]
                for samples, actor, options in turn[i % 3:] + turn[:i % 3]:
                    samples.add(register_public(actor, **options))
        unregister(wide)
        unregister(own[:warm] + other[:warm])
        stored = record_count()
        time.sleep(sizes.settle_s)
        idle_owned = _window(gcs_proc, ctrl_proc, sizes.window_s)
        unregister(own[warm:] + other[warm:])
        time.sleep(sizes.settle_s)
        idle_none = _window(gcs_proc, ctrl_proc, sizes.window_s)
        finish_jobs(running)
        kill_actors(own + other + wide)
        own_all.values.extend(o.values)
        new_all.values.extend(x.values)
        serve_all.values.extend(w.values)
        r = {"job_p50_ms": o.ms(), "new_job_p50_ms": x.ms(), "serve_p50_ms": w.ms(), "stored_in_window": stored,
             "idle_owned": idle_owned, "idle_no_owner": idle_none}
        reps.append(r)
        log(f"jobs: {row['jobs']:,} jobs in the table ({row['finished']:,} finished), rep {rep + 1}: register p50 "
            f"owned by this driver's job {r['job_p50_ms']:.2f} ms, by a new running job each "
            f"{r['new_job_p50_ms']:.2f} ms, serve-wide {r['serve_p50_ms']:.2f} ms; idle gcs_server "
            f"{idle_owned['gcs_cores'] * 100:.2f} % with {stored} job-owned records, "
            f"{idle_none['gcs_cores'] * 100:.2f} % with none; controller {idle_owned['controller_cores'] * 100:.2f} / "
            f"{idle_none['controller_cores'] * 100:.2f} %; machine busy {idle_owned['machine_cores']:.2f} / "
            f"{idle_none['machine_cores']:.2f} cores")
    row.update({
        "by_rep": reps, "job": _stats(own_all), "new_job": _stats(new_all), "serve": _stats(serve_all),
        "gcs_idle_owned": median(r["idle_owned"]["gcs_cores"] for r in reps),
        "gcs_idle_no_owner": median(r["idle_no_owner"]["gcs_cores"] for r in reps),
        "controller_idle_owned": median(r["idle_owned"]["controller_cores"] for r in reps),
        "controller_idle_no_owner": median(r["idle_no_owner"]["controller_cores"] for r in reps),
    })
    p = row["probe"]
    log(f"jobs: probe at {row['jobs']:,} jobs: whole-table read p50 {p['whole']['p50_ms']:.2f} ms (GCS CPU "
        f"{p['whole']['gcs_cpu_ms']:.2f} ms a call, {p['whole']['returned']:,} returned); filtered "
        f"{p['filtered']['p50_ms']:.2f} ms (GCS CPU {p['filtered']['gcs_cpu_ms']:.2f} ms)")
    return row


def jobs(sizes: JobSizes) -> dict:
    """Issue 22, target 3: job-owned registration p50 and gcs_server idle CPU with
    ``finished_jobs`` finished jobs in GCS, vs the empty job table."""
    starter = start_serve_elsewhere(DURABLE)
    me = ray.get_runtime_context().get_job_id()
    gcs_proc = gcs_server_process()
    ctrl_proc = controller_process()
    try:
        empty = _level(sizes, gcs_proc, ctrl_proc, me)
        made_s = make_finished_jobs(sizes.finished_jobs)
        log(f"jobs: made {sizes.finished_jobs:,} finished jobs in {made_s:.1f} s")
        full = _level(sizes, gcs_proc, ctrl_proc, me)
        assert controller_process().pid == ctrl_proc.pid, "the controller restarted during the section"
    finally:
        stop_serve()
        purge_records()
    out = {
        "levels": [empty, full], "finished_jobs": sizes.finished_jobs, "make_s": made_s, "owners": sizes.owners,
        "reps": sizes.reps, "window_s": sizes.window_s, "driver_job": me, "serve_started_by_job": starter,
        "reg_ratio": full["job"]["p50_ms"] / empty["job"]["p50_ms"],
        "new_job_reg_ratio": full["new_job"]["p50_ms"] / empty["new_job"]["p50_ms"],
        "serve_reg_ratio": full["serve"]["p50_ms"] / empty["serve"]["p50_ms"],
        "gcs_idle_ratio": (full["gcs_idle_owned"] / empty["gcs_idle_owned"]) if empty["gcs_idle_owned"] else None,
    }
    log(f"jobs: {full['jobs']:,} vs {empty['jobs']} jobs: registration p50 owned by this driver's job "
        f"{full['job']['p50_ms']:.2f} vs {empty['job']['p50_ms']:.2f} ms = {out['reg_ratio']:.2f}x, by a new running "
        f"job each {full['new_job']['p50_ms']:.2f} vs {empty['new_job']['p50_ms']:.2f} ms = "
        f"{out['new_job_reg_ratio']:.2f}x; gcs_server idle with {sizes.owners} job owners "
        f"{full['gcs_idle_owned'] * 100:.2f} vs {empty['gcs_idle_owned'] * 100:.2f} % = "
        + ("—" if out["gcs_idle_ratio"] is None else f"{out['gcs_idle_ratio']:.2f}x"))
    return out
