"""What the durable controller keeps per record, without Ray: a plain Python process builds
``--n`` records as the KV returns them (records v2, one serve-wide key each, or with
``--layout v1`` 0.1.0's layout; ~300-byte handles, half named), loads them with the
package's ``Registry.load`` from a dict-backed store (as the controller loads them from
the GCS KV at start: the keys, and the values of v1 keys only). Prints tracemalloc's live bytes per record, the top
allocation sites, and the RSS steps.

    python -m benchmarks.memory_per_record [--n 100000] [--layout v2|v1]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
import tracemalloc

import psutil

from benchmarks.harness import LAYOUTS, V2, internals, record_items


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory_per_record", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--layout", choices=LAYOUTS, default=V2)
    args = p.parse_args(argv)
    n, layout = args.n, args.layout
    sc = internals()
    proc = psutil.Process()

    def rss() -> float:
        return proc.memory_info().rss / 2**20

    def scan_result() -> dict:
        found = {}
        for i in range(n):
            aid = os.urandom(16).hex()
            name, ns = (f"seeded-{i}", "serve-cleanup-bench") if i % 2 == 0 else ("", "")
            for key, value in record_items(aid, name, ns, os.urandom(300), time.time(), layout=layout):
                found[key.encode()] = value
        return found

    class DictStore:  # the two reads Registry.load makes
        def __init__(self, data: dict) -> None:
            self.data = data

        async def keys(self, prefix) -> list:
            return [k for k in self.data if k.startswith(prefix.encode())]

        async def get_many(self, keys: list) -> dict:
            return {k: self.data[k] for k in keys if k in self.data}

    def load(found: dict):
        reg = sc.registry.Registry(DictStore(found), clock=time.time)
        asyncio.run(reg.load())
        return reg

    # RSS, no tracing: what the process holds after a start-up load.
    r0 = rss()
    found = scan_result()
    r1 = rss()
    kept = load(found)
    r2 = rss()
    del found
    gc.collect()
    r3 = rss()
    print(f"RSS: start {r0:.0f} MB; scan result {r1 - r0:+.0f}; registry {r2 - r1:+.0f}; "
          f"scan result freed {r3 - r2:+.0f}; net {r3 - r0:+.0f} MB for {n} records")
    del kept
    gc.collect()

    # Live bytes per record (tracemalloc), on a second load.
    found = scan_result()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    reg = load(found)
    held = tracemalloc.get_traced_memory()[0]
    top = tracemalloc.take_snapshot().compare_to(before, "lineno")[:5]
    tracemalloc.stop()
    print(f"live: registry {held / n:.0f} B a record (the scan result included while it is read)")
    for stat in top:
        print(f"  {stat}")
    assert len(reg) == n
    return 0


if __name__ == "__main__":
    sys.exit(main())
