"""Chaos harness: registrations overlap with controller crashes, ``gc()``, owner deletion,
shutdown and unreadable KV entries; then the promise is checked.

Each round, on a fresh durable Serve instance, with a schedule drawn from the round's own
seed (``random.Random(round_seed)``; the round seeds come from the run's seed):

1. **Crash points**: a random subset of ``CRASH_POINTS`` armed for the controller (its
   ``runtime_env``), at a random probability, each firing at most once (the KV markers,
   cleared every round, count as kills).
2. **Junk under the record prefix**, planted through the GCS KV before the controller
   starts (so every controller start of the round reads it) and again mid-round: random
   byte keys (many not UTF-8), random values, and entries under a live bystander's record
   key whose value is garbage, a truncated record, or another actor's valid record.
3. Three apps: ``chaos`` (2 replicas that create and register actors on request; deleted
   only by shutdown), ``owned`` and ``owned2`` (owners of registrations; deleted mid-round).
4. **Overlap**, all at once: driver threads registering actors (named or anonymous; some
   registered right after ``.remote()`` with no ping, before GCS may know them; some with
   ``scope="app", app="owned"``; some given 2 or 3 owners, one ``register`` call each,
   among the apps and deployments of the three apps, now and then followed by a
   ``scope="serve"`` call that must leave them alone; now and then an actor that is already
   dead, which must be refused; now and then one the driver kills itself after
   registering); replica calls registering actors from inside Serve (Serve-wide, or with 2
   or 3 owners: the replica's own app or deployment by the defaults, others by name); an
   *adder* thread giving some replica-made actors one more owner from the driver; a killer
   thread crashing the controller; a thread calling ``serve_cleanup.collect()``; a thread
   deleting app ``owned`` (and in some rounds ``owned2``); a thread planting more junk.
5. **Settle** (rounds whose shutdown waits for the registrants): the owner-set checks
   (``owner_checks.before_shutdown``); in some rounds app ``owned2`` is then deleted on
   its own (the controller killed right after in half of them) and the checks run again.
6. **Shutdown**: in most rounds once the registrants are done (with another kill in the
   middle in half the rounds); in ``early_shutdown`` rounds while they are still running
   (a call that returned must still be honoured; a call that raised proves nothing).

Then, over owner sets (``owner_checks``): an actor died while one of its owners whose call
returned was still deployed, or a Serve-wide one died before shutdown ("wrongly
killed"); an actor all of whose owners were deleted is alive after the settle window
("orphans alive") or still has keys ("stale records"); a live actor misses the key of a
deployed owner ("owners lost"); after shutdown an actor whose registration *returned* is
alive ("leaked"). Also: every bystander is alive (else "wrongly killed"), no record is
left in the KV (else "records left"), the controller restarted no more often than it was
killed plus the crash points that fired (else "crash loop"), and every junk entry is
still there, unchanged.

Run standalone (starts its own local Ray)::

    python tests/chaos/harness.py --rounds 100 --seed 20261127
    python tests/chaos/harness.py --round-seed 123456789     # replay one round's schedule

or through pytest (``pytest tests/chaos --chaos-rounds 100``).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import ray
from ray import cloudpickle, serve
from ray.serve.api import RunTarget

import serve_cleanup
from serve_cleanup.serve_adapter import _ray, faults
from serve_cleanup.serve_adapter.kv import KvStore
from serve_cleanup.client.calls import controller_status
from serve_cleanup.client.controller import find_controller
from serve_cleanup.core import records
from serve_cleanup.core.config import CRASH_POINTS

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:  # run as a script: the tests' shared helpers are one folder up
    sys.path.insert(0, str(TESTS))
from waiting import TimedOut, wait_for  # noqa: E402

import owner_checks  # noqa: E402  (next to this file; Ray-free)

# Workers need not import this file: ship its classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

NAMESPACE = "serve-cleanup-chaos"
CHAOS_APP = "chaos"    # the registrants' app: deleted only by shutdown
OWNED_APP = "owned"    # deleted mid-round
OWNED2_APP = "owned2"  # deleted mid-round, after settling, or only by shutdown (the plan says)
# The owners a registration may name: every one is an app or deployment of the round's apps.
A_CHAOS, D_CHAOS = ("app", CHAOS_APP, ""), ("deployment", CHAOS_APP, "Registrant")
A_OWNED, D_OWNED = ("app", OWNED_APP, ""), ("deployment", OWNED_APP, "Owned")
A_OWNED2, D_OWNED2 = ("app", OWNED2_APP, ""), ("deployment", OWNED2_APP, "Owned")
OWNERS = (A_CHAOS, D_CHAOS, A_OWNED, D_OWNED, A_OWNED2, D_OWNED2)
ADDED_OWNERS = (A_OWNED, D_OWNED, A_OWNED2, D_OWNED2)  # what a driver adds to a replica's actor


@ray.remote(num_cpus=0)
class Payload:
    def ping(self) -> str:
        return "pong"


@ray.remote(num_cpus=0)
class Ledger:
    """Where replicas report the actors they make and the registrations that returned, so
    the harness knows them even when a whole replica call fails (e.g. during shutdown)."""

    def __init__(self) -> None:
        self._made: list = []
        self._calls: list = []  # (actor id, owner or None for scope "serve", returned?)
        self._ready: dict = {}  # replica's key -> handle, once one of its calls returned

    def made(self, actors: list) -> None:
        self._made.extend(actors)

    def call(self, actor_id: str, owner: Optional[tuple], ok: bool) -> None:
        self._calls.append((actor_id, owner, ok))

    def ready(self, key: str, actor: Any) -> None:
        self._ready[key] = actor

    def get_ready(self, key: str) -> Any:
        return self._ready.get(key)

    def drain(self) -> tuple[list, list]:
        out = (self._made, self._calls)
        self._made, self._calls, self._ready = [], [], {}
        return out


def register_owner(actor: Any, owner: Optional[tuple], timeout_s: float, own_app: str = "") -> None:
    """One ``register`` call for ``owner`` (``None``: ``scope="serve"``). Inside a replica
    (``own_app``), an owner of the replica's own app is named by the defaults."""
    if owner is None:
        serve_cleanup.register(actor, timeout_s=timeout_s)
    elif owner[1] == own_app:
        serve_cleanup.register(actor, scope=owner[0], timeout_s=timeout_s)
    elif owner[0] == "app":
        serve_cleanup.register(actor, scope="app", app=owner[1], timeout_s=timeout_s)
    else:
        serve_cleanup.register(actor, scope="deployment", app=owner[1], deployment=owner[2],
                               timeout_s=timeout_s)


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0})
class Registrant:
    """A replica that creates and registers actors, like a router would."""

    def spawn(self, plan: list, tag: str, ledger: Any, timeout_s: float) -> int:
        """``plan[i]``: (ping actor i before registering it?, its owners: one register call
        each, of this replica's own app or another; () for one ``scope="serve"`` call).
        Every call is reported to the ledger. Returns how many actors had a call return."""
        ok = 0
        for i, (ping, owners) in enumerate(plan):
            opts: dict[str, Any] = {"lifetime": "detached"}
            if i % 2 == 0:
                opts.update(name=f"{tag}-{i}", namespace=NAMESPACE)
            actor = Payload.options(**opts).remote()
            ray.get(ledger.made.remote([actor]))
            if ping:
                ray.get(actor.ping.remote())
            any_ok = False
            for owner in owners or (None,):
                try:
                    register_owner(actor, owner, timeout_s, own_app=CHAOS_APP)
                except Exception:  # any failure: not "returned", so no promise to check
                    ray.get(ledger.call.remote(actor._actor_id.hex(), owner, False))
                    continue
                ray.get(ledger.call.remote(actor._actor_id.hex(), owner, True))
                any_ok = True
            if any_ok:
                ray.get(ledger.ready.remote(f"{tag}-{i}", actor))
                ok += 1
        return ok


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class Owned:
    """The app that owns the app-scoped registrations; deleted mid-round."""

    def __call__(self) -> str:
        return "ok"


