"""python -m benchmarks [--smoke] [--address ADDR] [--out DIR]"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import ray

from benchmarks import cases, report
from benchmarks.harness import connect, log, purge_records, stop_serve


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the scripts, not the speed")
    p.add_argument("--address", default=None, help="use this running cluster instead of a local one")
    p.add_argument("--out", default="docs", help="where benchmarks.md and the plots go")
    args = p.parse_args(argv)
    sizes = cases.SMOKE if args.smoke else cases.Sizes()
    started = time.monotonic()
    connect(args.address)
    try:
        stop_serve()
        purge_records()
        results = {"sizes": sizes}
        log("registration latency, durable vs plain ...")
        results["latency"] = cases.registration_latency(sizes)
        log("latency breakdown ...")
        results["breakdown"] = cases.latency_breakdown(sizes)
        log("latency vs number of stored records ...")
        results["scaling"] = cases.latency_vs_records(sizes)
        log("concurrent registration ...")
        results["concurrent"] = cases.concurrent_registration(sizes)
        results["restart_records"] = sizes.record_counts[-1]
        log("controller restart time ...")
        results["restart"] = cases.restart_time(sizes, sizes.record_counts[-1])
        log("shutdown time vs K ...")
        results["shutdown"] = cases.shutdown_time(sizes)
    finally:
        try:
            stop_serve()
            purge_records()
        finally:
            ray.shutdown()
    command = "python -m benchmarks" + (" --smoke" if args.smoke else "")
    md = report.write(results, Path(args.out), command, args.smoke)
    print(md.read_text())
    log(f"done in {time.monotonic() - started:.0f}s; wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
