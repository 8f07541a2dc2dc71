"""What an actor-table read costs as GCS caches more dead actors: three ways to ask.

    python -m benchmarks.lookup_vs_table [--levels 0,10000,40000,100000] [--n 300]

At each level (dead actors cached in GCS: actors created PENDING and killed, so no
process is started), for one live (PENDING_CREATION) actor:

* ``by_id_filter``: ``await gcs_client.async_get_all_actor_info(actor_id=...)``, what the
  durable controller at 1984f6e calls per record (GCS filters its whole table);
* ``accessor_by_id``: ``GlobalStateAccessor.get_actor_info(actor_id)``, GCS's
  ``GetActorInfo`` (a hash lookup; synchronous in Ray's Python);
* ``alive_filter``: ``await gcs_client.async_get_all_actor_info(actor_state_name="ALIVE")``
  (the live set in one read);

each awaited one at a time from this driver: p50 wall time, and the CPU the gcs_server
process spent per call (psutil on its pid, the window's idle rate not subtracted).
A KV put (``AsyncKvStore.put``, as the controller makes it) is the control. ``history``
in ``python -m benchmarks`` calls ``probe``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import psutil

from benchmarks.harness import (
    connect,
    count_actors,
    cpu_s,
    gcs,
    gcs_server_process,
    kill_actors,
    kv_store,
    log,
    make_dead_actors,
    pending_actors,
    probe_key,
    state_accessor,
)


def probe(n: int = 300, gcs_proc: psutil.Process | None = None) -> dict:
    """The three reads (and a KV put) for one live actor, ``n`` times each."""
    client = gcs()
    store = kv_store(client, timeout_s=30)
    key = probe_key("lvt")
    acc = state_accessor()
    gcs_proc = gcs_proc or gcs_server_process()
    [live] = pending_actors(1)
    aid = live._actor_id
    time.sleep(0.2)
    calls = {
        "by_id_filter": lambda: client.async_get_all_actor_info(actor_id=aid, timeout=30),
        "accessor_by_id": lambda: acc.get_actor_info(aid),
        "alive_filter": lambda: client.async_get_all_actor_info(actor_state_name="ALIVE", timeout=30),
        "kv_put": lambda: store.aio.put(key, b"x" * 300),
    }

    async def run() -> dict:
        out = {}
        for label, call in calls.items():
            for _ in range(3):  # warm up
                r = call()
                if asyncio.isfuture(r) or asyncio.iscoroutine(r):
                    await r
            xs = []
            g0 = cpu_s(gcs_proc)
            for _ in range(n):
                t = time.perf_counter()
                r = call()
                if asyncio.isfuture(r) or asyncio.iscoroutine(r):
                    r = await r
                xs.append(time.perf_counter() - t)
            out[label] = {"p50_ms": statistics.median(xs) * 1000,
                          "gcs_cpu_ms": (cpu_s(gcs_proc) - g0) / n * 1000}
            if label == "alive_filter":
                out[label]["returned"] = len(r)
        return out

    try:
        result = asyncio.run(run())
    finally:
        kill_actors([live])
        store.delete(key)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lookup_vs_table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", default="0,10000,40000,100000", help="dead actors cached, ascending")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import ray

    connect(None)
    rows = []
    made = 0
    try:
        for level in (int(x) for x in args.levels.split(",")):
            if level > made:
                took = make_dead_actors(level - made)
                log(f"made {level - made} dead actors in {took:.0f}s")
                made = level
            row = {"dead_made": made, "dead_in_table": count_actors("DEAD"), **probe(args.n)}
            rows.append(row)
            log(f"{row['dead_in_table']} dead: " + ", ".join(
                f"{k} {v['p50_ms']:.3f} ms ({v['gcs_cpu_ms']:.3f} ms GCS CPU)"
                for k, v in row.items() if isinstance(v, dict)))
    finally:
        ray.shutdown()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