@dataclass
class Config:
    drivers: int = 2            # driver threads registering
    per_driver: int = 3         # actors each driver thread registers
    owned_share: float = 0.35   # chance a driver registration is app-scoped (app "owned")
    no_ping_share: float = 0.5  # chance an actor is registered right after .remote()
    per_replica_call: int = 2   # actors each replica call registers
    replica_calls: int = 2
    kills: tuple = (1, 2)       # controller kills during registration: min, max (crash points add more)
    window_s: float = 2.0       # kills, gc calls, the owner deletion and junk land in this window
    gc_calls: tuple = (1, 3)
    early_shutdown_share: float = 0.35  # rounds whose shutdown starts while registrants run
    junk_before: tuple = (2, 5)  # junk KV entries planted before the controller starts
    junk_during: tuple = (1, 3)  # ... and mid-round
    call_timeout_s: float = 30.0  # a register call's timeout (early-shutdown rounds: short)
    early_call_timeout_s: float = 8.0
    bystanders: int = 2
    settle_s: float = 30.0      # bound on pre-shutdown clean-up (owner deleted, actor died)
    multi_share: float = 0.4    # chance a driver's or a replica's actor gets 2 or 3 owners
    added_share: float = 0.3    # chance a replica's actor gets one more owner from a driver
    serve_call_share: float = 0.25  # chance a multi-owner driver actor also gets a scope="serve" call
    timeout_s: float = 90.0


# Counters of a round; Totals adds them up. The first four are the promise; the rest of
# the failures are further checks (see FAILURES); the others describe what happened.
COUNTS = (
    "registrations", "failed_calls", "refused_dead", "kills", "injected", "restarts",
    "owned_registrations", "gc_calls", "set_aside_planted", "set_aside_seen", "shutdown_retries",
    "multi_owner", "owner_calls", "owners_added",
)
FAILURES = (
    "leaked", "wrongly_killed", "records_left", "crash_loops",
    "dead_accepted", "orphans_alive", "stale_records", "owners_lost", "set_aside_touched",
    "set_aside_unreported", "errors",
)


