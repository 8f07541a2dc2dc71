"""python -m benchmarks.soak --minutes M [--kill-every-s K] [--warmup-minutes W] [--out DIR]

Issue 22, row 4: a soak under churn. Not part of ``python -m benchmarks`` (it runs for
as long as it is told).

Two runs, chosen by ``--kill-every-s``:

* ``--kill-every-s 0`` (default), run 1: the durable controller under the churn below for
  ``M`` minutes, then plain Serve under the same churn for ``M`` minutes, each on a fresh
  local cluster. The durable controller's RSS after the warm-up (``W`` minutes; default 5,
  or M/3 for runs under 15 minutes) against the end (target: growth ≤ 5 MB), and
  gcs_server's RSS, durable against plain, at the same two points. Plain Serve takes
  what it can of the churn: each new registered actor once, through Serve's upstream
  ``_register_shutdown_cleanup_actor`` (no owners, no unregistration); the actors the
  durable controller would kill when their owning apps are deleted the driver kills itself
  at the deletion, so both clusters see the same actors live and die.
* ``--kill-every-s K``, run 2: the durable controller under the same churn, killed
  (``ray.kill(no_restart=False)``) every K s on average (each interval drawn from 0.75 K
  to 1.25 K, seeded, so the kills fall at every phase of the app cycle). At the end, after ``--settle-s`` (the
  reconcile's time): 0 leaked (a registered actor alive whose owners are all gone), 0
  wrongly killed (an actor dead that the driver did not kill while it was registered with a
  live owner, or unregistered), and the keys under the record prefix equal to the live
  registrations the driver made. Run 1 reports the same checks.

The churn (one driver thread, paced by the clock; what is behind runs at once):

* registration calls and unregistration calls at ``calls_per_s`` (40) in total. A call is a
  registration while fewer than ``population`` actors are registered, else an
  unregistration of one chosen at random (the whole registration; its actor then lives
  ``retire_s`` more, checked alive, and the driver kills it). A registration is of a new
  actor: a third with two app owners (two ``register`` calls), a third with one, a third
  serve-wide. Owners are apps the driver deployed and is not deleting;
* registered actors dying on their own at ``deaths_per_s`` (5): the driver kills one chosen
  at random (``ray.kill``); the controller's sweep must drop its record;
* every ``app_every_s`` (30) an app is deployed (``soak-app-<k>``, one replica) or the
  oldest deleted, in turn, keeping ``apps`` to ``apps`` + 1 apps; at a deletion the
  actors whose owners are all deleted apps become "doomed": the controller must kill them;
* every ``check_every_s``: which of the actors that must live are dead (wrongly killed),
  RSS of the controller and gcs_server, the record count.

Actors: most are detached named PENDING_CREATION actors (``harness.PendingActor``: no
process, killable, in the actor table); ``real`` real actors (one process each) are
reused: registered with ``grace_s=real_grace_s``, unregistered and registered again, and
replaced only when killed.

Writes ``OUT/soak.json`` (this run's results under ``run1`` or ``run2``) and its section in
``OUT/soak.md``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import psutil
import ray
from ray import serve

from benchmarks.harness import (
    BENCH_NAMESPACE,
    DURABLE,
    PLAIN,
    REFUSED,
    UNAVAILABLE,
    BenchActor,
    BenchApp,
    PendingActor,
    connect,
    controller,
    gcs_server_process,
    live_actor_ids,
    log,
    package_commit,
    purge_records,
    record_count,
    record_pairs,
    register_public,
    register_upstream,
    start_serve,
    stop_serve,
    unregister_one,
    wait_for,
)



@dataclass
class SoakConfig:
    minutes: float = 30.0
    kill_every_s: float = 0.0
    warmup_minutes: Optional[float] = None
    calls_per_s: float = 40.0
    deaths_per_s: float = 5.0
    app_every_s: float = 30.0
    apps: int = 2  # apps live between a deletion and the next deploy (then one more)
    population: int = 600  # registered actors the churn keeps
    retire_s: float = 20.0  # an unregistered actor lives this long (checked), then the driver kills it
    real: int = 4
    real_grace_s: float = 1.0
    check_every_s: float = 10.0
    settle_s: float = 30.0
    seed: int = 22

    @property
    def warmup_s(self) -> float:
        w = self.warmup_minutes if self.warmup_minutes is not None else (5.0 if self.minutes >= 15 else self.minutes / 3)
        return w * 60


SERVE_OWNER = ("serve", "", "")


def _app_owner(app: str) -> tuple:
    return ("app", app, "")


@dataclass
class Tracked:
    handle: Any
    id: str
    real: bool
    owners: set = field(default_factory=set)  # owners of the pairs registered
    since: float = 0.0


class Churn:
    """The driver's model of what it did, and the churn that does it."""

    def __init__(self, kind: str, cfg: SoakConfig) -> None:
        self.kind, self.cfg = kind, cfg
        self.rng = random.Random(cfg.seed)
        self.registered: dict[str, Tracked] = {}
        self.unregistered: collections.deque = collections.deque()  # (time, Tracked), oldest first
        self.doomed: dict[str, tuple[float, Tracked]] = {}  # every owner deleted: the controller kills
        self.driver_killed: set[str] = set()
        self.uncertain: set[str] = set()  # a call whose outcome is unknown (the controller did not answer)
        self.wrongly_killed: list[dict] = []
        self.lost: list[dict] = []  # unregistrations that found no registration
        self.doomed_deaths: list[float] = []  # seconds from the app's deletion to the actor's death (seen)
        self.free_real: list[Tracked] = []
        self.buffer: list = []
        self.apps: list[str] = []  # deployed, not being deleted: owners to choose from (oldest first)
        self.deleted_apps: set[str] = set()
        self.next_app = 0
        self.counts = collections.Counter()
        self.latency: dict[str, list[float]] = {"register": [], "unregister": []}
        self.samples: list[dict] = []
        self.tag = os.urandom(3).hex()
        self.made = 0
        self.kills: list[float] = []
        self.ctrl = controller()  # plain: the upstream method's target (a plain controller is never killed here)
        self.gcs = gcs_server_process()

    # --- actors -------------------------------------------------------------------------

    def _new_pending(self) -> Tracked:
        if not self.buffer:
            self.buffer = [PendingActor.options(lifetime="detached", name=f"soak-{self.tag}-{self.made + i}",
                                                namespace=BENCH_NAMESPACE).remote() for i in range(50)]
            self.made += 50
            self.counts["actors_made"] += 50
        h = self.buffer.pop()
        return Tracked(h, h._actor_id.hex(), real=False)

    def _new_real(self) -> Tracked:
        h = BenchActor.options(lifetime="detached").remote()
        self.counts["real_made"] += 1
        return Tracked(h, h._actor_id.hex(), real=True)

    def start_real(self) -> None:
        self.free_real = [self._new_real() for _ in range(self.cfg.real)]
        ray.get([t.handle.ping.remote() for t in self.free_real], timeout=300)

    def _kill(self, t: Tracked) -> None:
        try:
            ray.kill(t.handle, no_restart=True)
        except Exception:
            pass
        self.driver_killed.add(t.id)

    # --- calls --------------------------------------------------------------------------

    def _call(self, what: str, fn, *args, **kwargs) -> Optional[object]:
        """One call; "refused" (nothing done) returns None; an unanswered one is retried
        (register and unregister are idempotent) and after 3 raises."""
        for attempt in range(3):
            t = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
                self.latency[what].append(time.perf_counter() - t)
                self.counts[f"{what}_calls"] += 1
                return out if out is not None else True
            except UNAVAILABLE:
                self.counts[f"{what}_unanswered"] += 1
            except REFUSED as e:
                self.counts[f"{what}_refused"] += 1
                self.counts[f"refused: {type(e).__name__}"] += 1
                return None
        raise UNAVAILABLE(f"{what} unanswered 3 times")

    def _register(self, t: Tracked, owner: tuple) -> bool:
        if self.kind == PLAIN:
            if t.owners:
                return True  # plain Serve takes each actor once, ownerless
            self.latency["register"].append(register_upstream(self.ctrl, t.handle))
            self.counts["register_calls"] += 1
            t.owners.add(owner)
            return True
        opts: dict = {"grace_s": self.cfg.real_grace_s} if t.real else {}
        if owner != SERVE_OWNER:
            opts.update(scope="app", app=owner[1])
        try:
            ok = self._call("register", register_public, t.handle, **opts)
        except UNAVAILABLE:
            self.uncertain.add(t.id)
            return False
        if ok:
            t.owners.add(owner)
        return bool(ok)

    def register_event(self, now: float) -> int:
        """A new registration; returns the calls made."""
        real = self.free_real and self.rng.random() < 0.1
        t = self.free_real.pop() if real else self._new_pending()
        t.owners, t.since = set(), now
        r = self.rng.random()
        if r < 1 / 3 and len(self.apps) >= 2:
            owners = [_app_owner(a) for a in self.rng.sample(self.apps, 2)]
        elif r < 2 / 3 and self.apps:
            owners = [_app_owner(self.rng.choice(self.apps))]
        else:
            owners = [SERVE_OWNER]
        calls = 0
        for owner in owners:
            calls += 1
            self._register(t, owner)
        if t.id in self.uncertain:
            return calls
        if t.owners:
            self.registered[t.id] = t
            self.counts[f"registered_{len(t.owners) if self.kind == DURABLE else len(owners)}_owners"] += 1
        elif t.real:
            self.free_real.append(t)
        else:
            self._kill(t)
        return calls

    def unregister_event(self, now: float) -> int:
        if not self.registered:
            return 0
        t = self.registered.pop(self.rng.choice(list(self.registered)))
        if self.kind == DURABLE:
            try:
                found = self._call("unregister", unregister_one, t.handle)
            except UNAVAILABLE:
                self.uncertain.add(t.id)
                return 1
            if found is False:  # the controller held no registration of it: a lost one
                self.counts["unregister_found_nothing"] += 1
                self.lost.append({"actor": t.id, "owners": sorted(map(list, t.owners)), "at_s": now})
        else:
            self.counts["unregister_skipped_plain"] += 1
        t.owners, t.since = set(), now
        self.unregistered.append((now, t))
        return 1

    def death_event(self) -> None:
        pending = [a for a, t in self.registered.items() if not t.real]
        if not pending:
            return
        t = self.registered.pop(self.rng.choice(pending))
        self._kill(t)
        self.counts["died_on_their_own"] += 1

    def retire(self, now: float, alive: set[str]) -> None:
        while self.unregistered and now - self.unregistered[0][0] >= self.cfg.retire_s:
            _, t = self.unregistered.popleft()
            if t.id not in alive:
                continue  # counted by the check that found it dead
            if t.real:
                self.free_real.append(t)
            else:
                self._kill(t)
                self.counts["retired"] += 1

    # --- apps ---------------------------------------------------------------------------

    def deploy_app(self) -> None:
        name = f"soak-app-{self.next_app}"
        self.next_app += 1
        t = time.perf_counter()
        serve.api._run(BenchApp.bind(), _blocking=False, name=name, route_prefix=None)
        self.counts["apps_deployed"] += 1
        self.apps.append(name)
        log(f"soak {self.kind}: deployed {name} ({time.perf_counter() - t:.1f} s); apps {self.apps}")

    def delete_app(self, now: float) -> None:
        if not self.apps:
            return
        name = self.apps.pop(0)
        self.deleted_apps.add(name)
        doomed = [t for t in self.registered.values()
                  if t.owners and all(o[0] == "app" and o[1] in self.deleted_apps for o in t.owners)]
        for t in doomed:
            del self.registered[t.id]
            if self.kind == DURABLE:
                self.doomed[t.id] = (now, t)
            elif t.real:
                self._kill(t)  # what the durable controller would have done
                self.counts["real_killed_for_plain"] += 1
            else:
                self._kill(t)
        t0 = time.perf_counter()
        serve.delete(name, _blocking=False)
        self.counts["apps_deleted"] += 1
        log(f"soak {self.kind}: deleting {name} ({time.perf_counter() - t0:.1f} s); {len(doomed)} actors doomed; "
            f"apps {self.apps}")

    # --- checks -------------------------------------------------------------------------

    def must_live(self) -> dict[str, Tracked]:
        out = {a: t for a, t in self.registered.items() if a not in self.uncertain}
        out.update({t.id: t for _, t in self.unregistered if t.id not in self.uncertain})
        return out

    def check(self, now: float, final: bool = False) -> dict:
        must = self.must_live()
        ids = set(must) | set(self.doomed)
        alive = live_actor_ids(ids)
        for a, t in must.items():
            if a not in alive:
                self.wrongly_killed.append({"actor": a, "owners": sorted(map(list, t.owners)), "real": t.real,
                                            "registered": a in self.registered, "seen_at_s": now})
                self.registered.pop(a, None)
        if not final:
            self.unregistered = collections.deque((x, t) for x, t in self.unregistered if t.id in alive)
        self._doomed_dead(now, alive)
        if not final:
            self.retire(now, alive)
            while len(self.free_real) + sum(1 for t in self.registered.values() if t.real) + \
                    sum(1 for _, t in self.unregistered if t.real) < self.cfg.real:
                self.free_real.append(self._new_real())
        return {"must_live": len(must), "doomed_alive": len(self.doomed)}

    def _doomed_dead(self, now: float, alive: set[str]) -> None:
        for a in [a for a in self.doomed if a not in alive]:
            deleted_at, t = self.doomed.pop(a)
            self.doomed_deaths.append(now - deleted_at)
            self.counts["killed_by_controller"] += 1
            if t.real:
                self.counts["real_killed_by_controller"] += 1

    def check_doomed(self, now: float) -> None:
        """Which doomed actors are dead now (every second while there are any: when the
        controller killed them, to that resolution)."""
        if self.doomed:
            self._doomed_dead(now, live_actor_ids(set(self.doomed)))

    def sample(self, now: float) -> dict:
        s: dict = {"t": now, "registered": len(self.registered), "unregistered": len(self.unregistered),
                   "doomed": len(self.doomed), "wrongly_killed": len(self.wrongly_killed),
                   "gcs_rss_mb": self.gcs.memory_info().rss / 2**20}
        try:
            pid = ray.get(controller().get_pid.remote(), timeout=2)
            s["controller_pid"] = pid
            s["controller_rss_mb"] = psutil.Process(pid).memory_info().rss / 2**20
        except Exception:
            s["controller_rss_mb"] = None
        if self.kind == DURABLE:
            try:
                s["records"] = record_count()
            except Exception:
                s["records"] = None
        self.samples.append(s)
        return s

    def model_pairs(self) -> set[tuple[str, tuple]]:
        return {(a, o) for a, t in self.registered.items() if a not in self.uncertain for o in t.owners}


