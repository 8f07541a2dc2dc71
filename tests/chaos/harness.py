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

serve_cleanup 0.3.0's features run through the same steps: **placement groups** (pending:
their one bundle asks for a resource no node has) are registered by the drivers and the
replicas with the same owner draws as actors, added to by the adder, and now and then a
removed one must be refused; a placement group counts as an actor throughout, "dead" being
REMOVED. A **job driver** (``job_driver.py``, a Ray driver of its own started with the
round) registers 1 to 3 detached helpers or placement groups with ``scope="job"`` (its own
job), half of them also with an app or deployment owner, and exits at a drawn moment of the
overlap (often mid-call) or, in half the rounds, once its calls are done; its job's end is an owner deleted (its id joins the deleted apps
once GCS says the job ended). About a fifth of the actors are registered with ``grace_s``
1 to 3 (``Lingering``: it reports its pid; its ``__ray_shutdown__`` writes a marker, or
hangs in about a third of them); such an actor is dead only once its process is gone (Ray
marks it DEAD when its exit starts), and the shutdown must end within its bound (the
largest grace, plus ``shutdown_slack_s``, plus ``restart_allowance_s`` per controller
restart during it; ``slow_shutdowns`` otherwise). ``mid_graceful_exit`` is one of the crash
points drawn from.