@dataclass
class RoundResult:
    seed: int
    early_shutdown: bool = False
    kill_in_shutdown: bool = False
    owned2: str = "never"  # when app owned2 is deleted: "window", "settle" or "never" (shutdown)
    points: tuple = ()
    registrations: int = 0
    failed_calls: int = 0
    refused_dead: int = 0
    kills: int = 0      # ray.kill calls that went through + injected crashes that fired
    injected: int = 0   # crash-point markers found after the round
    restarts: int = 0
    owned_registrations: int = 0
    gc_calls: int = 0
    set_aside_planted: int = 0
    set_aside_seen: int = -1  # the controller's status just before shutdown (-1: no answer)
    shutdown_retries: int = 0  # serve.shutdown() calls that did not reach the controller
    multi_owner: int = 0  # registered actors with 2 or more confirmed owners
    owner_calls: int = 0  # register calls naming an app or deployment owner that returned
    owners_added: int = 0  # owners a driver added to a replica's actor (calls that returned)
    leaked: list = field(default_factory=list)
    wrongly_killed: list = field(default_factory=list)
    records_left: int = 0
    crash_loops: int = 0
    dead_accepted: list = field(default_factory=list)
    orphans_alive: list = field(default_factory=list)
    stale_records: list = field(default_factory=list)
    owners_lost: list = field(default_factory=list)
    set_aside_touched: int = 0
    set_aside_unreported: int = 0
    errors: list = field(default_factory=list)
    phases: dict = field(default_factory=dict)  # seconds: start, register, shutdown, check
    threads: dict = field(default_factory=dict)  # seconds from the start of step 4 to each thread's end

    def failures(self) -> dict[str, int]:
        return {k: _n(getattr(self, k)) for k in FAILURES if _n(getattr(self, k))}

    def line(self, n: int) -> str:
        return (
            f"round {n} (seed {self.seed}{', early shutdown' if self.early_shutdown else ''}"
            f"{', kill in shutdown' if self.kill_in_shutdown else ''}; "
            f"points {','.join(self.points) or '-'}): "
            f"{self.registrations} registered ({self.owned_registrations} app-scoped, "
            f"{self.multi_owner} multi-owner, {self.owners_added} owners added, owned2 {self.owned2}), "
            f"{self.failed_calls} failed, {self.refused_dead} dead refused, {self.kills} kills "
            f"({self.injected} injected), {self.restarts} restarts, {self.gc_calls} gc, "
            f"set aside {self.set_aside_seen}/{self.set_aside_planted}"
            f"{f', {self.shutdown_retries} shutdown retries' if self.shutdown_retries else ''}; "
            f"leaked {len(self.leaked)}, wrongly killed {len(self.wrongly_killed)}, "
            f"records left {self.records_left}, crash loops {self.crash_loops}"
            + "".join(f", {k} {v}" for k, v in self.failures().items() if k not in FAILURES[:4])
            + " [" + " ".join(f"{k} {v:.1f}s" for k, v in self.phases.items()) + "; threads "
            + " ".join(f"{k} {v:.1f}" for k, v in sorted(self.threads.items())) + "]"
        )


def _n(value: Any) -> int:
    return len(value) if isinstance(value, list) else int(value)


@dataclass
class Totals:
    rounds: int = 0
    seconds: float = 0.0
    failed_rounds: list = field(default_factory=list)  # (round number, seed, failures)
    counts: dict = field(default_factory=lambda: {k: 0 for k in COUNTS + FAILURES})
    early_shutdowns: int = 0
    kills_in_shutdown: int = 0  # rounds that drew a kill during shutdown
    leaked: list = field(default_factory=list)
    wrongly_killed: list = field(default_factory=list)

    def add(self, r: RoundResult) -> None:
        self.rounds += 1
        for k in COUNTS + FAILURES:
            self.counts[k] += _n(getattr(r, k)) if k != "set_aside_seen" else max(0, r.set_aside_seen)
        self.early_shutdowns += r.early_shutdown
        self.kills_in_shutdown += r.kill_in_shutdown
        self.leaked += r.leaked
        self.wrongly_killed += r.wrongly_killed
        if r.failures():
            self.failed_rounds.append((self.rounds, r.seed, r.failures()))

    @property
    def registrations(self) -> int:
        return self.counts["registrations"]

    @property
    def kills(self) -> int:
        return self.counts["kills"]

    @property
    def records_left(self) -> int:
        return self.counts["records_left"]

    @property
    def crash_loops(self) -> int:
        return self.counts["crash_loops"]

    @property
    def ok(self) -> bool:
        return not self.failed_rounds

    def summary(self, seed: int) -> str:
        c = self.counts
        return (
            f"chaos: rounds={self.rounds} registrations={c['registrations']} kills={c['kills']} "
            f"leaked={c['leaked']} wrongly_killed={c['wrongly_killed']} "
            f"records_left={c['records_left']} crash_loops={c['crash_loops']} "
            f"failed_calls={c['failed_calls']} set_aside_seen={c['set_aside_seen']} "
            f"seed={seed} seconds={self.seconds:.0f}\n"
            f"chaos details: injected_crashes={c['injected']} restarts={c['restarts']} "
            f"app_scoped={c['owned_registrations']} multi_owner={c['multi_owner']} "
            f"owner_calls={c['owner_calls']} owners_added={c['owners_added']} "
            f"refused_dead={c['refused_dead']} "
            f"gc_calls={c['gc_calls']} early_shutdowns={self.early_shutdowns} "
            f"kills_in_shutdown={self.kills_in_shutdown} set_aside_planted={c['set_aside_planted']} "
            f"shutdown_retries={c['shutdown_retries']} "
            f"dead_accepted={c['dead_accepted']} orphans_alive={c['orphans_alive']} "
            f"stale_records={c['stale_records']} owners_lost={c['owners_lost']} set_aside_touched={c['set_aside_touched']} "
            f"set_aside_unreported={c['set_aside_unreported']} errors={c['errors']} "
            f"failed_rounds={len(self.failed_rounds)}"
        )


# --- Ray look-ups ---------------------------------------------------------------------


def _came_true(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.05) -> bool:
    """Whether ``predicate`` came true within ``timeout_s`` (the harness counts what did
    not instead of failing at once)."""
    try:
        wait_for(predicate, timeout_s, interval_s=interval_s)
    except TimedOut:
        return False
    return True


def _state(actor_id: str) -> str:
    info = _ray.actor_info(actor_id)
    return "DEAD" if info is None else info.state


def _controller():
    return ray.get_actor(_ray.SERVE_CONTROLLER_NAME, namespace=_ray.SERVE_NAMESPACE)


def _kv() -> KvStore:
    return KvStore(_ray.driver_gcs_client())


