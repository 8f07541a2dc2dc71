"""python -m benchmarks [--quick] [--only SECTION,...] [--label before|after] [--baseline FILE] [--address ADDR] [--out DIR]

Runs issue 14's sections (or the ``--only`` ones, merged into the results already in
``OUT/benchmarks.json``), each on a fresh local Ray cluster (an empty actor table and
KV; not with ``--address``), then writes ``OUT/benchmarks.md`` and the JSON.

Before/after: the report has a "before" and an "after" column per target. Without
``--baseline`` this run fills the column ``--label`` names. With ``--baseline FILE`` (an
earlier ``benchmarks.json``, e.g. ``docs/reports/benchmarks-before.json``) that file fills
"before" and this run "after". Each section records the commit of the serve_cleanup it
imported (``-dirty`` if that checkout's src/ had changes) and the command that ran it.

"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import ray

from benchmarks import cases, deletes, floor, grace, history, jobs, owners, pgs, report, scale, shutdown
from benchmarks.harness import (
    connect,
    fresh_cluster,
    log,
    package_commit,
    package_dir,
    purge_records,
    set_profile_dir,
    stop_serve,
)

# name -> (what it measures, full sizes, quick sizes, function(sizes) -> result)
SECTIONS = {
    "floor": ("target 1: new registration vs plain + one KV put; burst CPU vs plain + a probe's put CPU",
              floor.FloorSizes(), floor.QUICK, floor.floor),
    "history": ("target 2: registration and gcs_server idle CPU at 0 / 40k / 100k dead actors",
                history.HistorySizes(), history.QUICK, history.history),
    "shutdown": ("target 3: serve.shutdown() with 100k dead/unknown records; with 1,000 live registered",
                 shutdown.ShutdownSizes(), shutdown.QUICK, shutdown.shutdown),
    "memory": ("target 4, issue 21 rows 1, 3, 7: RSS and restart, 100k v2 records; first restart over 100k v1",
               scale.ScaleSizes(), scale.QUICK, scale.memory),
    "list": ("target 5, issue 21 row 4: serve-cleanup list --json over 100k v2 records",
             scale.ScaleSizes(), scale.QUICK, scale.list_json),
    # Run only with --only.
    "owners3": ("issue 21 row 10: 10k actors x 3 owners vs x 1 owner: load and list --json",
                scale.OwnerSetSizes(), scale.OWNERS_QUICK, scale.owner_sets),
    "live100k": ("issue 21 rows 5, 6: list --json over, and serve.shutdown() with, live registered actors "
                 "(30k here: 100k exceeds this machine's memory, see benchmarks/shutdown.py)",
                 shutdown.LIVE_AT_SCALE, shutdown.LIVE_AT_SCALE_QUICK, shutdown.live_at_scale),
    "pgs": ("issue 22 rows 1, 2: serve.shutdown() with 1,000 registered placement groups vs plain Serve; "
            "register(pg) vs register(actor) p50",
            pgs.PgSizes(), pgs.QUICK, pgs.pgs),
    "jobs": ("issue 22 row 3: job-owned registration p50 and gcs_server idle CPU with 10,000 finished jobs in GCS "
             "vs an empty job table (100 job-owned registrations)",
             jobs.JobSizes(), jobs.QUICK, jobs.jobs),
    "grace": ("issue 22 row 5: serve.shutdown() with 100 actors registered with grace_s=5 (10 hooks hang) vs plain "
              "Serve with the same actors unregistered; every hook that can return has run",
              grace.GraceSizes(), grace.QUICK, grace.grace),
    "deletes": ("Config.deletes_in_flight: single-key deletes at 16 / 64 / 256 / 1,024 in flight",
                deletes.DeleteSizes(), deletes.QUICK, deletes.deletes),
    # Earlier figures (issue 11), run only with --only.
    "owners": ("issue 11: many owners, idle controller CPU and control loop",
               owners.OwnerSizes(), owners.QUICK, owners.owners),
    "latency": ("issue 11: registration latency A/B (real actors)", cases.Sizes(), cases.SMOKE,
                cases.registration_latency),
    "breakdown": ("issue 11: latency breakdown", cases.Sizes(), cases.SMOKE, cases.latency_breakdown),
    "scaling": ("issue 11: latency vs stored records", cases.Sizes(), cases.SMOKE, cases.latency_vs_records),
    "concurrent": ("issue 11: 8 concurrent registrants, nothing lost", cases.Sizes(), cases.SMOKE,
                   cases.concurrent_registration),
    "restart": ("issue 11: controller restart time", cases.Sizes(), cases.SMOKE,
                lambda s: cases.restart_time(s, s.record_counts[-1])),
    "shutdown_k": ("issue 11: shutdown with K real actors", cases.Sizes(), cases.SMOKE, cases.shutdown_time),
}

DEFAULT_SECTIONS = ("floor", "history", "shutdown", "memory", "list")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", "--smoke", dest="quick", action="store_true",
                   help="tiny sizes: checks the scripts, not the speed")
    p.add_argument("--only", default=None, help="comma-separated sections: " + ", ".join(SECTIONS))
    p.add_argument("--label", choices=("before", "after"), default="after",
                   help="the column this run fills when there is no --baseline (default: after)")
    p.add_argument("--baseline", default=None, help="an earlier benchmarks.json: the 'before' column")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: rewrite the report from OUT/benchmarks.json")
    p.add_argument("--commit", default=None,
                   help="label the sections with this commit (default: that of the imported serve_cleanup)")
    p.add_argument("--address", default=None, help="use this running cluster instead of local ones")
    p.add_argument("--out", default="docs/reports", help="where benchmarks.md and benchmarks.json go")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="attach py-spy to the controller in the shutdown and history sections and run "
                        "`list --json` once more under it; stacks and summaries go to DIR (figures of such a "
                        "run are not for the report: py-spy costs CPU)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else list(DEFAULT_SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {unknown}; known: {list(SECTIONS)}")
    out_dir = Path(args.out)
    previous = out_dir / "benchmarks.json"
    baseline = json.loads(Path(args.baseline).read_text()) if args.baseline else None
    if args.report_only:
        results = json.loads(previous.read_text())
        md = report.write(results, out_dir, baseline)
        print(md.read_text())
        return 0
    results: dict = {}
    if args.only and previous.exists():
        results = json.loads(previous.read_text())  # merge: keep the sections not re-run
    results.setdefault("sections", {})
    results["label"] = "after" if baseline else args.label
    command = " ".join(["python -m benchmarks", *argv])
    commit = args.commit or package_commit()
    set_profile_dir(args.profile)
    started = time.monotonic()
    connect(args.address)
    try:
        for i, name in enumerate(names):
            what, full, quick, run = SECTIONS[name]
            if i:
                fresh_cluster()
            stop_serve()
            purge_records()
            log(f"{name}: {what} ...")
            t0 = time.monotonic()
            sizes = quick if args.quick else full
            results[name] = run(sizes)
            results["sections"][name] = {
                "commit": commit, "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "seconds": round(time.monotonic() - t0, 1), "quick": args.quick, "profiled": bool(args.profile),
                "command": command, "serve_cleanup": package_dir(),
                "sizes": {k: v for k, v in vars(sizes).items()},
            }
            out_dir.mkdir(parents=True, exist_ok=True)
            previous.write_text(json.dumps(results, indent=2, default=list))  # each section as it ends
    finally:
        try:
            stop_serve()
            purge_records()
        finally:
            ray.shutdown()
    md = report.write(results, out_dir, baseline)
    print(md.read_text())
    log(f"done in {time.monotonic() - started:.0f}s; wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
