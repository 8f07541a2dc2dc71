"""Issue 14, target 2: costs independent of the cluster's history (dead actors in GCS).

On one fresh cluster, at each level of dead actors cached in GCS (0, then 40,000, then
100,000, GCS's default cache size; made by creating actors that ask for a resource no
node has and killing them: no process is started):

* the GCS micro-figure (``benchmarks.lookup_vs_table.probe``): a by-id read through
  ``async_get_all_actor_info(actor_id=)``, ``GlobalStateAccessor.get_actor_info`` and
  ``async_get_all_actor_info(actor_state_name="ALIVE")``, p50 and gcs_server CPU per call;
* ``gcs_server``'s idle CPU with no Serve running;
* per rep and kind (plain, durable; order alternates): ``registered`` named
  PENDING_CREATION actors registered one at a time through the upstream method (all but
  the first 3 timed: registration p50), then, with all of them registered, ``settle_s``
  of rest and a ``window_s`` window of ``gcs_server``'s and the controller's CPU (psutil
  on their pids);
* at the last level, ``serve-cleanup list --json`` in a fresh process over
  ``list_records`` records of unknown actors (Serve not running), to show what a large
  actor table adds to target 5.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from benchmarks import lookup_vs_table
from benchmarks.harness import (
    DURABLE,
    PLAIN,
    Samples,
    cli_list_json,
    controller,
    controller_process,
    cores_over,
    count_actors,
    cpu_s,
    gcs_server_process,
    kill_actors,
    log,
    make_dead_actors,
    median,
    pending_actors,
    profiled,
    profiling,
    purge_records,
    register_upstream,
    seed_unknown_records,
    start_serve,
    stop_serve,
)


@dataclass
class HistorySizes:
    levels: tuple = (0, 40_000, 100_000)
    reps: int = 2
    registered: int = 100
    settle_s: float = 3.0
    window_s: float = 10.0
    lookup_n: int = 300
    list_records: int = 100_000


QUICK = HistorySizes(levels=(300,), reps=1, registered=8, settle_s=0.2, window_s=1.0, lookup_n=20,
                     list_records=200)


def history(sizes: HistorySizes) -> dict:
    gcs_proc = gcs_server_process()
    made = 0
    levels = []
    for level in sizes.levels:
        row: dict = {"dead_target": level}
        if level > made:
            row["make_s"] = make_dead_actors(level - made)
            log(f"history: made {level - made} dead actors in {row['make_s']:.0f} s")
            made = level
        row["dead_in_table"] = count_actors("DEAD")
        row["lookups"] = lookup_vs_table.probe(sizes.lookup_n, gcs_proc)
        row["gcs_idle_no_serve"] = cores_over(gcs_proc, sizes.window_s)
        samples = {PLAIN: Samples(), DURABLE: Samples()}
        by_rep: dict = {PLAIN: [], DURABLE: []}
        for rep in range(sizes.reps):
            for kind in ((PLAIN, DURABLE) if rep % 2 == 0 else (DURABLE, PLAIN)):
                start_serve(kind)
                ctrl = controller()
                proc = controller_process()
                actors = pending_actors(sizes.registered)
                for a in actors[:3]:
                    register_upstream(ctrl, a)
                s = Samples([register_upstream(ctrl, a) for a in actors[3:]])
                samples[kind].values.extend(s.values)
                time.sleep(sizes.settle_s)
                g0, c0, t0 = cpu_s(gcs_proc), cpu_s(proc), time.perf_counter()
                time.sleep(sizes.window_s)
                took = time.perf_counter() - t0
                if profiling() and rep == 0:  # after the window: py-spy costs CPU too
                    with profiled(proc.pid, f"history-{level}-{kind}-controller-idle"):
                        time.sleep(sizes.window_s)
                r = {"reg_p50": s.ms(), "gcs_idle_cores": (cpu_s(gcs_proc) - g0) / took,
                     "controller_idle_cores": (cpu_s(proc) - c0) / took}
                by_rep[kind].append(r)
                stop_serve()
                purge_records()
                kill_actors(actors)
                log(f"history {row['dead_in_table']} dead, rep {rep + 1} {kind}: registration p50 "
                    f"{r['reg_p50']:.2f} ms; idle gcs_server {r['gcs_idle_cores'] * 100:.1f} %, controller "
                    f"{r['controller_idle_cores'] * 100:.1f} % of a core")
        row["by_rep"] = by_rep
        for kind in (PLAIN, DURABLE):
            row[kind] = {"reg_p50": samples[kind].ms(), "reg_p99": samples[kind].ms("p99"),
                         "n": len(samples[kind].values),
                         "gcs_idle_cores": median(r["gcs_idle_cores"] for r in by_rep[kind]),
                         "controller_idle_cores": median(r["controller_idle_cores"] for r in by_rep[kind])}
        levels.append(row)
    out: dict = {"levels": levels, "registered": sizes.registered, "window_s": sizes.window_s,
                 "reps": sizes.reps}
    if sizes.list_records:
        purge_records()
        seeded = seed_unknown_records(sizes.list_records, time.time() - 600)
        took, entries = cli_list_json()
        out["list"] = {"records": sizes.list_records, "entries": entries, "seconds": took,
                       "dead_in_table": count_actors("DEAD"), "seed_s": seeded["seed_s"]}
        purge_records()
        log(f"history: serve-cleanup list --json over {entries} records with "
            f"{out['list']['dead_in_table']} dead actors cached: {took:.2f} s")
    return out