def _kv_get(key: bytes) -> Optional[bytes]:
    return _kv().get(key)


def _kv_put(key: bytes, value: bytes) -> None:
    _kv().put(key, value)


def _kv_del(key: bytes) -> None:
    _kv().delete(key)


def _record_keys() -> set[bytes]:
    """Every key under the record prefix, below Serve's KV prefix (raw bytes)."""
    return set(_kv().keys(records.KEY_PREFIX))


def _marker(point: str) -> bytes:
    return (faults.MARKER_PREFIX + point).encode()


def _id(actor: Any) -> str:
    return actor._actor_id.hex()


# --- junk under the record prefix -----------------------------------------------------


def _junk(rng: random.Random, n: int, bystanders: list) -> dict[bytes, bytes]:
    """``n`` KV entries under the record prefix that are not records of ours."""
    prefix = records.KEY_PREFIX.encode()
    out: dict[bytes, bytes] = {}
    while len(out) < n:
        kind = rng.random()
        if kind < 0.5:  # random bytes (mostly not UTF-8)
            key = prefix + rng.randbytes(rng.randint(1, 40))
        elif kind < 0.7:  # printable, UTF-8, not an actor id
            key = prefix + f"junk-{rng.getrandbits(64):x}-ü".encode()
        else:  # a live bystander's record key, with a value that is not its record
            key = prefix + _id(rng.choice(bystanders)).encode()
        if key in out:
            continue
        style = rng.random()
        if style < 0.6 or not key.endswith(tuple(_id(b).encode() for b in bystanders)):
            value = rng.randbytes(rng.randint(0, 64))
        else:
            owner, other = bystanders[0], bystanders[-1]
            if key.endswith(_id(other).encode()):
                owner, other = other, owner
            real = records.encode(records.Record(
                actor_id=_id(other), name="", namespace="",
                handle=_ray.handle_to_bytes(other), registered_at=time.time(),
            ))
            # Another actor's valid record under this key, or this actor's record cut short.
            value = real if style < 0.8 else records.encode(records.Record(
                actor_id=_id(owner), name="", namespace="",
                handle=_ray.handle_to_bytes(owner), registered_at=time.time(),
            ))[: rng.randint(1, 20)]
        out[key] = value
    return out


# --- one round ------------------------------------------------------------------------


@dataclass
class _Plan:
    """Everything a round draws from its rng, drawn up front so the seed fixes it."""

    points: tuple
    probability: float
    junk_before: int
    junk_during: int
    junk_at: float
    drivers: list  # per driver: list of (named, ping, owned)
    dead_refusals: list  # per driver: register an already-dead actor first?
    self_kill: list  # per driver: kill its first serve-scoped registered actor?
    replica_plans: list
    kill_times: list
    gc_times: list
    delete_at: float
    early_shutdown: bool
    shutdown_at: float
    kill_in_shutdown: bool
    shutdown_kill_delay: float
    # Owner sets, drawn after everything above (so the older fields keep their draws):
    driver_owners: list  # per driver, per actor: owners added after its first call
    driver_serve_call: list  # per driver, per actor: a scope="serve" call after its owners?
    replica_owners: list  # per replica call, per actor: its owners (() = one scope="serve" call)
    added: list  # (replica call, actor, owner): a driver adds that owner to a replica's actor
    owned2: str  # "window" (deleted at delete2_at), "settle" (after the first settle) or "never"
    delete2_at: float
    kill_after_delete2: bool  # "settle": kill the controller right after owned2's deletion

    @classmethod
    def draw(cls, rng: random.Random, cfg: Config) -> "_Plan":
        points = tuple(sorted(rng.sample(CRASH_POINTS, rng.randint(0, len(CRASH_POINTS)))))
        fields = dict(
            points=points,
            probability=rng.choice((1.0, 0.5, 0.25)),
            junk_before=rng.randint(*cfg.junk_before),
            junk_during=rng.randint(*cfg.junk_during),
            junk_at=rng.uniform(0, cfg.window_s),
            drivers=[
                [((i + k) % 2 == 0, rng.random() >= cfg.no_ping_share, rng.random() < cfg.owned_share)
                 for k in range(cfg.per_driver)]
                for i in range(cfg.drivers)
            ],
            dead_refusals=[rng.random() < 0.3 for _ in range(cfg.drivers)],
            self_kill=[rng.random() < 0.3 for _ in range(cfg.drivers)],
            replica_plans=[
                [rng.random() >= cfg.no_ping_share for _ in range(cfg.per_replica_call)]
                for _ in range(cfg.replica_calls)
            ],
            kill_times=sorted(rng.uniform(0, cfg.window_s) for _ in range(rng.randint(*cfg.kills))),
            gc_times=sorted(rng.uniform(0, cfg.window_s + 1.0) for _ in range(rng.randint(*cfg.gc_calls))),
            delete_at=rng.uniform(0, cfg.window_s),
            early_shutdown=rng.random() < cfg.early_shutdown_share,
            shutdown_at=rng.uniform(0.2, cfg.window_s),
            kill_in_shutdown=rng.random() < 0.5,
            shutdown_kill_delay=rng.uniform(0.0, 2.0),
        )
        fields.update(cls._draw_owners(rng, cfg, fields["drivers"]))
        return cls(**fields)

    @staticmethod
    def _draw_owners(rng: random.Random, cfg: Config, drivers: list) -> dict:
        """A driver actor's first call is as before (``scope="serve"``, or app ``owned``);
        a multi-owner one then adds owners until it has 2 or 3. A replica's multi-owner actor
        is registered by the replica with 2 or 3 owners, its own app or deployment among
        them half the time; a driver may add one more owner to any replica actor."""
        def several(first: Optional[tuple], pool: tuple) -> tuple:
            n = rng.choice((2, 3)) - (first is not None)
            return tuple(rng.sample([o for o in pool if o != first], n))

        driver_owners, driver_serve = [], []
        for i in range(cfg.drivers):
            row, serve_calls = [], []
            for k in range(cfg.per_driver):
                multi = rng.random() < cfg.multi_share
                first = A_OWNED if drivers[i][k][2] else None  # its first call's owner
                row.append(several(first, OWNERS) if multi else ())
                serve_calls.append(multi and rng.random() < cfg.serve_call_share)
            driver_owners.append(row)
            driver_serve.append(serve_calls)
        replica_owners = []
        for _ in range(cfg.replica_calls):
            row = []
            for _ in range(cfg.per_replica_call):
                if rng.random() < cfg.multi_share:
                    own = rng.choice((A_CHAOS, D_CHAOS)) if rng.random() < 0.5 else None
                    row.append(((own,) if own else ()) + several(own, OWNERS[2:]))
                else:
                    row.append(())
            replica_owners.append(row)
        added = [(j, i, rng.choice(ADDED_OWNERS))
                 for j in range(cfg.replica_calls) for i in range(cfg.per_replica_call)
                 if rng.random() < cfg.added_share]
        return dict(
            driver_owners=driver_owners, driver_serve_call=driver_serve,
            replica_owners=replica_owners, added=added,
            owned2=rng.choice(("window", "settle", "never")),
            delete2_at=rng.uniform(0, cfg.window_s),
            kill_after_delete2=rng.random() < 0.5,
        )