Then, over owner sets (``owner_checks``): an actor died while one of its owners whose call
returned was still deployed, or a Serve-wide one died before shutdown ("wrongly
killed"); an actor all of whose owners were deleted is alive after the settle window
("orphans alive") or still has keys ("stale records"); a live actor misses the key of a
deployed owner ("owners lost"); after shutdown an actor whose registration *returned* is
alive ("leaked"; also counted as "pgs left" for a placement group). Also: every bystander
(two actors, a pending placement group) is alive (else "wrongly killed"), no record is
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
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
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
from ray.util.placement_group import PlacementGroup, placement_group

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
# The harness's placement groups ask for a resource no node has: PENDING for ever, they
# cost nothing, and the clean-up finds every one of them by it.
PENDING_RESOURCE = "serve_cleanup_chaos_never"
PG_ID_HEX = 36  # a placement group's id in hex (18 bytes; an actor's is 16: records.Record)
HANG_S = 300.0  # a hanging __ray_shutdown__ sleeps this long: only the forced kill ends it in a round
JOB_DRIVER = Path(__file__).resolve().parent / "job_driver.py"


def new_pg(name: str = "") -> PlacementGroup:
    """A detached placement group that stays PENDING (only a removal ends it)."""
    return placement_group([{PENDING_RESOURCE: 1.0}], name=name, lifetime="detached")


def _start_time(pid: int) -> Optional[str]:
    """The start time (clock ticks since boot) of process ``pid``, None if it is gone or a
    zombie: with the pid, what tells the process apart from a later one with its pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]


@ray.remote(num_cpus=0)
class Payload:
    def ping(self) -> str:
        return "pong"


@ray.remote(num_cpus=0)
class Lingering:
    """An actor registered with ``grace_s``. It reports its process (pid, start time) to
    the ledger as it starts: Ray marks an actor DEAD as soon as its graceful exit starts,
    so whether it is gone is read at its process. Its ``__ray_shutdown__`` hook writes a
    marker file (the exit was graceful), or hangs (``hang``) until its process is killed."""

    def __init__(self, ledger: Any, marker_dir: str, hang: bool) -> None:
        me = ray.get_runtime_context().get_actor_id()
        self._marker = os.path.join(marker_dir, me)
        self._hang = hang
        ray.get(ledger.pid.remote(me, os.getpid(), _start_time(os.getpid())))

    def ping(self) -> str:
        return "pong"

    def __ray_shutdown__(self) -> None:
        if self._hang:
            time.sleep(HANG_S)
        with open(self._marker, "w") as f:
            f.write("hanging" if self._hang else "graceful")


@ray.remote(num_cpus=0)
class Ledger:
    """Where replicas report the actors they make and the registrations that returned, so
    the harness knows them even when a whole replica call fails (e.g. during shutdown)."""

    def __init__(self) -> None:
        self._made: list = []  # actor handles and placement groups
        self._calls: list = []  # (actor id, owner or None for scope "serve", returned?)
        self._ready: dict = {}  # replica's key -> handle, once one of its calls returned
        self._graceful: dict = {}  # actor id -> (grace_s, hook hangs?) of replicas' graceful actors
        self._pids: dict = {}  # actor id -> (pid, start time): every Lingering actor's process (kept)

    def made(self, actors: list, graceful: Optional[dict] = None) -> None:
        self._made.extend(actors)
        self._graceful.update(graceful or {})

    def pid(self, actor_id: str, pid: int, start: Optional[str]) -> None:
        self._pids[actor_id] = (pid, start)

    def pids(self) -> dict:
        return dict(self._pids)

    def call(self, actor_id: str, owner: Optional[tuple], ok: bool, error: str = "") -> None:
        self._calls.append((actor_id, owner, ok, error))

    def ready(self, key: str, actor: Any) -> None:
        self._ready[key] = actor

    def get_ready(self, key: str) -> Any:
        return self._ready.get(key)

    def drain(self) -> tuple[list, list, dict]:
        out = (self._made, self._calls, self._graceful)
        self._made, self._calls, self._ready, self._graceful = [], [], {}, {}
        return out


def register_owner(actor: Any, owner: Optional[tuple], timeout_s: float, own_app: str = "",
                   grace_s: float = 0) -> None:
    """One ``register`` call for ``owner`` (``None``: ``scope="serve"``). Inside a replica
    (``own_app``), an owner of the replica's own app is named by the defaults. ``actor``:
    an actor handle or a placement group; ``grace_s`` is passed when not 0."""
    kw: dict[str, Any] = {"timeout_s": timeout_s}
    if grace_s:
        kw["grace_s"] = grace_s
    if owner is None:
        serve_cleanup.register(actor, **kw)
    elif owner[1] == own_app:
        serve_cleanup.register(actor, scope=owner[0], **kw)
    elif owner[0] == "app":
        serve_cleanup.register(actor, scope="app", app=owner[1], **kw)
    else:
        serve_cleanup.register(actor, scope="deployment", app=owner[1], deployment=owner[2], **kw)


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0})
class Registrant:
    """A replica that creates and registers actors, like a router would."""

    def spawn(self, plan: list, tag: str, ledger: Any, timeout_s: float, marker_dir: str) -> int:
        """``plan[i]``: (kind: "actor" or "pg", ping actor i before registering it?, its
        owners: one register call each, of this replica's own app or another; () for one
        ``scope="serve"`` call, its grace_s (0: none), its hook hangs?). Every call is
        reported to the ledger. Returns how many actors had a call return."""
        ok = 0
        for i, (kind, ping, owners, grace, hang) in enumerate(plan):
            name = f"{tag}-{i}" if i % 2 == 0 else ""
            if kind == "pg":
                actor = new_pg(name)
                actor_id = actor.id.hex()
                ray.get(ledger.made.remote([actor]))
            else:
                opts: dict[str, Any] = {"lifetime": "detached"}
                if name:
                    opts.update(name=name, namespace=NAMESPACE)
                if grace:
                    actor = Lingering.options(**opts).remote(ledger, marker_dir, hang)
                else:
                    actor = Payload.options(**opts).remote()
                actor_id = actor._actor_id.hex()
                ray.get(ledger.made.remote([actor], {actor_id: (grace, hang)} if grace else None))
                if ping:
                    ray.get(actor.ping.remote())
            any_ok = False
            for owner in owners or (None,):
                try:
                    register_owner(actor, owner, timeout_s, own_app=CHAOS_APP, grace_s=grace)
                except Exception as e:  # any failure: not "returned", so no promise to check
                    ray.get(ledger.call.remote(actor_id, owner, False, type(e).__name__))
                    continue
                ray.get(ledger.call.remote(actor_id, owner, True))
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
    # 0.3.0: placement groups, job owners, graceful kills.
    pgs_per_driver: int = 1     # pending placement groups each driver thread registers (after its actors)
    pgs_per_replica_call: int = 1  # ... and each replica call (after its actors)
    pg_bystanders: int = 1      # pending placement groups never registered (live for the run)
    graceful_share: float = 0.2  # chance a driver's or a replica's actor is registered with grace_s
    grace_s: tuple = (1, 3)     # its grace_s: min, max (whole seconds)
    hang_share: float = 0.35    # chance a graceful actor's __ray_shutdown__ hangs
    job_items: tuple = (1, 3)   # helpers and placement groups the round's job driver registers
    job_pg_share: float = 0.5   # chance a job driver's item is a placement group
    job_app_share: float = 0.5  # chance a job driver's item also gets an app or deployment owner
    job_exit_after: tuple = (0.5, 8.0)  # the job driver exits this long after "go" (s) ...
    job_exit_when_done_share: float = 0.5  # ... or, in this share of rounds, once its calls are done
    job_linger_s: tuple = (0.0, 1.0)  # (then after this long; its timer still ends it at 60 s)
    shutdown_slack_s: float = 15.0  # the shutdown bound: largest grace_s + this ...
    restart_allowance_s: float = 10.0  # ... + this per controller restart during the shutdown


# Counters of a round; Totals adds them up. The first four are the promise; the rest of
# the failures are further checks (see FAILURES); the others describe what happened.
COUNTS = (
    "registrations", "failed_calls", "refused_dead", "kills", "injected", "restarts",
    "owned_registrations", "gc_calls", "set_aside_planted", "set_aside_seen", "shutdown_retries",
    "multi_owner", "owner_calls", "owners_added",
    "pgs", "pgs_refused", "job_owned", "job_only", "job_calls", "job_cut", "graceful", "graceful_hanging",
    "graceful_ended", "hooks_ran",
)
FAILURES = (
    "leaked", "wrongly_killed", "records_left", "crash_loops",
    "dead_accepted", "orphans_alive", "stale_records", "owners_lost", "set_aside_touched",
    "set_aside_unreported", "pgs_left", "slow_shutdowns", "errors",
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
    failed_by: dict = field(default_factory=dict)  # failed calls by exception class name
    refused_dead: int = 0
    kills: int = 0      # ray.kill calls that went through + injected crashes that fired
    injected: int = 0   # crash-point markers found after the round
    fired: tuple = ()   # ... their points
    restarts: int = 0
    owned_registrations: int = 0
    gc_calls: int = 0
    set_aside_planted: int = 0
    set_aside_seen: int = -1  # the controller's status just before shutdown (-1: no answer)
    shutdown_retries: int = 0  # serve.shutdown() calls that did not reach the controller
    multi_owner: int = 0  # registered actors with 2 or more confirmed owners
    owner_calls: int = 0  # register calls naming an app or deployment owner that returned
    owners_added: int = 0  # owners a driver added to a replica's actor (calls that returned)
    pgs: int = 0           # registered placement groups (a call returned)
    pgs_refused: int = 0   # removed placement groups refused (counted in refused_dead too)
    job_owned: int = 0     # registered actors and pgs with a job owner whose call returned
    job_only: int = 0      # ... whose only confirmed owner is the job (die with it)
    job_calls: int = 0     # the job driver's register calls that returned
    job_cut: int = 0       # ... cut off by its exit (started, never answered)
    job_exit: str = "-"    # how the job driver ended: "timer" (os._exit), "done" (clean), "-"
    graceful: int = 0      # registered actors with grace_s
    graceful_hanging: int = 0  # ... whose __ray_shutdown__ hangs
    graceful_ended: int = 0    # ... whose process was gone after shutdown
    hooks_ran: int = 0     # ... whose hook ran to its end (the non-hanging ones' graceful exits)
    shutdown_s: float = 0.0  # serve.shutdown() to no controller
    job_kill_s: float = -1.0  # longest job end -> death of a job-only actor before shutdown (-1: none)
    shutdown_bound_s: float = 0.0
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
    pgs_left: list = field(default_factory=list)  # registered placement groups not REMOVED at the end
    slow_shutdowns: int = 0  # shutdown_s above shutdown_bound_s
    errors: list = field(default_factory=list)
    phases: dict = field(default_factory=dict)  # seconds: start, register, shutdown, check
    threads: dict = field(default_factory=dict)  # seconds from the start of step 4 to each thread's end

    def failures(self) -> dict[str, int]:
        return {k: _n(getattr(self, k)) for k in FAILURES if _n(getattr(self, k))}

    def line(self, n: int) -> str:
        return (
            f"round {n} (seed {self.seed}{', early shutdown' if self.early_shutdown else ''}"
            f"{', kill in shutdown' if self.kill_in_shutdown else ''}; "
            f"points {','.join(self.points) or '-'}; fired {','.join(self.fired) or '-'}): "
            f"{self.registrations} registered ({self.owned_registrations} app-scoped, "
            f"{self.multi_owner} multi-owner, {self.owners_added} owners added, owned2 {self.owned2}; "
            f"{self.pgs} pgs, {self.job_owned} job-owned ({self.job_only} job only, job exit {self.job_exit}"
            f"{f', killed {self.job_kill_s:.1f}s after' if self.job_kill_s >= 0 else ''}), "
            f"{self.graceful} graceful ({self.graceful_hanging} hanging, {self.hooks_ran} hooks ran)), "
            f"{self.failed_calls} failed, {self.refused_dead} dead refused, {self.kills} kills "
            f"({self.injected} injected), {self.restarts} restarts, {self.gc_calls} gc, "
            f"set aside {self.set_aside_seen}/{self.set_aside_planted}"
            f"{f', {self.shutdown_retries} shutdown retries' if self.shutdown_retries else ''}"
            f", shutdown {self.shutdown_s:.1f}/{self.shutdown_bound_s:.0f}s; "
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
    failed_by: dict = field(default_factory=dict)
    kills_in_shutdown: int = 0  # rounds that drew a kill during shutdown
    job_exits_timer: int = 0  # rounds whose job driver was ended by its timer (os._exit)
    fired: dict = field(default_factory=dict)  # crash point -> rounds in which it fired
    max_shutdown_s: float = 0.0
    max_job_kill_s: float = -1.0
    leaked: list = field(default_factory=list)
    wrongly_killed: list = field(default_factory=list)

    def add(self, r: RoundResult) -> None:
        self.rounds += 1
        for k in COUNTS + FAILURES:
            self.counts[k] += _n(getattr(r, k)) if k != "set_aside_seen" else max(0, r.set_aside_seen)
        self.early_shutdowns += r.early_shutdown
        self.kills_in_shutdown += r.kill_in_shutdown
        self.job_exits_timer += r.job_exit == "timer"
        for k, v in r.failed_by.items():
            self.failed_by[k] = self.failed_by.get(k, 0) + v
        for p in r.fired:
            self.fired[p] = self.fired.get(p, 0) + 1
        self.max_shutdown_s = max(self.max_shutdown_s, r.shutdown_s)
        self.max_job_kill_s = max(self.max_job_kill_s, r.job_kill_s)
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
            f"failed_rounds={len(self.failed_rounds)}\n"
            f"chaos 0.3.0: pgs={c['pgs']} pgs_refused={c['pgs_refused']} pgs_left={c['pgs_left']} "
            f"job_owned={c['job_owned']} job_only={c['job_only']} job_calls={c['job_calls']} "
            f"job_cut={c['job_cut']} job_exits_timer={self.job_exits_timer} "
            f"graceful={c['graceful']} graceful_hanging={c['graceful_hanging']} "
            f"graceful_ended={c['graceful_ended']} hooks_ran={c['hooks_ran']} "
            f"slow_shutdowns={c['slow_shutdowns']} max_shutdown_s={self.max_shutdown_s:.1f} "
            f"mid_graceful_exit_fired={self.fired.get('mid_graceful_exit', 0)} "
            f"max_job_kill_s={self.max_job_kill_s:.1f}\n"
            f"chaos failed calls by error: "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.failed_by.items())) or "-")
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
    """An actor's state in the GCS actor table, or for a placement group ``"DEAD"`` once it
    is REMOVED (or unknown) and ``"ALIVE"`` before (PENDING, for the harness's)."""
    if _is_pg(actor_id):
        info = _ray.placement_group_info(actor_id)
        return "DEAD" if info is None or info.state == "REMOVED" else "ALIVE"
    info = _ray.actor_info(actor_id)
    return "DEAD" if info is None else info.state


def _is_pg(actor_id: str) -> bool:
    return len(actor_id) == PG_ID_HEX


class _Watch:
    """What the harness knows of a round's graceful actors: their processes (pid, start
    time; reported by each ``Lingering`` as it starts) and whether their hook hangs. Ray
    marks an actor DEAD when its graceful exit *starts*; its process ends when the hook
    does, or when the controller kills it at the deadline. So a graceful actor is
    ``"EXITING"`` while the table says DEAD and its process runs, ``"DEAD"`` only once its
    process is gone (``owner_checks``: killed, but not yet dead)."""

    def __init__(self, ledger: Any = None) -> None:
        self.ledger = ledger  # where the processes are reported
        self.pids: dict[str, tuple] = {}
        self.graceful: dict[str, tuple] = {}  # actor id -> (grace_s, hook hangs?)

    def running(self, actor_id: str) -> bool:
        p = self.pids.get(actor_id)
        return p is not None and p[1] is not None and _start_time(p[0]) == p[1]

    def state(self, actor_id: str) -> str:
        table = _state(actor_id)
        if actor_id in self.graceful and actor_id not in self.pids and self.ledger is not None:
            self.pids.update(ray.get(self.ledger.pids.remote()))
        if actor_id not in self.pids:  # not graceful, or it never started: the table says
            return table
        if self.running(actor_id):
            return "EXITING" if table == "DEAD" else table
        return "DEAD"


def _job_ended(job_id: str) -> bool:
    """Whether GCS's job table says Ray job ``job_id`` (hex) has ended."""
    return _job_end_ms(job_id) is not None


def _job_end_ms(job_id: str) -> Optional[int]:
    """When GCS's job table says Ray job ``job_id`` (hex) ended (ms since the epoch), None
    while it runs."""
    from ray.core.generated import gcs_pb2

    table = _ray.state_accessor().get_job_table(
        skip_submission_job_info_field=True, skip_is_running_tasks_field=True)
    for e in map(gcs_pb2.JobTableData.FromString, table):
        if e.job_id.hex() == job_id and e.is_dead:
            return e.end_time or None
    return None


def _job_kill_s(job_id: Optional[str], actor_ids: list[str], before_ms: float) -> float:
    """The longest time (s) from the job's end to the death of one of ``actor_ids`` (GCS's
    end times), among those that died before ``before_ms`` (ms since the epoch); -1 if
    none did (or the tables did not say)."""
    try:
        job_end = _job_end_ms(job_id) if job_id else None
        if job_end is None:
            return -1.0
        ends = [e.end_time for e in map(_ray.actor_entry, actor_ids) if e is not None and e.end_time]
        ends = [t for t in ends if t < before_ms]
        return max(((t - job_end) / 1000 for t in ends), default=-1.0)
    except Exception:
        return -1.0


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
    """An actor's id, or a placement group's (hex)."""
    return actor.id.hex() if isinstance(actor, PlacementGroup) else actor._actor_id.hex()


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
    # 0.3.0, drawn after everything above:
    driver_grace: list  # per driver, per actor: (grace_s, hook hangs?); (0, False): none
    driver_pgs: list  # per driver: its placement groups' (named, owned, more owners, serve call)
    replica_grace: list  # per replica call, per actor: (grace_s, hangs?)
    replica_pgs: list  # per replica call: its placement groups' owners (as replica_owners)
    added_pgs: list  # (replica call, index in its plan, owner): added to a replica's pg
    dead_refusal_pg: list  # per driver: its dead refusal is a removed placement group?
    job_items: list  # the job driver's: (kind, named, ping, second owner or None)
    job_exit_after: float
    job_linger: Optional[float]  # exit this long after its calls are done (None: at job_exit_after)

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
        fields.update(cls._draw_0_3(rng, cfg))
        return cls(**fields)

    @staticmethod
    def _draw_0_3(rng: random.Random, cfg: Config) -> dict:
        """Placement groups (owners drawn as for actors), graceful actors, the job driver."""
        def grace() -> tuple:
            if rng.random() < cfg.graceful_share:
                return rng.randint(*cfg.grace_s), rng.random() < cfg.hang_share
            return 0, False

        driver_grace = [[grace() for _ in range(cfg.per_driver)] for _ in range(cfg.drivers)]
        driver_pgs = []
        for _ in range(cfg.drivers):
            row = []
            for _ in range(cfg.pgs_per_driver):
                named, owned, multi = rng.random() < 0.5, rng.random() < cfg.owned_share, rng.random() < cfg.multi_share
                more = _several(rng, A_OWNED if owned else None, OWNERS) if multi else ()
                row.append((named, owned, more, multi and rng.random() < cfg.serve_call_share))
            driver_pgs.append(row)
        replica_grace = [[grace() for _ in range(cfg.per_replica_call)] for _ in range(cfg.replica_calls)]
        replica_pgs = [[_replica_owners(rng, cfg) for _ in range(cfg.pgs_per_replica_call)]
                       for _ in range(cfg.replica_calls)]
        added_pgs = [(j, cfg.per_replica_call + i, rng.choice(ADDED_OWNERS))
                     for j in range(cfg.replica_calls) for i in range(cfg.pgs_per_replica_call)
                     if rng.random() < cfg.added_share]
        dead_refusal_pg = [rng.random() < 0.5 for _ in range(cfg.drivers)]
        job_items = [("pg" if rng.random() < cfg.job_pg_share else "actor", rng.random() < 0.5,
                      rng.random() >= cfg.no_ping_share,
                      rng.choice(OWNERS) if rng.random() < cfg.job_app_share else None)
                     for _ in range(rng.randint(*cfg.job_items))]
        return dict(driver_grace=driver_grace, driver_pgs=driver_pgs, replica_grace=replica_grace,
                    replica_pgs=replica_pgs, added_pgs=added_pgs, dead_refusal_pg=dead_refusal_pg,
                    job_items=job_items, job_exit_after=rng.uniform(*cfg.job_exit_after),
                    job_linger=(rng.uniform(*cfg.job_linger_s) if rng.random() < cfg.job_exit_when_done_share
                                else None))

    @staticmethod
    def _draw_owners(rng: random.Random, cfg: Config, drivers: list) -> dict:
        """A driver actor's first call is as before (``scope="serve"``, or app ``owned``);
        a multi-owner one then adds owners until it has 2 or 3. A replica's multi-owner actor
        is registered by the replica with 2 or 3 owners, its own app or deployment among
        them half the time; a driver may add one more owner to any replica actor."""
        def several(first: Optional[tuple], pool: tuple) -> tuple:
            return _several(rng, first, pool)

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
        replica_owners = [[_replica_owners(rng, cfg) for _ in range(cfg.per_replica_call)]
                          for _ in range(cfg.replica_calls)]
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


def _several(rng: random.Random, first: Optional[tuple], pool: tuple) -> tuple:
    """The owners that make 2 or 3 with ``first`` (None: no first owner)."""
    n = rng.choice((2, 3)) - (first is not None)
    return tuple(rng.sample([o for o in pool if o != first], n))


def _replica_owners(rng: random.Random, cfg: Config) -> tuple:
    """A replica's registration: () for one ``scope="serve"`` call, or 2 or 3 owners, its
    own app or deployment among them half the time."""
    if rng.random() >= cfg.multi_share:
        return ()
    own = rng.choice((A_CHAOS, D_CHAOS)) if rng.random() < 0.5 else None
    return ((own,) if own else ()) + _several(rng, own, OWNERS[2:])


def _sleep_until(started: float, t: float) -> None:
    """Chaos timing, not synchronisation: wait for a moment the rng drew."""
    time.sleep(max(0.0, t - (time.monotonic() - started)))


@dataclass
class _Extra:
    """A round's 0.3.0 parts that its clean-up must see: the graceful actors' processes,
    the job driver (its process, what it made) and where hooks leave their markers."""

    marker_dir: str
    watch: _Watch = field(default_factory=_Watch)
    job_proc: Optional[subprocess.Popen] = None
    job_stderr: Optional[str] = None
    job_id: Optional[str] = None
    job_made: list = field(default_factory=list)  # (id, kind) the job driver reported


def run_round(seed: int, cfg: Config, ledger: Any, bystanders: list,
              log: Callable[[str], None], marker_dir: Optional[str] = None) -> RoundResult:
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
    extra = _Extra(marker_dir=marker_dir or tempfile.mkdtemp(prefix="chaos-hooks-"))
    try:
        _round(rng, plan, cfg, res, tag, ledger, junk, attempted, bystanders, threads, log, extra)
    except Exception:
        res.errors.append(traceback.format_exc())
        log(f"round error (seed {seed}):\n{res.errors[-1]}")
    finally:
        _clean_up(res, junk, attempted, threads, ledger, cfg, extra, keep=tuple(_id(b) for b in bystanders))
    return res


def _round(rng, plan: _Plan, cfg: Config, res: RoundResult, tag: str, ledger: Any,
           junk: dict, attempted: list, bystanders: list, threads: list,
           log: Callable[[str], None] = print, extra: Optional[_Extra] = None) -> None:
    extra = extra or _Extra(marker_dir=tempfile.mkdtemp(prefix="chaos-hooks-"))
    watch = extra.watch
    watch.ledger = ledger
    serve.shutdown()
    if not _came_true(lambda: find_controller() is None, cfg.timeout_s):
        raise AssertionError("a controller from before this round is still running")
    for point in CRASH_POINTS:
        _kv_del(_marker(point))

    # Bystanders live for the whole run (fewer process starts); one that died is counted
    # in its round and replaced.
    # After the actors, the pending placement groups (never registered either).
    for i in range(cfg.bystanders + cfg.pg_bystanders):
        if i < len(bystanders) and _state(_id(bystanders[i])) == "ALIVE":
            continue
        if i >= cfg.bystanders:
            b = new_pg(f"by-{tag}-{i}" if i % 2 == 0 else "")
        else:
            b = (Payload.options(name=f"by-{tag}-{i}", namespace=NAMESPACE, lifetime="detached")
                 if i % 2 == 0 else Payload.options(lifetime="detached")).remote()
            ray.get(b.ping.remote())
        bystanders[i:i + 1] = [b]
    actor_bystanders = bystanders[:cfg.bystanders]
    t_start = time.monotonic()

    # The job driver starts now (a Ray driver takes seconds to connect: that overlaps
    # Serve's start); it waits for "go" before it makes anything.
    _start_job_driver(plan, cfg, extra, tag)

    # Junk the controller must set aside at every start of this round.
    before = _junk(rng, plan.junk_before, actor_bystanders)
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
    during = _junk(rng, plan.junk_during, actor_bystanders)
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

    def failed(error: str) -> None:
        with lock:
            res.failed_calls += 1
            res.failed_by[error] = res.failed_by.get(error, 0) + 1

    def register(actor: Any, owner: Optional[tuple], grace_s: float = 0) -> bool:
        try:
            register_owner(actor, owner, call_timeout, grace_s=grace_s)
        except Exception as e:
            failed(type(e).__name__)
            note(_id(actor), owner, False)
            return False
        note(_id(actor), owner, True)
        return True

    def refuse_dead(i: int) -> None:
        """An actor, or a placement group, that is gone before it is registered."""
        pg = plan.dead_refusal_pg[i]
        actor = new_pg() if pg else Payload.options(lifetime="detached").remote()
        with lock:
            attempted.append(actor)
        try:
            if pg:
                ray.util.remove_placement_group(actor)
            else:
                ray.get(actor.ping.remote())
                ray.kill(actor, no_restart=True)
            _came_true(lambda: _state(_id(actor)) == "DEAD", 30)
            serve_cleanup.register(actor, timeout_s=call_timeout)
            with lock:
                res.dead_accepted.append(_id(actor))  # its call returned: a bug
        except serve_cleanup.DeadActorError:
            count("refused_dead")
            if pg:
                count("pgs_refused")
        except Exception as e:
            failed(f"dead refusal: {type(e).__name__}")

    def driver(i: int) -> None:
        if plan.dead_refusals[i]:
            refuse_dead(i)
        killed_own = not plan.self_kill[i]
        # Its actors, then its placement groups: (kind, name, ping, owned, more owners,
        # scope="serve" call after them, grace_s, hook hangs).
        items = [("actor", f"drv-{tag}-{i}-{k}" if named else "", ping, owned, plan.driver_owners[i][k],
                  plan.driver_serve_call[i][k], *plan.driver_grace[i][k])
                 for k, (named, ping, owned) in enumerate(plan.drivers[i])]
        items += [("pg", f"drv-{tag}-{i}-pg{k}" if named else "", False, owned, more, serve_call, 0, False)
                  for k, (named, owned, more, serve_call) in enumerate(plan.driver_pgs[i])]
        for kind, name, ping, owned, more, serve_call, grace, hang in items:
            if shutdown_done.is_set():
                return  # nothing would accept it; the call would only wait for its timeout
            if kind == "pg":
                actor = new_pg(name)
            else:
                opts: dict[str, Any] = {"lifetime": "detached"}
                if name:
                    opts.update(name=name, namespace=NAMESPACE)
                if grace:
                    actor = Lingering.options(**opts).remote(ledger, extra.marker_dir, hang)
                    with lock:
                        watch.graceful[_id(actor)] = (grace, hang)
                else:
                    actor = Payload.options(**opts).remote()
            with lock:
                attempted.append(actor)
            try:
                if ping:
                    ray.get(actor.ping.remote())
            except Exception as e:
                failed(f"ping: {type(e).__name__}")
                continue
            # The first call as before; then the owners that make it 2 or 3 (each call on
            # its own: one that raised does not stop the next), then maybe scope="serve"
            # (which must leave the owners as they are). A graceful actor's every call
            # names its grace.
            first_ok = register(actor, A_OWNED if owned else None, grace)
            for owner in more + ((None,) if serve_call else ()):
                if shutdown_done.is_set():
                    break
                register(actor, owner, grace)
            if (first_ok and not owned and not more and not grace and not killed_own
                    and not shutdown_started.is_set()):
                killed_own = True  # it dies on its own: the sweep must drop its record
                if kind == "pg":
                    ray.util.remove_placement_group(actor)
                else:
                    ray.kill(actor, no_restart=True)
                with lock:
                    self_killed.append(_id(actor))

    def replicas() -> None:
        plans = [[("actor", ping, owners, *g) for ping, owners, g in zip(pings, owners_, graces, strict=True)]
                 + [("pg", False, owners, 0, False) for owners in pg_owners]
                 for pings, owners_, graces, pg_owners in zip(plan.replica_plans, plan.replica_owners,
                                                               plan.replica_grace, plan.replica_pgs, strict=True)]
        refs = [handle.spawn.remote(p, f"rep-{tag}-{j}", ledger, call_timeout, extra.marker_dir)
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
        for j, i, owner in sorted(plan.added + plan.added_pgs):
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

    def jobber() -> None:
        """The job driver: "go", then what it reports, line by line, until it exits (at its
        drawn moment). Its job is then an owner being deleted, and deleted once GCS's job
        table says the job has ended."""
        proc = extra.job_proc
        if proc is None:
            return
        watchdog = threading.Timer(cfg.timeout_s, proc.kill)  # our own child, by its Popen
        watchdog.start()
        pending: set = set()  # calls started and not answered (yet)
        try:
            try:
                proc.stdin.write("go\n")
                proc.stdin.flush()
            except OSError:
                pass  # it is gone already: its stdout and return code say why
            for line in proc.stdout:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if "job" in msg:
                    extra.job_id = msg["job"]
                elif "made" in msg:
                    with lock:
                        extra.job_made.append((msg["made"], msg["kind"]))
                elif "try" in msg:
                    pending.add((msg["try"], tuple(msg["owner"])))
                elif "ok" in msg or "fail" in msg:
                    ok = "ok" in msg
                    key = (msg["ok" if ok else "fail"], tuple(msg["owner"]))
                    pending.discard(key)
                    note(*key, ok)
                    if ok:
                        count("job_calls")
                    else:
                        failed("job driver: " + msg.get("error", "").split("(")[0])
                elif "error" in msg:
                    failed("job driver ping: " + msg.get("what", "").split("(")[0])
                elif "exit" in msg:
                    res.job_exit = msg["exit"]
            rc = proc.wait(cfg.timeout_s)
        finally:
            watchdog.cancel()
        for key in pending:  # cut off by the exit: stored or not, it promises nothing
            note(*key, False)
            count("job_cut")
        if rc != 0 or res.job_exit == "-":
            tail = Path(extra.job_stderr).read_text(errors="replace")[-2000:] if extra.job_stderr else ""
            res.errors.append(f"the job driver ended with status {rc} (exit {res.job_exit}):\n{tail}")
        if extra.job_id is None:
            return
        with lock:
            deleting.add(extra.job_id)
        if _came_true(lambda: _job_ended(extra.job_id), 30, 0.1):
            with lock:
                deleted.add(extra.job_id)
        else:
            res.errors.append(f"the job driver's job {extra.job_id} had not ended in GCS 30 s after it exited")

    def timed(name: str, f: Callable[..., None], *args: Any) -> threading.Thread:
        def body() -> None:
            try:
                f(*args)
            finally:
                res.threads[name] = time.monotonic() - started
        return threading.Thread(target=body, name=name)

    def drain_ledger() -> None:
        made, replica_calls, graceful = ray.get(ledger.drain.remote())
        attempted.extend(made)
        with lock:
            watch.graceful.update(graceful)
        for actor_id, owner, ok, error in replica_calls:
            note(actor_id, owner, ok)
            if not ok:
                failed(f"replica: {error}")

    registrants = [timed(f"driver{i}", driver, i) for i in range(cfg.drivers)]
    registrants.append(timed("replicas", replicas))
    others = [timed(f.__name__, f) for f in (adder, killer, collector, deleter, planter, jobber)]
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
        _settle(cfg, res, calls, self_killed, set(deleting), set(deleted), set(junk), watch.state)
        if plan.owned2 == "settle":
            # The second owner app goes now, alone: an actor it shared with app "owned" (gone)
            # dies now, not before; one it shares with app "chaos" lives on.
            if delete(OWNED2_APP) and plan.kill_after_delete2:
                try:
                    ray.kill(_controller(), no_restart=False)  # before or during the reap
                    landed[0] += 1
                except Exception:
                    pass
            _settle(cfg, res, calls, self_killed, set(deleting), set(deleted), set(junk), watch.state)
        res.phases["settle"] = time.monotonic() - t_settle
    res.set_aside_seen = _set_aside_seen()
    if 0 <= res.set_aside_seen < res.set_aside_planted:
        res.set_aside_unreported = res.set_aside_planted - res.set_aside_seen

    shutdown_started.set()
    shutdown_wall_ms = time.time() * 1000
    t_shutdown = time.monotonic()
    res.phases["register"] = t_shutdown - started
    info = _ray.actor_entry(ctrl_id)
    restarts_before = info.num_restarts if info else 0
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
    res.shutdown_s = time.monotonic() - t_shutdown
    shutdown_done.set()
    for t in threads:
        t.join(cfg.timeout_s)
        if t.is_alive():
            raise AssertionError(f"thread {t.name} still running {cfg.timeout_s}s after shutdown")

    t_check = time.monotonic()
    res.phases["shutdown"] = t_check - t_shutdown
    drain_ledger()

    res.fired = tuple(p for p in CRASH_POINTS if _kv_get(_marker(p)) is not None)
    res.injected = len(res.fired)
    res.kills = landed[0] + in_shutdown + res.injected
    registered = {a: c for a, c in calls.items() if c.registered}
    res.registrations = len(registered)
    res.owned_registrations = sum(bool(c.confirmed) for c in registered.values())
    res.multi_owner = sum(len(c.confirmed) >= 2 for c in registered.values())
    res.pgs = sum(_is_pg(a) for a in registered)
    res.job_owned = sum(any(o[0] == "job" for o in c.confirmed) for c in registered.values())
    res.job_only = sum(bool(c.confirmed) and all(o[0] == "job" for o in c.confirmed) and not c.serve_returned
                       for c in registered.values())
    res.job_kill_s = _job_kill_s(
        extra.job_id, [a for a, c in registered.items() if not _is_pg(a) and c.confirmed
                       and all(o[0] == "job" for o in c.confirmed) and not c.serve_returned], shutdown_wall_ms)
    graceful = {a: watch.graceful[a] for a in registered if a in watch.graceful}
    res.graceful = len(graceful)
    res.graceful_hanging = sum(hang for _, hang in graceful.values())
    # Serve is shut down: every registered actor must be dead, a graceful one's process
    # gone, every registered placement group REMOVED (each may take up to 30 s).
    _came_true(lambda: all(watch.state(a) == "DEAD" for a in registered), 30, 0.1)
    keys = _record_keys()
    states = {a: watch.state(a) for a in registered}
    res.leaked, _ = owner_checks.after_shutdown(  # keys left: counted in records_left
        registered, states, owner_checks.key_owners(keys - set(junk), registered))
    res.pgs_left = [a for a in registered if _is_pg(a) and _state(a) != "DEAD"]
    res.graceful_ended = sum(states[a] == "DEAD" for a in graceful)
    res.hooks_ran = sum(not hang and os.path.exists(os.path.join(extra.marker_dir, a))
                        for a, (_, hang) in graceful.items())
    res.wrongly_killed += [_id(b) for b in bystanders if _state(_id(b)) != "ALIVE"]
    res.records_left = len(keys - set(junk))
    res.set_aside_touched = sum(_kv_get(k) != v for k, v in junk.items())
    info = _ray.actor_entry(ctrl_id)
    res.restarts = info.num_restarts if info else 0
    res.crash_loops = int(res.restarts > res.kills)
    # The shutdown's bound: the longest grace any actor of the round may have been
    # registered with, plus slack, plus an allowance for each controller restart in it.
    res.shutdown_bound_s = (max((g for g, _ in watch.graceful.values()), default=0) + cfg.shutdown_slack_s
                            + cfg.restart_allowance_s * max(0, res.restarts - restarts_before))
    res.slow_shutdowns = int(res.shutdown_s > res.shutdown_bound_s)
    res.phases["check"] = time.monotonic() - t_check
    if res.failures():
        for k in sorted(keys - set(junk)):
            log(f"  record left: {k!r}")
        for a in sorted(set(res.leaked + res.wrongly_killed + res.orphans_alive + res.owners_lost)):
            c = calls.get(a)
            if c is not None:
                what = ("placement group" if _is_pg(a) else
                        f"graceful actor {watch.graceful[a]} (process {watch.pids.get(a)}, state {watch.state(a)})"
                        if a in watch.graceful else "actor")
                log(f"  {a} ({what}): owners returned {sorted(c.confirmed)}, raised {sorted(c.unconfirmed)}, "
                    f"serve call returned {c.serve_returned}; owners gone {sorted(deleted)}")
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
            deleting: set[str], deleted: set[str], junk: set[bytes],
            state: Callable[[str], str] = _state) -> None:
    """Before shutdown (registrants done): wait (up to ``settle_s``) until every actor whose
    owners are all gone is dead and has no key, and so has every actor a driver killed
    itself; then check the owner-set rules (``owner_checks.before_shutdown``). Called once
    or twice a round; an actor is counted once per failure. Owners are apps and the job
    driver's job (``deleting``/``deleted`` hold its id once it exited/ended); ``state``
    says ``"EXITING"`` for a graceful actor whose process outlives its DEAD entry."""
    snapshot = {a: dataclasses.replace(c, confirmed=set(c.confirmed), unconfirmed=set(c.unconfirmed))
                for a, c in calls.items()}
    must = [a for a, c in snapshot.items() if a not in self_killed and owner_checks.must_die(c, deleted)]
    gone = must + list(self_killed)

    def keys_of(ids: list[str]) -> dict[str, set]:
        return owner_checks.key_owners(_record_keys() - junk, ids)

    _came_true(lambda: all(state(a) == "DEAD" for a in must)
               and not any(keys_of(gone).values()), cfg.settle_s, 0.1)
    # Keys first, then states: a reap kills, waits for DEAD, then deletes the keys, so a
    # live actor read after its keys were found missing really lost them.
    keys = keys_of(list(snapshot) + list(self_killed))
    states = {a: state(a) for a in snapshot}
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


def _start_job_driver(plan: _Plan, cfg: Config, extra: _Extra, tag: str) -> None:
    """Start the round's job driver (``job_driver.py``): a Ray driver of its own, so a Ray
    job of its own, on this cluster, importing the serve_cleanup this process imports."""
    call_timeout = cfg.early_call_timeout_s if plan.early_shutdown else cfg.call_timeout_s
    spec = {
        "address": ray.get_runtime_context().gcs_address, "namespace": NAMESPACE, "tag": tag,
        "timeout_s": call_timeout, "resource": PENDING_RESOURCE,
        "exit_after": plan.job_exit_after if plan.job_linger is None else 60.0, "linger": plan.job_linger,
        "items": [{"kind": kind, "named": named, "ping": ping, "owner": owner}
                  for kind, named, ping, owner in plan.job_items],
    }
    src = str(Path(serve_cleanup.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    fd, extra.job_stderr = tempfile.mkstemp(prefix=f"job-driver-{tag}-", suffix=".err", dir=extra.marker_dir)
    with os.fdopen(fd, "w") as err:
        extra.job_proc = subprocess.Popen(
            [sys.executable, str(JOB_DRIVER), json.dumps(spec)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=err, text=True, env=env)


def _pending_pgs() -> dict[str, str]:
    """Id -> state of every placement group GCS keeps that asks for ``PENDING_RESOURCE``
    (the harness's own, of every round so far)."""
    from ray.core.generated import gcs_pb2

    out = {}
    for data in _ray.state_accessor().get_placement_group_table():
        e = gcs_pb2.PlacementGroupTableData.FromString(data)
        if any(PENDING_RESOURCE in b.unit_resources for b in e.bundles):
            out[e.placement_group_id.hex()] = gcs_pb2.PlacementGroupTableData.PlacementGroupState.Name(e.state)
    return out


def _remove_pg(pg_id: str) -> None:
    try:
        if _state(pg_id) != "DEAD":
            _ray.remove_placement_group(pg_id)
    except Exception:
        pass


def _clean_up(res: RoundResult, junk: dict, attempted: list, threads: list, ledger: Any,
              cfg: Config, extra: Optional[_Extra] = None, keep: tuple = ()) -> None:
    """Leave nothing for the next round, whatever happened in this one. ``keep``: the
    bystanders' ids (their placement groups are left alone)."""
    extra = extra or _Extra(marker_dir="")
    try:
        serve.shutdown()
        _came_true(lambda: find_controller() is None, cfg.timeout_s)
    except Exception:
        pass
    proc = extra.job_proc
    if proc is not None and proc.poll() is None:
        proc.kill()  # our own child (its Popen): a job driver past its round
    for t in threads:
        t.join(cfg.timeout_s)
    if proc is not None:
        try:
            proc.wait(cfg.timeout_s)
        except Exception:
            pass
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()
            except Exception:
                pass
    try:
        made, _, _ = ray.get(ledger.drain.remote(), timeout=30)
        attempted += made
    except Exception:
        pass
    for actor in attempted:
        if isinstance(actor, PlacementGroup):
            _remove_pg(actor.id.hex())
            continue
        try:
            ray.kill(actor, no_restart=True)
        except Exception:
            pass
    gcs = ray.get_runtime_context().gcs_address
    for actor_id, kind in extra.job_made:
        if kind == "pg":
            _remove_pg(actor_id)
        else:
            try:
                _ray.kill_by_id(actor_id, gcs)
            except Exception:
                pass
    if extra.job_id is not None:  # what the job driver made and never reported (cut off)
        from ray.core.generated import gcs_pb2

        try:
            for data in _ray.state_accessor().get_actor_table(None, None):
                e = gcs_pb2.ActorTableData.FromString(data)
                if e.job_id.hex() == extra.job_id and e.state != gcs_pb2.ActorTableData.DEAD:
                    _ray.kill_by_id(e.actor_id.hex(), gcs)
        except Exception:
            pass
    try:
        for pg_id, state in _pending_pgs().items():
            if state != "REMOVED" and pg_id not in keep:
                _remove_pg(pg_id)
    except Exception:
        pass
    # A graceful actor's process that outlived its round (a hook that hangs past a kill
    # that never came): it was started for this harness; ended by its pid, if it is still
    # the process that reported (same start time).
    for actor_id in list(extra.watch.graceful):
        if extra.watch.running(actor_id):
            try:
                os.kill(extra.watch.pids[actor_id][0], signal.SIGKILL)
            except OSError:
                pass
    for key in _record_keys():
        _kv_del(key)
    for key in _kv().keys(records.DEADLINE_PREFIX):
        _kv_del(key)
    for point in CRASH_POINTS:
        _kv_del(_marker(point))
    if extra.job_stderr:
        try:
            os.unlink(extra.job_stderr)
        except OSError:
            pass


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
    marker_dir = tempfile.mkdtemp(prefix="serve-cleanup-chaos-")  # hooks' markers, job drivers' stderr
    started = time.monotonic()
    try:
        for s in seeds:
            if max_seconds is not None and time.monotonic() - started > max_seconds:
                log(f"stopping: {max_seconds:.0f}s budget used after {totals.rounds} rounds")
                break
            r = run_round(s, cfg, ledger, bystanders, log, marker_dir)
            totals.add(r)
            log(r.line(first_round - 1 + totals.rounds))
    finally:
        for actor in [ledger] + bystanders:
            if isinstance(actor, PlacementGroup):
                _remove_pg(actor.id.hex())
            else:
                ray.kill(actor, no_restart=True)
        import shutil

        shutil.rmtree(marker_dir, ignore_errors=True)
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