def _rss_at(samples: list[dict], key: str, start: float, end: float) -> Optional[float]:
    xs = [s[key] for s in samples if start <= s["t"] <= end and s.get(key) is not None]
    return statistics.median(xs) if xs else None


def _pcts(xs: list[float]) -> dict:
    if not xs:
        return {}
    q = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) >= 2 else [xs[0]] * 99
    return {"p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "max_ms": max(xs) * 1000, "n": len(xs)}


def soak_once(kind: str, cfg: SoakConfig) -> dict:
    """``cfg.minutes`` of churn on the Serve of ``kind`` (a fresh local cluster), then the
    checks. The controller is killed every ``cfg.kill_every_s`` (durable only)."""
    ray.shutdown()
    connect(None)
    start_serve(kind)
    churn = Churn(kind, cfg)
    for _ in range(cfg.apps + 1):
        churn.deploy_app()
    churn.start_real()
    wait_for(lambda: all(s.status == "RUNNING" for s in serve.status().applications.values()), 120,
             "the first apps to run", every_s=0.5)
    duration = cfg.minutes * 60
    t0 = time.perf_counter()
    calls = deaths = 0
    next_app, next_check, next_doomed = cfg.app_every_s, 0.0, 0.0
    # Kill intervals drawn from 0.75-1.25 K (seeded): the kills fall at every phase of the
    # app cycle, not always right after a deploy or a deletion.
    kills = random.Random(cfg.seed + 1)
    next_kill = cfg.kill_every_s * kills.uniform(0.75, 1.25) if kind == DURABLE and cfg.kill_every_s else float("inf")
    deploy_next = False  # apps + 1 live at the start: a deletion first
    last_log = 0.0
    while True:
        now = time.perf_counter() - t0
        if now >= duration:
            break
        if now >= next_check:
            churn.check(now)
            s = churn.sample(now)
            next_check += cfg.check_every_s
            if now - last_log >= 60 or next_check <= cfg.check_every_s * 1.5:
                last_log = now
                log(f"soak {kind} {now / 60:.1f} min: {s['registered']} registered, {s['unregistered']} unregistered "
                    f"awaiting retirement, {s['doomed']} doomed alive, {len(churn.wrongly_killed)} wrongly killed; "
                    f"calls {churn.counts['register_calls'] + churn.counts['unregister_calls']}, "
                    f"controller RSS {s.get('controller_rss_mb') or 0:.0f} MB, gcs_server {s['gcs_rss_mb']:.0f} MB"
                    + (f", {s['records']} records" if s.get("records") is not None else ""))
        if now >= next_doomed:
            churn.check_doomed(now)
            next_doomed = now + 1.0
        if now >= next_app:
            churn.deploy_app() if deploy_next else churn.delete_app(now)
            deploy_next = not deploy_next
            next_app += cfg.app_every_s
        if now >= next_kill:
            try:
                ray.kill(controller(), no_restart=False)
                churn.kills.append(now)
                log(f"soak {kind}: killed the controller at {now:.0f} s ({len(churn.kills)} so far)")
            except Exception as e:
                log(f"soak {kind}: could not kill the controller: {e!r}")
            next_kill += cfg.kill_every_s * kills.uniform(0.75, 1.25)
        while deaths < now * cfg.deaths_per_s:
            churn.death_event()
            deaths += 1
        if calls < now * cfg.calls_per_s:
            if len(churn.registered) < cfg.population:
                calls += churn.register_event(now)
            else:
                calls += churn.unregister_event(now)
        else:
            time.sleep(min(0.005, max(0.0, (calls + 1) / cfg.calls_per_s - now)))
    ended = time.perf_counter() - t0
    log(f"soak {kind}: churn over after {ended:.0f} s; settling {cfg.settle_s:.0f} s")
    wait_for(lambda: ray.get(controller().get_pid.remote(), timeout=10), 300, "the controller to answer", every_s=0.5)
    time.sleep(cfg.settle_s)
    final_at = time.perf_counter() - t0
    churn.check(final_at, final=True)
    last = churn.sample(final_at)
    leaked = sorted(churn.doomed)
    result: dict = {
        "kind": kind, "seconds": ended, "settle_s": cfg.settle_s, "controller_kills": len(churn.kills),
        "calls": churn.counts["register_calls"] + churn.counts["unregister_calls"],
        "calls_per_s": (churn.counts["register_calls"] + churn.counts["unregister_calls"]) / ended,
        "counts": dict(churn.counts), "latency": {k: _pcts(v) for k, v in churn.latency.items()},
        "leaked": len(leaked), "leaked_ids": leaked[:20], "wrongly_killed": len(churn.wrongly_killed),
        "wrongly_killed_detail": churn.wrongly_killed[:20], "uncertain": len(churn.uncertain),
        "lost_registrations": len(churn.lost), "lost_detail": churn.lost[:20],
        "doomed_death_s": {k.replace("_ms", "_s"): v / 1000 if k.endswith("_ms") else v
                           for k, v in _pcts(churn.doomed_deaths).items()},
        "samples": churn.samples,
    }
    w = cfg.warmup_s
    window = min(60.0, max(cfg.check_every_s * 2, duration / 10))
    for key in ("controller_rss_mb", "gcs_rss_mb"):
        result[key] = {"after_warmup": _rss_at(churn.samples, key, w, w + window),
                       "end": _rss_at(churn.samples, key, ended - window, ended),
                       "warmup_s": w, "window_s": window}
        a, b = result[key]["after_warmup"], result[key]["end"]
        result[key]["growth"] = None if a is None or b is None else b - a
    if kind == DURABLE:
        stored = {(a, o) for a, o in record_pairs() if a not in churn.uncertain}
        model = churn.model_pairs()
        result["keys"] = {"stored": len(stored), "model": len(model), "extra": len(stored - model),
                          "missing": len(model - stored), "equal": stored == model,
                          "extra_sample": [list(x) for x in sorted(stored - model)[:10]],
                          "missing_sample": [list(x) for x in sorted(model - stored)[:10]]}
        result["records_at_end"] = last.get("records")
    log(f"soak {kind}: leaked {result['leaked']}, wrongly killed {result['wrongly_killed']}, uncertain "
        f"{result['uncertain']}" + (f"; keys {result['keys']['stored']} stored vs {result['keys']['model']} live "
                                    f"registrations (extra {result['keys']['extra']}, missing "
                                    f"{result['keys']['missing']})" if kind == DURABLE else "")
        + f"; controller RSS {_mb(result['controller_rss_mb'])}; gcs_server RSS {_mb(result['gcs_rss_mb'])}")
    t = time.perf_counter()
    try:
        stop_serve()
    finally:
        result["shutdown_s"] = time.perf_counter() - t
        leftovers = [t.handle for t in list(churn.registered.values()) + [t for _, t in churn.unregistered]
                     + [t for _, t in churn.doomed.values()] + churn.free_real] + churn.buffer
        for h in leftovers:
            try:
                ray.kill(h, no_restart=True)
            except Exception:
                pass
        purge_records()
    return result


def _mb(r: dict) -> str:
    a, b = r.get("after_warmup"), r.get("end")
    if a is None or b is None:
        return "—"
    return f"{a:.1f} → {b:.1f} MB ({b - a:+.1f})"


def run(cfg: SoakConfig) -> dict:
    kinds = [DURABLE] if cfg.kill_every_s else [DURABLE, PLAIN]
    out: dict = {"config": asdict(cfg), "warmup_s": cfg.warmup_s, "commit": package_commit(),
                 "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "command": " ".join(["python -m benchmarks.soak", *sys.argv[1:]])}
    try:
        for kind in kinds:
            out[kind] = soak_once(kind, cfg)
    finally:
        ray.shutdown()
    d = out[DURABLE]
    out["verdict"] = {
        "leaked": d["leaked"], "wrongly_killed": d["wrongly_killed"], "keys_equal": d["keys"]["equal"],
        "controller_rss_growth_mb": d["controller_rss_mb"]["growth"],
    }
    if PLAIN in out:
        p = out[PLAIN]
        out["verdict"]["gcs_rss_end_mb"] = {DURABLE: d["gcs_rss_mb"]["end"], PLAIN: p["gcs_rss_mb"]["end"]}
    return out


# --- the report ------------------------------------------------------------------------


def _section(name: str, r: dict) -> list[str]:
    c = r["config"]
    d = r[DURABLE]
    short = c["minutes"] < 30
    title = ("Run 1: no controller kills" if name == "run1" else f"Run 2: the controller killed every {c['kill_every_s']:g} s")
    lines = [f"## {title}", "",
             f"`{r['command']}` — {r['at']}, serve_cleanup {r['commit']}; {c['minutes']:g} minutes of churn"
             + (" per kind" if name == "run1" else "") + f", warm-up {r['warmup_s'] / 60:.1f} min."
             + (" **A short validation run: the figures show the script works, not the targets.**" if short else ""),
             "", "| | durable" + (" | plain |" if PLAIN in r else " |"), "|---|---:" + ("|---:|" if PLAIN in r else "|")]

    def row(label: str, f) -> None:
        vals = [f(r[k]) for k in (DURABLE, PLAIN) if k in r]
        lines.append(f"| {label} | " + " | ".join(vals) + " |")

    row("calls (register + unregister) / s", lambda x: f"{x['calls_per_s']:.1f} ({x['calls']:,})")
    row("register p50 / p99 / max ms", lambda x: _lat(x["latency"].get("register")))
    row("unregister p50 / p99 / max ms", lambda x: _lat(x["latency"].get("unregister")))
    row("registrations: 1 owner / 2 owners", lambda x: f"{x['counts'].get('registered_1_owners', 0):,} / "
                                                       f"{x['counts'].get('registered_2_owners', 0):,}")
    row("refused calls", lambda x: str(sum(v for k, v in x["counts"].items() if k.endswith("_refused"))))
    row("died on their own (driver kills)", lambda x: f"{x['counts'].get('died_on_their_own', 0):,}")
    row("apps deployed / deleted", lambda x: f"{x['counts'].get('apps_deployed', 0)} / {x['counts'].get('apps_deleted', 0)}")
    row("actors killed by the controller (every owner deleted); s from the delete to seen dead (read every "
        "second), p50 / max", lambda x: f"{x['counts'].get('killed_by_controller', 0):,}; " + _death(x))
    row("controller kills", lambda x: str(x["controller_kills"]))
    row("controller RSS MB, after warm-up → end", lambda x: _mb(x["controller_rss_mb"]))
    row("gcs_server RSS MB, after warm-up → end", lambda x: _mb(x["gcs_rss_mb"]))
    row("leaked (registered, alive, every owner gone)", lambda x: str(x["leaked"]))
    row("wrongly killed", lambda x: str(x["wrongly_killed"]))
    row("calls unanswered (outcome unknown: excluded from the checks)", lambda x: str(x["uncertain"]))
    if "lost_registrations" in d:
        lines.append(f"| unregistrations that found no registration (lost) | {d['lost_registrations']} |"
                     + (" — |" if PLAIN in r else ""))
    if "keys" in d:
        k = d["keys"]
        verdict = "equal" if k["equal"] else f"**{k['extra']} extra, {k['missing']} missing**"
        lines.append(f"| keys under the prefix vs live registrations | {k['stored']:,} vs {k['model']:,}: {verdict}"
                     + (" | — |" if PLAIN in r else " |"))
    row("serve.shutdown() at the end, s", lambda x: f"{x['shutdown_s']:.1f}")
    lines.append("")
    v = r["verdict"]
    targets = [f"leaked {v['leaked']} (target 0)", f"wrongly killed {v['wrongly_killed']} (target 0)",
               f"keys equal the live registrations: {'yes' if v['keys_equal'] else 'no'}"]
    if name == "run1":
        g = v["controller_rss_growth_mb"]
        targets.insert(0, "controller RSS growth " + ("—" if g is None else f"{g:+.1f} MB") + " (target ≤ 5 MB)")
        gcs = v.get("gcs_rss_end_mb")
        if gcs and gcs[DURABLE] and gcs[PLAIN]:
            targets.insert(1, f"gcs_server RSS at the end {gcs[DURABLE]:.0f} MB durable vs {gcs[PLAIN]:.0f} MB plain "
                              f"({gcs[DURABLE] - gcs[PLAIN]:+.0f} MB)")
    lines += ["Targets: " + "; ".join(targets) + ".", ""]
    return lines


def _death(x: dict) -> str:
    d = x.get("doomed_death_s") or {}
    p50, top = d.get("p50_s", d.get("p50_ms")), d.get("max_s", d.get("max_ms"))  # older runs: seconds under _ms
    return "—" if p50 is None else f"{p50:.1f} / {top:.1f}"


def _lat(x: Optional[dict]) -> str:
    if not x:
        return "—"
    return f"{x['p50_ms']:.1f} / {x['p99_ms']:.1f} / {x['max_ms']:.0f}"


def write(out_dir: Path, name: str, result: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "soak.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = result
    path.write_text(json.dumps(data, indent=2, default=list))
    return write_md(out_dir)


def write_md(out_dir: Path) -> Path:
    data = json.loads((out_dir / "soak.json").read_text())
    lines = ["# Soak (issue 22, row 4)", "",
             "_Generated by `python -m benchmarks.soak` (benchmarks/soak.py, whose docstring says what the churn "
             "is and how each figure is taken); do not edit by hand._", "",
             "Run 1: `python -m benchmarks.soak --minutes 30` (durable, then plain Serve under the same churn). "
             "Run 2: `python -m benchmarks.soak --minutes 30 --kill-every-s 60`.", ""]
    for key in ("run1", "run2"):
        if key in data:
            lines += _section(key, data[key])
    md = out_dir / "soak.md"
    md.write_text("\n".join(lines))
    return md


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="churn per kind (default 30)")
    p.add_argument("--kill-every-s", type=float, default=0.0,
                   help="kill the durable controller every K s (run 2); 0: run 1, durable and plain")
    p.add_argument("--warmup-minutes", type=float, default=None, help="default 5, or minutes/3 under 15 minutes")
    p.add_argument("--settle-s", type=float, default=30.0, help="after the churn, before the final checks")
    p.add_argument("--calls-per-s", type=float, default=40.0)
    p.add_argument("--deaths-per-s", type=float, default=5.0)
    p.add_argument("--population", type=int, default=600)
    p.add_argument("--out", default="docs/reports")
    p.add_argument("--report-only", action="store_true", help="run nothing: rewrite OUT/soak.md from OUT/soak.json")
    args = p.parse_args(argv)
    if args.report_only:
        md = write_md(Path(args.out))
        print(md.read_text())
        return 0
    cfg = SoakConfig(minutes=args.minutes, kill_every_s=args.kill_every_s, warmup_minutes=args.warmup_minutes,
                     settle_s=args.settle_s, calls_per_s=args.calls_per_s, deaths_per_s=args.deaths_per_s,
                     population=args.population)
    result = run(cfg)
    md = write(Path(args.out), "run2" if cfg.kill_every_s else "run1", result)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