def _sleep_until(started: float, t: float) -> None:
    """Chaos timing, not synchronisation: wait for a moment the rng drew."""
    time.sleep(max(0.0, t - (time.monotonic() - started)))


def run_round(seed: int, cfg: Config, ledger: Any, bystanders: list,
              log: Callable[[str], None]) -> RoundResult:
    rng = random.Random(seed)
    plan = _Plan.draw(rng, cfg)
    res = RoundResult(seed=seed, early_shutdown=plan.early_shutdown,
                      kill_in_shutdown=plan.kill_in_shutdown, points=plan.points,
                      # early-shutdown rounds do not settle: "settle" leaves owned2 to shutdown
                      owned2="never" if plan.early_shutdown and plan.owned2 == "settle" else plan.owned2)
    tag = uuid.uuid4().hex[:6]
    junk: dict[bytes, bytes] = {}
    attempted: list = []  # every actor made for registration (killed at the end)
    threads: list[threading.Thread] = []
    try:
        _round(rng, plan, cfg, res, tag, ledger, junk, attempted, bystanders, threads, log)
    except Exception:
        res.errors.append(traceback.format_exc())
        log(f"round error (seed {seed}):\n{res.errors[-1]}")
    finally:
        _clean_up(res, junk, attempted, threads, ledger, cfg)
    return res


