"""Does one actor-table lookup by id get slower as GCS knows more actors?

    python -m benchmarks.lookup_vs_table [--steps 3] [--per-step 2000]

Measures ``async_get_all_actor_info(actor_id=...)`` for one live actor (p50 of 300 awaited
one at a time, and the driver's CPU per call), then adds ``--per-step`` actors that are
killed at once (they stay in GCS's cache of dead actors) and measures again; a GCS KV put
is the control. Actors ask for a resource no node has, so none starts a process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import ray

from benchmarks.harness import connect, log
from benchmarks.targets import PendingActor
from serve_cleanup import _compat


def probe(gcs, aid, n: int = 300) -> dict:
    async def run() -> dict:
        out = {}
        for label, make in (
            ("lookup", lambda: gcs.async_get_all_actor_info(actor_id=aid, timeout=10)),
            ("kv_put", lambda: gcs.async_internal_kv_put(b"serve-cleanup-bench-lvt", b"x" * 300, True, b"serve", timeout=10)),
        ):
            xs = []
            c0 = time.process_time()
            for _ in range(n):
                t = time.perf_counter()
                await make()
                xs.append(time.perf_counter() - t)
            out[label] = {"p50_ms": statistics.median(xs) * 1000,
                          "cpu_us": (time.process_time() - c0) / n * 1e6}
        t = time.perf_counter()
        table = await gcs.async_get_all_actor_info(timeout=60)
        out["full_table_read_ms"] = (time.perf_counter() - t) * 1000
        out["actors_in_table"] = len(table)
        return out

    return asyncio.run(run())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lookup_vs_table", description=__doc__)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--per-step", type=int, default=2000)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    connect(None)
    rows = []
    try:
        gcs = _compat.driver_gcs_client()
        live = PendingActor.options(lifetime="detached").remote()
        aid = live._actor_id
        time.sleep(0.5)
        for step in range(args.steps + 1):
            row = probe(gcs, aid)
            rows.append(row)
            log(f"{row['actors_in_table']} actors known to GCS: lookup p50 {row['lookup']['p50_ms']:.3f} ms "
                f"({row['lookup']['cpu_us']:.0f} us CPU), put p50 {row['kv_put']['p50_ms']:.3f} ms, "
                f"whole table {row['full_table_read_ms']:.1f} ms")
            if step < args.steps:
                batch = [PendingActor.options(lifetime="detached").remote() for _ in range(args.per_step)]
                for a in batch:
                    ray.kill(a, no_restart=True)
                time.sleep(2.0)
        ray.kill(live, no_restart=True)
    finally:
        ray.shutdown()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
