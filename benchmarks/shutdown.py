"""Issue 14, target 3: ``serve.shutdown()`` with many records, and with many live actors.

``records`` (durable only): ``records`` records (v2: one serve-wide key each) in the KV when the durable controller
starts (it rehydrates them), none of whose actors lives: ``dead_records`` of actors that
existed and are DEAD in GCS's actor table (created PENDING, their real handles stored,
then killed), the rest of actors GCS never knew (as after it evicted them from its cache
of dead actors), with real-sized handles. Every record is dated 10 minutes back (older
than any grace for actors GCS does not know yet). Then ``serve.shutdown()``; a thread
counts the records left (``KvStore.keys`` on the record prefix) every second and at
exactly 10 s after the call, until none is left or ``records_wait_s`` passed.

``live`` (plain vs durable, order alternating, ``live_reps`` each): one app deployed,
``live_pending`` actors that stay PENDING_CREATION (they ask for a resource no node has:
live in the actor table and killable, but no process; half named with a namespace, half
anonymous) plus ``live_real`` real actors (one process each, ~100 MB here, so only a
few tens), all registered through the upstream method; then ``serve.shutdown()`` until
the controller is gone. Afterwards, how many of those actors were not yet DEAD.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

import ray
from ray import serve
from ray.core.generated import gcs_pb2

from serve_cleanup.serve_adapter.ports import live_actors

from benchmarks.harness import (
    DURABLE,
    cli_list_json,
    fresh_cluster,
    PLAIN,
    BenchApp,
    actor_items,
    controller,
    controller_status,
    find_controller,
    kill_actors,
    log,
    make_actors,
    median,
    pending_actors,
    profiled,
    purge_records,
    put_records,
    record_count,
    seed_unknown_records,
    start_serve,
    state_accessor,
    stop_serve,
    template_handle,
    wait_for,
)


@dataclass
class ShutdownSizes:
    records: int = 100_000
    dead_records: int = 20_000
    records_wait_s: float = 120.0
    live_pending: int = 1000
    live_real: int = 20
    live_reps: int = 2
    with_app: bool = True
    settle_s: float = 2.0  # rest between registering and the timed shutdown
    after_s: float = 5.0  # how long after the shutdown's return the actors are counted again
    list_runs: int = 0  # `serve-cleanup list --json` runs over the live registrations (durable)
    until_done_s: float = 0.0  # > 0: also time until every actor is dead and every record gone
    fresh_per_kind: bool = False  # a new local cluster before each kind (not with --address)


QUICK = ShutdownSizes(records=300, dead_records=60, records_wait_s=30.0, live_pending=20, live_real=1,
                      live_reps=1, with_app=False, settle_s=0.2, after_s=0.5)

# Issue 21, rows 5 and 6: live registered actors (PENDING_CREATION: no process each), a
# fresh cluster for each kind. The issue asks for 100,000; on this machine (24 GiB) GCS holds
# ~55 KB an actor: 100,000 live plus plain's 100,000 dead in one cluster got gcs_server
# OOM-killed at 11.3 GB (2026-12-07), and the driver holding 100,000 handles took 8.7 GB.
LIVE_AT_SCALE = ShutdownSizes(live_pending=30_000, live_real=0, live_reps=1, settle_s=5.0, after_s=5.0,
                              list_runs=1, until_done_s=900.0, fresh_per_kind=True)
LIVE_AT_SCALE_QUICK = ShutdownSizes(live_pending=200, live_real=0, live_reps=1, with_app=False, settle_s=0.2,
                                    after_s=0.5, list_runs=1, until_done_s=60.0)


def _dead_actor_records(n: int, registered_at: float, batch: int = 2000) -> list[tuple[str, bytes]]:
    """Records (v2: one serve-wide key each) of ``n`` actors that existed and are dead now
    (their real handles; batches alternate named-with-a-namespace and anonymous actors)."""
    items: list[tuple[str, bytes]] = []
    made = 0
    while made < n:
        group = pending_actors(min(batch, n - made), named=(made // batch) % 2 == 0)
        items += actor_items(group, registered_at)
        kill_actors(group)
        made += len(group)
    return items


def records_shutdown(sizes: ShutdownSizes) -> dict:
    purge_records()
    stop_serve()
    registered_at = time.time() - 600
    started = time.perf_counter()
    dead = _dead_actor_records(sizes.dead_records, registered_at)
    seed = {"dead_s": time.perf_counter() - started}
    seed["dead_put_s"] = put_records(dead)
    seed.update(seed_unknown_records(sizes.records - sizes.dead_records, registered_at, template_handle()))
    stored = record_count()
    start_serve(DURABLE)
    time.sleep(sizes.settle_s)
    at_call = {"kv": record_count(), "controller": controller_status().get("records")}
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    spy = profiled(ray.get(controller().get_pid.remote()), "shutdown-records-controller")
    spy.__enter__()
    t0 = time.perf_counter()

    def sample() -> None:
        marks = [float(s) for s in range(1, int(sizes.records_wait_s) + 1)]
        for mark in marks:
            if stop.wait(max(0.0, t0 + mark - time.perf_counter())):
                return
            left = record_count()
            samples.append((time.perf_counter() - t0, left))
            if left == 0:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    serve.shutdown()
    returned_s = time.perf_counter() - t0
    wait_for(lambda: find_controller() is None, 300, "the controller to exit")
    controller_gone_s = time.perf_counter() - t0
    sampler.join(timeout=sizes.records_wait_s + 30)
    stop.set()
    spy.__exit__(None, None, None)
    gone = next((t for t, n in samples if n == 0), None)
    at_10 = 0 if gone is not None and gone <= 10.0 else next((n for t, n in samples if t >= 10.0), None)
    out = {
        "records": sizes.records, "dead_records": sizes.dead_records, "stored": stored, "at_call": at_call,
        "seed": seed, "returned_s": returned_s, "controller_gone_s": controller_gone_s,
        "left_at_10s": at_10, "all_gone_s": gone, "left_at_end": samples[-1][1] if samples else None,
        "waited_s": sizes.records_wait_s, "samples": samples,
    }
    log(f"shutdown with {stored} dead/unknown records: serve.shutdown() returned after {returned_s:.1f} s; "
        f"{at_10} left at 10 s; " + (f"all gone after {gone:.1f} s" if gone is not None else
                                     f"{out['left_at_end']} left after {sizes.records_wait_s:.0f} s"))
    purge_records()
    return out


def _not_dead(actor_ids: list) -> int:
    if len(actor_ids) > 5000:  # one read per live state, not one lookup per id
        return len(live_actors({a.hex() for a in actor_ids}, state_accessor()))
    acc = state_accessor()
    n = 0
    for aid in actor_ids:
        raw = acc.get_actor_info(aid)
        if raw is not None and gcs_pb2.ActorTableData.FromString(raw).state != gcs_pb2.ActorTableData.DEAD:
            n += 1
    return n


def live_shutdown(sizes: ShutdownSizes) -> dict:
    by_kind: dict = {PLAIN: [], DURABLE: []}
    for rep in range(sizes.live_reps):
        for kind in ((PLAIN, DURABLE) if rep % 2 == 0 else (DURABLE, PLAIN)):
            if sizes.fresh_per_kind:
                fresh_cluster()
            start_serve(kind)
            if sizes.with_app:
                serve.run(BenchApp.bind(), name="bench", route_prefix=None)
            half = sizes.live_pending // 2
            actors = (pending_actors(half) + pending_actors(sizes.live_pending - half, named=False)
                      + make_actors(sizes.live_real))
            ctrl = controller()
            for i in range(0, len(actors), 100):
                ray.get([ctrl._register_shutdown_cleanup_actor.remote(a) for a in actors[i:i + 100]])
            stored = record_count() if kind == DURABLE else None
            lists = []
            if kind == DURABLE:
                for _ in range(sizes.list_runs):
                    listed_s, entries = cli_list_json()
                    lists.append({"seconds": listed_s, "entries": entries})
                    log(f"list --json with {len(actors):,} live registered actors: {listed_s:.2f} s, {entries:,} entries")
            time.sleep(sizes.settle_s)
            called = time.perf_counter()
            with profiled(ray.get(ctrl.get_pid.remote()), f"shutdown-live-{kind}-controller") if rep == 0 \
                    else contextlib.nullcontext():
                took = stop_serve()
            ids = [a._actor_id for a in actors]
            row = {"shutdown_s": took, "registered": len(actors), "stored": stored,
                   "not_dead_at_return": _not_dead(ids), "list": lists}
            if sizes.until_done_s:
                # Every actor dead and (durable) every record gone, from the shutdown call.
                def done() -> bool:
                    return not _not_dead(ids) and (kind != DURABLE or not record_count())
                try:
                    wait_for(done, sizes.until_done_s, "every actor dead and every record gone", every_s=0.5)
                    row["done_s"] = time.perf_counter() - called
                except TimeoutError:
                    row["done_s"] = None
                row["records_left"] = record_count()
            time.sleep(sizes.after_s)
            row["not_dead_after_5s"] = _not_dead(ids)
            by_kind[kind].append(row)
            kill_actors(actors)
            purge_records()
            log(f"shutdown with {len(actors)} registered live actors, rep {rep + 1} {kind}: {took:.2f} s "
                f"({row['not_dead_at_return']} not dead at return, {row['not_dead_after_5s']} {sizes.after_s:g} s later)"
                + (f"; all dead{' and no record left' if kind == DURABLE else ''} "
                   + (f"{row['done_s']:.2f} s after the call" if row.get("done_s") is not None else "NOT within the wait")
                   if sizes.until_done_s else ""))
    return {"by_rep": by_kind, "pending": sizes.live_pending, "real": sizes.live_real,
            "with_app": sizes.with_app, "reps": sizes.live_reps,
            **{k: {"shutdown_s": median(r["shutdown_s"] for r in by_kind[k]),
                   "not_dead_after_5s": max(r["not_dead_after_5s"] for r in by_kind[k]),
                   "done_s": _median_or_none([r.get("done_s") for r in by_kind[k]]),
                   "list_s": _median_or_none([x["seconds"] for r in by_kind[k] for x in r["list"]])}
               for k in by_kind}}


def _median_or_none(xs: list) -> "float | None":
    return None if not xs or any(x is None for x in xs) else median(xs)


def live_at_scale(sizes: ShutdownSizes) -> dict:
    """Issue 21, rows 5 and 6: ``list --json`` over, and ``serve.shutdown()`` with,
    ``live_pending`` live registered actors (plain vs durable): until every actor is dead
    and every record gone."""
    return {"live": live_shutdown(sizes)}


def shutdown(sizes: ShutdownSizes) -> dict:
    return {"records": records_shutdown(sizes), "live": live_shutdown(sizes)}