def _round(rng, plan: _Plan, cfg: Config, res: RoundResult, tag: str, ledger: Any,
           junk: dict, attempted: list, bystanders: list, threads: list,
           log: Callable[[str], None] = print) -> None:
    serve.shutdown()
    if not _came_true(lambda: find_controller() is None, cfg.timeout_s):
        raise AssertionError("a controller from before this round is still running")
    for point in CRASH_POINTS:
        _kv_del(_marker(point))

    # Bystanders live for the whole run (fewer process starts); one that died is counted
    # in its round and replaced.
    for i in range(cfg.bystanders):
        if i < len(bystanders) and _state(_id(bystanders[i])) == "ALIVE":
            continue
        b = (Payload.options(name=f"by-{tag}-{i}", namespace=NAMESPACE, lifetime="detached")
             if i % 2 == 0 else Payload.options(lifetime="detached")).remote()
        ray.get(b.ping.remote())
        bystanders[i:i + 1] = [b]
    t_start = time.monotonic()

    # Junk the controller must set aside at every start of this round.
    before = _junk(rng, plan.junk_before, bystanders)
    for k, v in before.items():
        _kv_put(k, v)
    junk.update(before)
    res.set_aside_planted = len(before)

    env = {}
    if plan.points:
        env = {"SERVE_CLEANUP_CRASH_POINTS": ",".join(plan.points),
               "SERVE_CLEANUP_CRASH_PROBABILITY": str(plan.probability)}
    serve_cleanup.start(controller_options={"runtime_env": {"env_vars": env}} if env else None)
    ctrl_id = _id(_controller())
    handle = serve.run_many([
        RunTarget(target=Registrant.bind(), name=CHAOS_APP, route_prefix=None),
        RunTarget(target=Owned.bind(), name=OWNED_APP, route_prefix=None),
        RunTarget(target=Owned.bind(), name=OWNED2_APP, route_prefix=None),
    ])[0]
    during = _junk(rng, plan.junk_during, bystanders)
    during = {k: v for k, v in during.items() if k not in junk}

    lock = threading.Lock()
    calls: dict[str, owner_checks.Calls] = {}  # actor id -> its register calls (drivers' and replicas')
    self_killed: list[str] = []
    shutdown_started = threading.Event()
    shutdown_done = threading.Event()
    replicas_done = threading.Event()
    deleting: set[str] = set()  # apps whose serve.delete started (their actors may die)
    deleted: set[str] = set()   # ... and returned (their actors must die)
    landed = [0]
    call_timeout = cfg.early_call_timeout_s if plan.early_shutdown else cfg.call_timeout_s

    def count(attr: str, n: int = 1) -> None:
        with lock:
            setattr(res, attr, getattr(res, attr) + n)

    def note(actor_id: str, owner: Optional[tuple], ok: bool) -> None:
        with lock:
            calls.setdefault(actor_id, owner_checks.Calls()).note(owner, ok)
            if ok and owner is not None:
                res.owner_calls += 1

    def register(actor: Any, owner: Optional[tuple]) -> bool:
        try:
            register_owner(actor, owner, call_timeout)
        except Exception:
            count("failed_calls")
            note(_id(actor), owner, False)
            return False
        note(_id(actor), owner, True)
        return True

    def driver(i: int) -> None:
        if plan.dead_refusals[i]:  # an actor that is dead before it is registered
            actor = Payload.options(lifetime="detached").remote()
            with lock:
                attempted.append(actor)
            try:
                ray.get(actor.ping.remote())
                ray.kill(actor, no_restart=True)
                _came_true(lambda: _state(_id(actor)) == "DEAD", 30)
                serve_cleanup.register(actor, timeout_s=call_timeout)
                with lock:
                    res.dead_accepted.append(_id(actor))  # its call returned: a bug
            except serve_cleanup.DeadActorError:
                count("refused_dead")
            except Exception:
                count("failed_calls")
        killed_own = not plan.self_kill[i]
        for k, (named, ping, owned) in enumerate(plan.drivers[i]):
            if shutdown_done.is_set():
                return  # nothing would accept it; the call would only wait for its timeout
            opts: dict[str, Any] = {"lifetime": "detached"}
            if named:
                opts.update(name=f"drv-{tag}-{i}-{k}", namespace=NAMESPACE)
            actor = Payload.options(**opts).remote()
            with lock:
                attempted.append(actor)
            more = plan.driver_owners[i][k]
            try:
                if ping:
                    ray.get(actor.ping.remote())
            except Exception:
                count("failed_calls")
                continue
            # The first call as before; then the owners that make it 2 or 3 (each call on
            # its own: one that raised does not stop the next), then maybe scope="serve"
            # (which must leave the owners as they are).
            first_ok = register(actor, A_OWNED if owned else None)
            for owner in more + ((None,) if plan.driver_serve_call[i][k] else ()):
                if shutdown_done.is_set():
                    break
                register(actor, owner)
            if first_ok and not owned and not more and not killed_own and not shutdown_started.is_set():
                killed_own = True  # the actor dies on its own: the sweep must drop its record
                ray.kill(actor, no_restart=True)
                with lock:
                    self_killed.append(_id(actor))

    def replicas() -> None:
        plans = [list(zip(pings, owners, strict=True))
                 for pings, owners in zip(plan.replica_plans, plan.replica_owners, strict=True)]
        refs = [handle.spawn.remote(p, f"rep-{tag}-{j}", ledger, call_timeout)
                for j, p in enumerate(plans)]
        deadline = time.monotonic() + cfg.timeout_s
        try:
            for ref in refs:
                while time.monotonic() < deadline:
                    try:
                        ref.result(timeout_s=0.5)
                        break
                    except TimeoutError:
                        if shutdown_done.is_set():
                            return  # Serve is gone: the ledger says what was made and returned
                    except Exception:
                        break  # the call failed; the ledger says what was made and returned
        finally:
            replicas_done.set()

    def adder() -> None:
        """A driver adding an owner to an actor a replica made and registered (once one of
        the replica's calls for it returned)."""
        for j, i, owner in plan.added:
            actor = None
            while actor is None and not shutdown_started.is_set():
                done = replicas_done.is_set()
                actor = ray.get(ledger.get_ready.remote(f"rep-{tag}-{j}-{i}"))
                if actor is None and done:
                    break  # no call of the replica's for it returned: nothing to add to
                if actor is None:
                    time.sleep(0.1)
            if actor is not None and not shutdown_done.is_set() and register(actor, owner):
                count("owners_added")

    def killer() -> None:
        started = time.monotonic()
        for t in plan.kill_times:
            _sleep_until(started, t)
            if shutdown_done.is_set():
                return
            try:
                ray.kill(_controller(), no_restart=False)
                landed[0] += 1
            except Exception:
                pass

    def collector() -> None:
        started = time.monotonic()
        for t in plan.gc_times:
            _sleep_until(started, t)
            if shutdown_started.is_set():
                return
            try:
                serve_cleanup.collect(timeout_s=call_timeout)
                count("gc_calls")
            except Exception:
                pass

    def delete(app: str) -> bool:
        with lock:
            deleting.add(app)
        try:
            serve.delete(app)
        except Exception:
            return False
        with lock:
            deleted.add(app)
        return True

    def deleter() -> None:
        """Deletes app "owned" and, in "window" rounds, app "owned2", at their drawn times."""
        started = time.monotonic()
        times = [(plan.delete_at, OWNED_APP)]
        if plan.owned2 == "window":
            times.append((plan.delete2_at, OWNED2_APP))
        for t, app in sorted(times):
            _sleep_until(started, t)
            if shutdown_started.is_set():
                return
            delete(app)

    def planter() -> None:
        _sleep_until(time.monotonic(), plan.junk_at)
        for k, v in during.items():
            _kv_put(k, v)
            with lock:
                junk[k] = v

    def timed(name: str, f: Callable[..., None], *args: Any) -> threading.Thread:
        def body() -> None:
            try:
                f(*args)
            finally:
                res.threads[name] = time.monotonic() - started
        return threading.Thread(target=body, name=name)

    def drain_ledger() -> None:
        made, replica_calls = ray.get(ledger.drain.remote())
        attempted.extend(made)
        for actor_id, owner, ok in replica_calls:
            note(actor_id, owner, ok)
            if not ok:
                count("failed_calls")

    registrants = [timed(f"driver{i}", driver, i) for i in range(cfg.drivers)]
    registrants.append(timed("replicas", replicas))
    others = [timed(f.__name__, f) for f in (adder, killer, collector, deleter, planter)]
    threads += registrants + others
    started = time.monotonic()
    res.phases["start"] = started - t_start
    for t in registrants + others:
        t.start()

    if plan.early_shutdown:
        _sleep_until(started, plan.shutdown_at)
    else:
        for t in registrants + others:
            t.join(cfg.timeout_s)
        t_settle = time.monotonic()
        drain_ledger()
        _settle(cfg, res, calls, self_killed, set(deleting), set(deleted), set(junk))
        if plan.owned2 == "settle":
            # The second owner app goes now, alone: an actor it shared with app "owned" (gone)
            # dies now, not before; one it shares with app "chaos" lives on.
            if delete(OWNED2_APP) and plan.kill_after_delete2:
                try:
                    ray.kill(_controller(), no_restart=False)  # before or during the reap
                    landed[0] += 1
                except Exception:
                    pass
            _settle(cfg, res, calls, self_killed, set(deleting), set(deleted), set(junk))
        res.phases["settle"] = time.monotonic() - t_settle
    res.set_aside_seen = _set_aside_seen()
    if 0 <= res.set_aside_seen < res.set_aside_planted:
        res.set_aside_unreported = res.set_aside_planted - res.set_aside_seen

    shutdown_started.set()
    t_shutdown = time.monotonic()
    res.phases["register"] = t_shutdown - started
    shutdown = threading.Thread(target=_shut_down, args=(res, cfg))
    threads.append(shutdown)
    shutdown.start()
    in_shutdown = 0
    if plan.kill_in_shutdown:
        time.sleep(plan.shutdown_kill_delay)  # chaos timing
        try:
            ray.kill(_controller(), no_restart=False)
            in_shutdown = 1
        except Exception:
            pass  # shutdown already finished
    shutdown.join(cfg.timeout_s)
    if not _came_true(lambda: find_controller() is None, cfg.timeout_s):
        raise AssertionError("the controller did not finish shutdown")
    shutdown_done.set()
    for t in threads:
        t.join(cfg.timeout_s)
        if t.is_alive():
            raise AssertionError(f"thread {t.name} still running {cfg.timeout_s}s after shutdown")

    t_check = time.monotonic()
    res.phases["shutdown"] = t_check - t_shutdown
    drain_ledger()

    res.injected = sum(_kv_get(_marker(p)) is not None for p in CRASH_POINTS)
    res.kills = landed[0] + in_shutdown + res.injected
    registered = {a: c for a, c in calls.items() if c.registered}
    res.registrations = len(registered)
    res.owned_registrations = sum(bool(c.confirmed) for c in registered.values())
    res.multi_owner = sum(len(c.confirmed) >= 2 for c in registered.values())
    # Serve is shut down: every registered actor must be dead (each may take up to 30 s).
    _came_true(lambda: all(_state(a) == "DEAD" for a in registered), 30, 0.1)
    keys = _record_keys()
    res.leaked, _ = owner_checks.after_shutdown(  # keys left: counted in records_left
        registered, {a: _state(a) for a in registered},
        owner_checks.key_owners(keys - set(junk), registered))
    res.wrongly_killed += [_id(b) for b in bystanders if _state(_id(b)) != "ALIVE"]
    res.records_left = len(keys - set(junk))
    res.set_aside_touched = sum(_kv_get(k) != v for k, v in junk.items())
    info = _ray.actor_entry(ctrl_id)
    res.restarts = info.num_restarts if info else 0
    res.crash_loops = int(res.restarts > res.kills)
    res.phases["check"] = time.monotonic() - t_check
    if res.failures():
        for k in sorted(keys - set(junk)):
            log(f"  record left: {k!r}")
        for a in sorted(set(res.leaked + res.wrongly_killed + res.orphans_alive + res.owners_lost)):
            c = calls.get(a)
            if c is not None:
                log(f"  {a}: owners returned {sorted(c.confirmed)}, raised {sorted(c.unconfirmed)}, "
                    f"serve call returned {c.serve_returned}; apps deleted {sorted(deleted)}")
        for line in _controller_log_lines(res.leaked + res.wrongly_killed + res.dead_accepted
                                          + res.orphans_alive + res.stale_records + res.owners_lost):
            log(f"  controller log: {line}")


