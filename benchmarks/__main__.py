"""python -m benchmarks [--quick] [--only SECTION,...] [--baseline FILE] [--address ADDR] [--out DIR]

Runs every section (or the ``--only`` ones, merged into the results already in
``OUT/benchmarks.json``), then writes ``OUT/benchmarks.md``, the JSON and the plots.
``--baseline`` names an earlier ``benchmarks.json`` whose target figures are shown
beside the new ones ("before" / "after").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import ray

import serve_cleanup

from benchmarks import cases, report, targets
from benchmarks.harness import connect, log, purge_records, stop_serve

# name -> (what it measures, function(sizes, target_sizes) -> result)
SECTIONS = {
    "floor": ("targets 1+2: new/repeat registration vs plain + KV put; burst CPU and throughput",
              lambda s, t: targets.floor_and_burst(t)),
    "scale": ("target 3: 100,000 records", lambda s, t: targets.scale(t)),
    "owners": ("target 4: many owners, idle CPU and control loop", lambda s, t: targets.owners(t)),
    "shutdown": ("target 5 and the K table: shutdown with K real actors", lambda s, t: cases.shutdown_time(s)),
    "latency": ("registration latency A/B (real actors)", lambda s, t: cases.registration_latency(s)),
    "breakdown": ("latency breakdown", lambda s, t: cases.latency_breakdown(s)),
    "scaling": ("latency vs stored records", lambda s, t: cases.latency_vs_records(s)),
    "concurrent": ("8 concurrent registrants, nothing lost", lambda s, t: cases.concurrent_registration(s)),
    "restart": ("controller restart time", lambda s, t: cases.restart_time(s, s.record_counts[-1])),
}


# --quick without --only: the issue-11 targets at tiny sizes (the smoke test; ~1 min).
QUICK_SECTIONS = ("floor", "scale", "owners", "shutdown")


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", "--smoke", dest="quick", action="store_true",
                   help="tiny sizes: checks the scripts, not the speed")
    p.add_argument("--only", default=None,
                   help="comma-separated sections: " + ", ".join(SECTIONS))
    p.add_argument("--baseline", default=None, help="an earlier benchmarks.json to compare with")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: rewrite the report from OUT/benchmarks.json")
    p.add_argument("--commit", default=None,
                   help="label the sections with this commit (default: git HEAD here), e.g. when "
                        "PYTHONPATH points at another checkout's src")
    p.add_argument("--address", default=None, help="use this running cluster instead of a local one")
    p.add_argument("--out", default="docs", help="where benchmarks.md and the plots go")
    args = p.parse_args(argv)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
    else:
        names = list(QUICK_SECTIONS if args.quick else SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {unknown}; known: {list(SECTIONS)}")
    sizes = cases.SMOKE if args.quick else cases.Sizes()
    tsizes = targets.QUICK if args.quick else targets.TargetSizes()
    out_dir = Path(args.out)
    results: dict = {}
    previous = out_dir / "benchmarks.json"
    if args.report_only:
        results = json.loads(previous.read_text())
        baseline = json.loads(Path(args.baseline).read_text()) if args.baseline else None
        md = report.write(results, out_dir, "python -m benchmarks", False, baseline)
        print(md.read_text())
        return 0
    if args.only and previous.exists():
        results = json.loads(previous.read_text())  # merge: keep the sections not re-run
    results.setdefault("sections", {})
    started = time.monotonic()
    connect(args.address)
    try:
        stop_serve()
        purge_records()
        for name in names:
            log(f"{name}: {SECTIONS[name][0]} ...")
            t0 = time.monotonic()
            commit = args.commit or _git_commit()  # the code this process imported
            results[name] = SECTIONS[name][1](sizes, tsizes)
            results["sections"][name] = {
                "commit": commit, "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "seconds": round(time.monotonic() - t0, 1), "quick": args.quick,
                "serve_cleanup": str(Path(serve_cleanup.__file__).parent),
            }
    finally:
        try:
            stop_serve()
            purge_records()
        finally:
            ray.shutdown()
    results["sizes"] = dataclasses.asdict(sizes)
    results["target_sizes"] = dataclasses.asdict(tsizes)
    results["restart_records"] = sizes.record_counts[-1]
    out_dir.mkdir(parents=True, exist_ok=True)
    previous.write_text(json.dumps(results, indent=2))  # before the report, which may fail
    baseline = json.loads(Path(args.baseline).read_text()) if args.baseline else None
    command = "python -m benchmarks" + (" --quick" if args.quick else "")
    md = report.write(results, out_dir, command, args.quick, baseline)
    print(md.read_text())
    log(f"done in {time.monotonic() - started:.0f}s; wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
