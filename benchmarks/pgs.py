"""Issue 22, targets 1 and 2: placement groups registered with the durable controller.

Every placement group here is pending: one bundle asking for a resource no node has
(``harness.pending_placement_groups``), PENDING in the placement group table, live and
removable, no CPU reserved; half named, half anonymous.

``shutdown`` (target 1; plain vs durable, order alternating, ``reps`` each, one local
cluster): one app deployed (as in ``shutdown.py``'s live case), ``pgs`` placement groups
created by the driver. Durable: each registered serve-wide through
``serve_cleanup.register(pg)`` from the driver, one at a time. Plain Serve cannot register
a placement group: the same number exist, unregistered. Then ``serve.shutdown()``, and the
wait until the controller is gone (``shutdown_s``, as ``shutdown.py`` times it). A driver
thread reads the placement group table every ``poll_s`` from the call on, in both kinds,
and notes when none of the ``pgs`` is left that is not REMOVED (``all_removed_s``, from the
call; resolution one poll, plus one table read). Right after ``serve.shutdown()`` returns
the main thread counts the ones not REMOVED (``not_removed_at_return``: 0 for the durable
controller, all of them for plain). After each run the driver removes what is left and
waits until every one is REMOVED; GCS keeps the removed ones in its table, so the table
grows by ``pgs`` per run (``table_at_call``).

``register`` (target 2; durable only): ``register_each`` detached named PENDING_CREATION
actors (``harness.pending_actors``: no process), as many named placement groups and as
many anonymous ones, all created beforehand (GCS knows each). Then
``serve_cleanup.register`` on each, one at a time, in turn (actor, named, anonymous; the
order rotates by one each round), each a new registration; ``warmup`` of each first, not
timed. p50 and p90 of each, and the ratios to the actors' (named and anonymous placement
groups apart: the controller learns a placement group's name from its table entry, the
driver's ``PlacementGroup`` does not carry it; and pooled).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from dataclasses import dataclass
from typing import Optional

import ray
from ray import serve

from benchmarks.harness import (
    DURABLE,
    PLAIN,
    BenchApp,
    Samples,
    controller,
    find_controller,
    kill_actors,
    log,
    median,
    not_removed,
    pending_actors,
    pending_placement_groups,
    placement_group_count,
    profiled,
    purge_records,
    record_count,
    register_public,
    remove_placement_groups,
    session_dir,
    start_serve,
    stop_serve,
    wait_for,
)


@dataclass
class PgSizes:
    pgs: int = 1000
    reps: int = 3
    with_app: bool = True
    settle_s: float = 2.0  # rest between registering and the timed shutdown
    poll_s: float = 0.05  # the removal sampler's period
    removed_wait_s: float = 60.0  # how long after the call to wait for every one REMOVED
    register_each: int = 300
    warmup: int = 5


QUICK = PgSizes(pgs=20, reps=1, with_app=False, settle_s=0.2, removed_wait_s=30.0, register_each=10, warmup=2)

_PASS = re.compile(r"serve_cleanup: shutdown pass over (\d+) registration\(s\) in (\d+) ms: ([^\n]*)\.")


def _shutdown_passes(pid: int) -> list[str]:
    """The durable controller's "shutdown pass over ..." log lines (Serve's controller log
    of process ``pid``): how many records each pass took and how long."""
    logs = session_dir()
    if logs is None:
        return []
    out: list[str] = []
    for path in (logs / "logs" / "serve").glob(f"controller_{pid}*.log"):
        out += [f"{m.group(1)} in {m.group(2)} ms: {m.group(3)}" for m in _PASS.finditer(path.read_text(errors="replace"))]
    return out


class _RemovalSampler:
    """From ``start()``: every ``poll_s`` how many of ``ids`` are not REMOVED, until none is
    or ``stop()``; ``all_removed_s`` is the first poll that found none (seconds after t0)."""

    def __init__(self, ids: list[str], poll_s: float) -> None:
        self.ids, self.poll_s = ids, poll_s
        self.samples: list[tuple[float, int]] = []
        self.all_removed_s: Optional[float] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = 0.0

    def start(self) -> float:
        self.t0 = time.perf_counter()
        self._thread.start()
        return self.t0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                left = not_removed(self.ids)
            except Exception:
                left = -1
            t = time.perf_counter() - self.t0
            self.samples.append((t, left))
            if left == 0:
                self.all_removed_s = t
                return
            self._stop.wait(self.poll_s)

    def wait(self, timeout_s: float) -> None:
        self._thread.join(timeout=max(0.0, self.t0 + timeout_s - time.perf_counter()))
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _one_shutdown(kind: str, sizes: PgSizes, rep: int) -> dict:
    start_serve(kind)
    if sizes.with_app:
        serve.run(BenchApp.bind(), name="bench", route_prefix=None)
    t = time.perf_counter()
    pgs = pending_placement_groups(sizes.pgs)
    created_s = time.perf_counter() - t
    ids = [pg.id.hex() for pg in pgs]
    register_s = stored = None
    if kind == DURABLE:
        t = time.perf_counter()
        for pg in pgs:
            register_public(pg)  # serve_cleanup.register(pg), serve-wide
        register_s = time.perf_counter() - t
        stored = record_count()
    pid = ray.get(controller().get_pid.remote())
    time.sleep(sizes.settle_s)
    table_at_call = placement_group_count()
    sampler = _RemovalSampler(ids, sizes.poll_s)
    with profiled(pid, f"shutdown-pgs-{kind}-controller") if rep == 0 else contextlib.nullcontext():
        called = sampler.start()
        serve.shutdown()
        returned_s = time.perf_counter() - called
        at_return = not_removed(ids)
        wait_for(lambda: find_controller() is None, 300, "the controller to exit")
        shutdown_s = time.perf_counter() - called
    if kind == DURABLE:
        sampler.wait(sizes.removed_wait_s)
    else:
        sampler.stop()
    row = {
        "shutdown_s": shutdown_s, "returned_s": returned_s, "pgs": len(ids), "stored": stored,
        "not_removed_at_return": at_return, "all_removed_s": sampler.all_removed_s,
        "not_removed_at_end": sampler.samples[-1][1] if sampler.samples else None,
        "polls": len(sampler.samples), "table_at_call": table_at_call, "created_s": created_s,
        "register_s": register_s, "passes": _shutdown_passes(pid) if kind == DURABLE else [],
        # the polls' first and last seconds, and every change of the count
        "samples": [s for i, s in enumerate(sampler.samples)
                    if i == 0 or i == len(sampler.samples) - 1 or s[1] != sampler.samples[i - 1][1]],
    }
    remove_placement_groups(pgs)
    purge_records()
    log(f"shutdown with {len(ids)} {'registered' if kind == DURABLE else 'unregistered'} placement groups, "
        f"rep {rep + 1} {kind}: {shutdown_s:.2f} s (returned {returned_s:.2f} s); {at_return} not REMOVED at "
        f"return" + (f"; all REMOVED {sampler.all_removed_s:.2f} s after the call" if sampler.all_removed_s is not None
                     else "") + (f"; registering took {register_s:.1f} s" if register_s is not None else "")
        + f"; table held {table_at_call:,}")
    return row


def pg_shutdown(sizes: PgSizes) -> dict:
    by_kind: dict = {PLAIN: [], DURABLE: []}
    for rep in range(sizes.reps):
        for kind in ((PLAIN, DURABLE) if rep % 2 == 0 else (DURABLE, PLAIN)):
            by_kind[kind].append(_one_shutdown(kind, sizes, rep))
    d, p = by_kind[DURABLE], by_kind[PLAIN]
    removed = [r["all_removed_s"] for r in d]
    return {
        "by_rep": by_kind, "pgs": sizes.pgs, "reps": sizes.reps, "with_app": sizes.with_app,
        "poll_s": sizes.poll_s,
        PLAIN: {"shutdown_s": median(r["shutdown_s"] for r in p), "returned_s": median(r["returned_s"] for r in p)},
        DURABLE: {"shutdown_s": median(r["shutdown_s"] for r in d), "returned_s": median(r["returned_s"] for r in d),
                  "all_removed_s": None if any(x is None for x in removed) else median(removed),
                  "not_removed_at_return": max(r["not_removed_at_return"] for r in d),
                  "register_s": median(r["register_s"] for r in d)},
    }


def _stats(s: Samples) -> dict:
    return {"p50_ms": s.ms(), "p90_ms": s.ms("p90"), "max_ms": max(s.values) * 1000, "n": len(s.values)}


def pg_register(sizes: PgSizes) -> dict:
    """``register_each`` actors, named placement groups and anonymous ones, registered in
    turn (actor, named, anonymous; the order rotates each round). A placement group's
    name is not in the ``PlacementGroup`` the driver holds: the controller learns it
    from the table lookup, so the two kinds are timed apart."""
    start_serve(DURABLE)
    n = sizes.register_each + sizes.warmup
    actors = pending_actors(n)
    named, anon = pending_placement_groups(n, named=True), pending_placement_groups(n, named=False)
    timed = {"actor": Samples(), "pg_named": Samples(), "pg_anon": Samples()}
    try:
        for trio in zip(actors[:sizes.warmup], named[:sizes.warmup], anon[:sizes.warmup]):
            for obj in trio:
                register_public(obj)
        for i, trio in enumerate(zip(actors[sizes.warmup:], named[sizes.warmup:], anon[sizes.warmup:])):
            turn = list(zip(timed, trio))
            for kind, obj in turn[i % 3:] + turn[:i % 3]:
                timed[kind].add(register_public(obj))
        stored = record_count()
    finally:
        stop_serve()
        kill_actors(actors)
        remove_placement_groups(named + anon)
        purge_records()
    pooled = Samples(timed["pg_named"].values + timed["pg_anon"].values)
    out = {"each": sizes.register_each, "warmup": sizes.warmup, "stored": stored,
           **{k: _stats(v) for k, v in timed.items()}, "pg": _stats(pooled)}
    a = out["actor"]
    for k in ("pg_named", "pg_anon", "pg"):
        out[k]["ratio_p50"] = out[k]["p50_ms"] / a["p50_ms"]
        out[k]["ratio_p90"] = out[k]["p90_ms"] / a["p90_ms"]
    log(f"register p50 (p90): actor {a['p50_ms']:.2f} ({a['p90_ms']:.2f}) ms; anonymous placement group "
        f"{out['pg_anon']['p50_ms']:.2f} ({out['pg_anon']['p90_ms']:.2f}) ms = {out['pg_anon']['ratio_p50']:.2f}x; "
        f"named {out['pg_named']['p50_ms']:.2f} ({out['pg_named']['p90_ms']:.2f}) ms = "
        f"{out['pg_named']['ratio_p50']:.2f}x; {sizes.register_each} of each, {stored} records stored")
    return out


def pgs(sizes: PgSizes) -> dict:
    """Issue 22, targets 1 and 2 (the registration figure first, on a fresh controller)."""
    return {"register": pg_register(sizes), "shutdown": pg_shutdown(sizes)}