def _shut_down(res: RoundResult, cfg: Config) -> None:
    """``serve.shutdown()``, repeated until the controller has taken it. Serve 2.60's
    ``serve.shutdown()`` returns without doing anything ("Nothing to shut down") when the
    cached controller does not answer ``check_alive`` within 5 s, e.g. while Ray restarts
    it; a user would call it again, and so does the harness (``shutdown_retries``)."""
    serve.shutdown()
    deadline = time.monotonic() + cfg.timeout_s
    while time.monotonic() < deadline:
        ctrl = find_controller()
        if ctrl is None:
            return
        try:
            if ray.get(ctrl.serve_cleanup_status.remote(), timeout=10)["shutting_down"]:
                return
        except Exception:
            continue  # restarting, or exiting: look again
        res.shutdown_retries += 1
        serve.shutdown()


def _settle(cfg: Config, res: RoundResult, calls: dict, self_killed: list[str],
            deleting: set[str], deleted: set[str], junk: set[bytes]) -> None:
    """Before shutdown (registrants done): wait (up to ``settle_s``) until every actor whose
    owners are all gone is dead and has no key, and so has every actor a driver killed
    itself; then check the owner-set rules (``owner_checks.before_shutdown``). Called once
    or twice a round; an actor is counted once per failure."""
    snapshot = {a: dataclasses.replace(c, confirmed=set(c.confirmed), unconfirmed=set(c.unconfirmed))
                for a, c in calls.items()}
    must = [a for a, c in snapshot.items() if a not in self_killed and owner_checks.must_die(c, deleted)]
    gone = must + list(self_killed)

    def keys_of(ids: list[str]) -> dict[str, set]:
        return owner_checks.key_owners(_record_keys() - junk, ids)

    _came_true(lambda: all(_state(a) == "DEAD" for a in must)
               and not any(keys_of(gone).values()), cfg.settle_s, 0.1)
    # Keys first, then states: a reap kills, waits for DEAD, then deletes the keys, so a
    # live actor read after its keys were found missing really lost them.
    keys = keys_of(list(snapshot) + list(self_killed))
    states = {a: _state(a) for a in snapshot}
    v = owner_checks.before_shutdown(snapshot, states, keys, deleting, deleted, self_killed)
    for name in ("wrongly_killed", "orphans_alive", "stale_records", "owners_lost"):
        seen = getattr(res, name)
        seen += [a for a in getattr(v, name) if a not in seen]


