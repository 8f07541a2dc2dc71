"""Config.deletes_in_flight: how many single-key deletes to keep in flight (``--only deletes``).

The registry and the reaper delete records one key at a time when a prefix delete cannot
take them (a bucket shared with a record that stays, or fewer than ``bulk_drop_min``
records), in chunks of ``Config.deletes_in_flight`` gathered at once. This section seeds
``keys`` probe keys and deletes them the same way (the controller's ``AsyncKvStore.delete``,
chunk after chunk) at several chunk sizes, from one driver: the time per key, and the
event loop's longest stall while a chunk's replies arrive.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

from benchmarks.harness import gcs, kv_store, log, probe_key


@dataclass
class DeleteSizes:
    keys: int = 20_000
    in_flight: tuple[int, ...] = (16, 64, 256, 1024)
    reps: int = 3


QUICK = DeleteSizes(keys=500, in_flight=(64, 256), reps=1)


async def _seed(store, keys: list[str], in_flight: int = 2000) -> None:
    value = b"x" * 300  # about a slim record's size

    async def slot(it) -> None:
        for key in it:
            await store.put(key, value)

    it = iter(keys)
    await asyncio.gather(*(slot(it) for _ in range(in_flight)))


async def _delete_chunked(store, keys: list[str], chunk: int) -> tuple[float, float]:
    """Seconds to delete ``keys`` ``chunk`` at a time; and the longest gap between two
    ticks of a 1 ms ticker meanwhile (how long the loop was kept from other work)."""
    worst, stop = 0.0, False

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not stop:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            worst, last = max(worst, now - last), now

    tick = asyncio.ensure_future(ticker())
    began = time.perf_counter()
    for i in range(0, len(keys), chunk):
        await asyncio.gather(*(store.delete(k) for k in keys[i:i + chunk]))
    took = time.perf_counter() - began
    stop = True
    await tick
    return took, worst


def deletes(sizes: DeleteSizes) -> dict:
    store = kv_store(gcs()).aio
    prefix = probe_key("deletes-")
    keys = [f"{prefix}{i:08d}" for i in range(sizes.keys)]
    out: dict = {"keys": sizes.keys, "by_in_flight": {}}
    for chunk in sizes.in_flight:
        runs = []
        for rep in range(sizes.reps):
            asyncio.run(_seed(store, keys))
            took, stall = asyncio.run(_delete_chunked(store, keys, chunk))
            runs.append((took, stall))
            log(f"deletes: {chunk} in flight, rep {rep + 1}: {took:.2f} s "
                f"({took / sizes.keys * 1e6:.0f} us/key), longest loop stall {stall * 1000:.1f} ms")
        out["by_in_flight"][str(chunk)] = {
            "s_median": statistics.median(t for t, _ in runs),
            "us_per_key": statistics.median(t for t, _ in runs) / sizes.keys * 1e6,
            "stall_ms_max": max(s for _, s in runs) * 1000,
        }
    kv_store(gcs()).delete_prefix(prefix)
    return out
