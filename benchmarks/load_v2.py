"""A Ray-free load of v2 records against a load of v1 records, in one process.

    python -m benchmarks.load_v2 [--n 100000] [--runs 3] [--owners 1]

Seeds ``--n`` records of each layout into an in-memory store (bytes under keys, as GCS
returns them; every request answers at once) and times ``Registry.load`` over each: the
v1 load lists the keys and reads and decodes every value (0.1.0's layout), the v2 load
parses the keys alone (``records.parse_keys``). Prints the median of ``--runs`` runs of
each and their ratio (issue 21's target: v2 <= 0.3 x v1). ``--owners 3`` gives each
actor three app owners (three keys). Needs no Ray and no cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from serve_cleanup.core import records as rec
from serve_cleanup.core.records import Record
from serve_cleanup.core.registry import Registry


class MemoryStore:
    """The ``RecordStore`` port over a dict; answers at once."""

    def __init__(self, data: dict[bytes, bytes]) -> None:
        self.data = data

    async def keys(self, prefix) -> list[bytes]:
        p = prefix.encode() if isinstance(prefix, str) else prefix
        return [k for k in self.data if k.startswith(p)]

    async def get_many(self, keys: list[bytes]) -> dict[bytes, bytes]:
        return {k: self.data[k] for k in keys if k in self.data}

    async def put(self, key, value: bytes) -> None:
        self.data[key.encode() if isinstance(key, str) else key] = value

    async def delete(self, key) -> None:
        self.data.pop(key.encode() if isinstance(key, str) else key, None)

    async def delete_prefix(self, prefix) -> int:
        doomed = await self.keys(prefix)
        for k in doomed:
            del self.data[k]
        return len(doomed)


def seed(n: int, owners: int) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """``n`` records as 0.1.0 wrote them, and the same as v2 keys: anonymous and named
    actors (Ray's router actors are named), a 90-byte handle like Ray's."""
    v1: dict[bytes, bytes] = {}
    v2: dict[bytes, bytes] = {}
    for i in range(n):
        actor_id = f"{i * 167 % 256:02x}{i:030x}"
        name = f"router-{i}" if i % 2 else ""
        pairs = tuple((("app", f"app{(i + j) % 7}", ""), 1_700_000_000.0 + i / 1000 + j / 1e5)
                      for j in range(owners)) if owners > 1 else ((rec.SERVE_OWNER, 1_700_000_000.0 + i / 1000),)
        record = Record(actor_id, name, "ns" if name else "", b"h" * 90, pairs=pairs)
        v1[rec.record_key(actor_id).encode()] = rec.encode_v1(record.replace(pairs=pairs[:1]))
        for owner, _ in pairs:
            v2[rec.pair_key(actor_id, owner, record.time_of(owner), name, record.namespace).encode()] = (
                rec.encode(record, owner))
    return v1, v2


def time_load(data: dict[bytes, bytes], expected: int) -> float:
    registry = Registry(MemoryStore(data), clock=time.time)
    started = time.perf_counter()
    n, set_aside = asyncio.run(registry.load())
    took = time.perf_counter() - started
    assert n == expected and not set_aside, (n, set_aside[:3])
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--owners", type=int, default=1)
    args = parser.parse_args()
    v1, v2 = seed(args.n, args.owners)
    times: dict[str, list[float]] = {"v1": [], "v2": []}
    for _ in range(args.runs):  # interleaved: both see the same machine
        times["v1"].append(time_load(v1, args.n))
        times["v2"].append(time_load(v2, args.n))
    m1, m2 = statistics.median(times["v1"]), statistics.median(times["v2"])
    print(f"records: {args.n:,} ({args.owners} owner key(s) each in v2), runs: {args.runs}")
    print(f"v1 load (keys, then every value read and decoded): {m1 * 1000:8.1f} ms  "
          f"(runs: {', '.join(f'{t * 1000:.0f}' for t in times['v1'])})")
    print(f"v2 load (keys only, parsed in chunks):             {m2 * 1000:8.1f} ms  "
          f"(runs: {', '.join(f'{t * 1000:.0f}' for t in times['v2'])})")
    print(f"ratio v2 / v1: {m2 / m1:.3f} (target <= 0.3)")


if __name__ == "__main__":
    main()