def _controller_log_lines(actor_ids: list[str], limit: int = 40) -> list[str]:
    """Lines of this session's controller logs that mention one of ``actor_ids``."""
    import glob
    import os

    try:
        session = ray._private.worker.global_worker.node.get_session_dir_path()
    except Exception:  # connected to a cluster started elsewhere
        session = "/tmp/ray/session_latest"
    out = []
    for path in sorted(glob.glob(os.path.join(session, "logs", "serve", "controller_*.log"))):
        try:
            with open(path, errors="replace") as f:
                out += [f"{os.path.basename(path)}: {line.rstrip()}" for line in f
                        if any(a in line for a in actor_ids)]
        except OSError:
            pass
    return out[-limit:]


def _set_aside_seen() -> int:
    try:
        return len(controller_status(timeout_s=10)["set_aside"])
    except Exception:
        return -1


def _clean_up(res: RoundResult, junk: dict, attempted: list, threads: list, ledger: Any,
              cfg: Config) -> None:
    """Leave nothing for the next round, whatever happened in this one."""
    try:
        serve.shutdown()
        _came_true(lambda: find_controller() is None, cfg.timeout_s)
    except Exception:
        pass
    for t in threads:
        t.join(cfg.timeout_s)
    try:
        made, _ = ray.get(ledger.drain.remote(), timeout=30)
        attempted += made
    except Exception:
        pass
    for actor in attempted:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:
            pass
    for key in _record_keys():
        _kv_del(key)
    for point in CRASH_POINTS:
        _kv_del(_marker(point))


def run(rounds: int, seed: int, cfg: Optional[Config] = None, log: Callable[[str], None] = print,
        round_seeds: Optional[list[int]] = None, first_round: int = 1,
        max_seconds: Optional[float] = None) -> Totals:
    """Run ``rounds`` rounds on the Ray cluster this process is connected to. Round ``n``
    (from ``first_round``) uses the ``n``-th draw of ``Random(seed)`` as its seed, so a long
    run split into chunks (``first_round=1, 26, 51, ...``) replays the same schedules;
    ``round_seeds`` replaces the draws. With ``max_seconds``, no round starts after that
    many seconds (the summary then says how many ran)."""
    cfg = cfg or Config()
    master = random.Random(seed)
    seeds = [master.getrandbits(32) for _ in range(first_round - 1 + rounds)][first_round - 1:]
    seeds = round_seeds or seeds
    totals = Totals()
    ledger = Ledger.remote()
    bystanders: list = []
    started = time.monotonic()
    try:
        for s in seeds:
            if max_seconds is not None and time.monotonic() - started > max_seconds:
                log(f"stopping: {max_seconds:.0f}s budget used after {totals.rounds} rounds")
                break
            r = run_round(s, cfg, ledger, bystanders, log)
            totals.add(r)
            log(r.line(first_round - 1 + totals.rounds))
    finally:
        for actor in [ledger] + bystanders:
            ray.kill(actor, no_restart=True)
    totals.seconds = time.monotonic() - started
    log(totals.summary(seed))
    for n, s, failures in totals.failed_rounds:
        log(f"FAILED round {first_round - 1 + n}: seed {s}: {failures}")
    return totals


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seed", type=int, default=20261127)
    p.add_argument("--first-round", type=int, default=1,
                   help="start at this round of the seed's sequence (to run a long run in chunks)")
    p.add_argument("--round-seed", type=int, action="append", default=None,
                   help="replay the round(s) with this seed (as printed in a round line)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="start no round after this many seconds (share a machine politely)")
    p.add_argument("--address", default=None, help="a running cluster (default: start a local one)")
    args = p.parse_args(argv)
    if args.address:
        ray.init(address=args.address, namespace=NAMESPACE, log_to_driver=False)
    else:
        # address="local": a new cluster even where RAY_ADDRESS names another one.
        ray.init(address="local", num_cpus=2, include_dashboard=False, namespace=NAMESPACE, log_to_driver=False)
    try:
        totals = run(len(args.round_seed) if args.round_seed else args.rounds, args.seed,
                     log=lambda m: print(m, flush=True), round_seeds=args.round_seed,
                     first_round=args.first_round, max_seconds=args.max_seconds)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0 if totals.ok else 1


if __name__ == "__main__":
    sys.exit(main())
