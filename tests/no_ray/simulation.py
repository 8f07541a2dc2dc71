"""The core's simulation: one seed, one schedule, every invariant checked while it runs.

In the spirit of FoundationDB's simulation tests. A seed draws a *profile* (shutdown grace,
bulk-drop threshold, sweep interval, request latency, fault level) and a *schedule*: a list
of events at virtual times (``Event``). ``Sim`` runs the schedule against a ``World``
(tests/no_ray/fakes.py) on a ``VirtualTimeLoop``, as the durable controller runs in Ray:

* a supervisor (Ray) starts a controller process, and restarts it after a crash. A
  process reads its records (``CleanupCore.load``; ``mid_rehydrate`` can crash it there),
  then serves calls, runs the reconcile loop (``CleanupCore.run``) and Serve's control
  loop, which calls ``shutdown_step`` every 0.1 s once Serve shuts down. Serve recovers
  its apps for a moment after each start. A crash takes the process's tasks, requests
  in flight and kills not yet sent along (``fakes.Process``).
* callers (drivers, replicas, routers) call ``register`` (both kinds: ``serve_cleanup.
  register``, which checks the actor, and Serve's ``_register_shutdown_cleanup_actor``,
  ``ensure_only`` and no check), ``unregister`` and ``gc``; a call whose process died is
  retried on the restarted one, as Ray retries actor tasks.
* events: actors appear (named or not, not yet known to GCS, long gone from the table,
  Serve's own, undying, unreachable), are registered (moves between owners, bursts of
  many), unregistered, die on their own; a share of them (``Profile.pg_share``: none,
  a quarter or half, by seed) are placement groups instead (``kind="pg"``): in the
  placement group table, registered through ``serve_cleanup.register`` only (a call the
  schedule makes through Serve's upstream method registers it serve-wide, checked),
  removed by id, REMOVED when they die; Serve's own among them are a replica's (told by
  its name) or an anonymous one the controller created (told by its creator); a share of
  the actors (``Profile.grace_share``) are registered with a ``grace_s`` (0.5 to 3 s):
  asked to exit, the table says DEAD at once and their process runs its hook, which ends
  at once, hangs (``FakeKiller.hanging``) or runs for a while, maybe past the deadline;
  some registrations name a Ray job as their owner (``Profile.jobs``: up to three jobs,
  running from the start, each ending at a random moment; or a job the cluster never
  ran), alone or in an owner set with apps; apps are deleted and deployed again; gc runs;
  puts, deletes, reads of the KV and reads of the actor table fail; crash points are
  armed (each fires once, wherever it is reached first); the controller crashes; entries
  that are not records are planted under the record prefix; Serve shuts down, with calls
  in flight, and faults and crashes go on during the shutdown.

After the schedule, faults stop; if Serve is not shutting down yet, the run waits until
every record of a dead actor is gone (or past its bound), then shuts Serve down. If the
shutdown gave up (short grace, undying or unreachable actors), a following Serve instance
starts over the same KV, with every actor killable again: it must adopt what was left and
kill it.

What is checked, and when (docs/architecture.md, "Invariants"):

I1   a registration that returned has a record until its actor is dead or unregistered:
     at every delete of a record and at every event.
I2   a registration that raised leaves no record: at every event, for actors with no call
     in flight (a failed take-back is waited for until its retry lands).
I3   only registered actors are killed, only while their record is in the KV and their
     owner is gone (or Serve shuts down); never one of Serve's own; an actor only by an
     actor's kill, a placement group only by its removal: at every kill.
I4   entries that are not records are never touched and never fatal: at every event, and
     every controller that read them reports them; once faults stop it loads.
I5   a record of a dead actor (unknown for ``unknown_grace_s``, or Serve's own) is gone
     within ``liveness_interval_s`` + 2 reconcile intervals of the moment it could be
     swept (a process OPEN and Serve running, no failed request since, no call for the
     actor in flight, its retry backoff over), plus the time bulk drops held the write
     gate meanwhile: measured per record in virtual time, sampled every 0.1 s.
I6   shutdown finishes (``closed``) only with no record in the KV and no write after it;
     gives up only after the grace and with work left, and then the records stay for the
     following controller, which adopts and kills them.
died_on_its_own: a kill is sent only to an actor the pass's own read of the actor table
     found alive, and the core's ``killed`` count never exceeds the kills that killed
     (plus the kills that raced a death: the actor died between that read and the kill,
     or after a kill that did not take, while the core waited for it to die).

Graceful exits and job owners are under every check above too (a graceful exit is a kill:
I3 at each ask and at each kill of its process; I1 also holds the record of an exit until
its process has ended; for I5 an exit's actor is dead once its process has ended, and a
pass drops its record). Besides:

exits   a graceful exit's deadline is stored before the exit is asked for, never more than
        the actor's largest grace away, and never stored again (a restarted controller
        honours it); its process is killed never before that deadline, and its hook has
        ended by the deadline plus ``wait_slack`` once a pass waits for it, plus
        ``force_slack`` (the next pass) otherwise, however many controllers crashed and
        restarted in between: sampled every 0.1 s, the clock held while no controller
        could act (none loaded, Serve recovering, the record backing off, a call of it
        in flight); no hook runs after Serve shut down.
how     the metrics' ``how`` of each kill the core counts: ``graceful`` for an actor whose
        hook returned before its deadline, ``forced`` for one killed at once or whose
        process was killed.
orphans an actor every owner of whose record is gone (an app or deployment deleted, a job
        ended: owners as the KV holds them, gone continuously) is killed (asked to exit)
        within I5's bound of the moment the core could do it.
jobs    the job table is read for the jobs that own records only, never while none does,
        at most once a liveness interval per controller process (a gc call's read, forced,
        apart); a registration reads it once at most (its job's check).

Three core bugs the simulation found are tolerated, each exactly (``LENIENT_*`` below),
so that every check holds over every seed; test_simulation.py shows each with a seed
and a replay, strict xfails.

Placement groups are under every check above, as actors are ("actor" there reads
"actor or placement group"; dead reads REMOVED). Besides, at every write of a key: its
kind (the key's and the value's) is the kind registered, and its handle is the one the
registration gave (an actor's; none for a placement group), or no kill could reach it
(I1); a registration, which the simulation always makes with valid arguments, never
raises ``ValueError`` (error); and at every event the counts by kind the controller
publishes (``counts_by_kind``, ``counts_by_kind_and_scope``) are those of its records
(counts).

Behaviours that docs/architecture.md lists as *Limits* are allowed, each exactly (see
``Sim._limit``): the actor's state becomes unknown to the checks of I1-I3 for that one
actor and the limit is counted.

A run is deterministic for a given schedule: time is virtual and every request's latency
is derived from the seed, the request and its key, not from the order in which the core
issues them.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import math
import os
import random
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import msgpack

from fakes import (
    _PROCESS, CONTROLLER_ID, Crash, FakeServe, LoopClock, close_loop, Process, SimDeadlock, VirtualTimeLoop, World,
    handle_of, track_tasks,
)
from serve_cleanup.core import CRASH_POINTS, Config, Registration, State
from serve_cleanup.core import records as rec
from serve_cleanup.core.lifecycle import LOADED
from serve_cleanup.core.ports import ServeState
from serve_cleanup.core.reaper import BACKOFF_MAX_S, Outcome
from serve_cleanup.core.records import Record
from serve_cleanup.core.registry import read_entry
from serve_cleanup.errors import OwnerNotFoundError, PersistenceError, RegistrationError

EPOCH = 1_700_000_000.0  # fakes' wall clock at virtual time 0
DEADLINE_PREFIX = rec.DEADLINE_PREFIX.encode()
APPS = {"a1": ("D1", "D2"), "a2": ("D1",)}
SERVE = ("serve", "", "")
CALL_TIMEOUT_S = 30.0  # a caller gives up on an unreachable controller after this
SAMPLE_S = 0.1  # how often the I5 clock of each record is sampled
MAX_RUN_S = 900.0  # virtual seconds; a run that has not finished by then is a failure
TRACE_CORE_LOG = os.environ.get("SIM_LOG") == "1"


# A core bug the simulation found (reported, test_simulation.py's strict xfails show it):
# an exit under way is told by its deadline key alone, so a pass that did not ask for it
# counts its end as ``graceful``: one whose process another pass forced (a gc call's, the
# shutdown's beside an owner pass's, a restarted controller's), or one never asked for
# (the actor unreachable, or a crash between the deadline's put and the ask) whose actor
# was then killed at once (its deadline past) or died on its own (counted as killed, too).
# While True, the ``how`` check takes either for such a kill.
LENIENT_HOW_ACROSS_PASSES = True
# Another: a registration refused because its actor is DEAD in the table (it is, as soon as
# its graceful exit started) takes back the record of an actor whose exit is under way
# when it re-checks a record it has not verified (``Registrar._verify_existing``: after a
# restart, or of a record the upstream method wrote): I1 breaks (the record goes while
# the exit's process runs its hook), and nothing forces that process any more (the next
# load deletes its deadline key). While True, such an exit is left unchecked.
LENIENT_TAKE_BACK_OF_AN_EXIT = True
# A third: an exit under way whose record is no orphan any more (its app deployed again
# after the pass that asked for it crashed, say) is reaped by nobody while Serve runs: the
# sweep leaves it (its deadline is stored), no owner pass takes it (an owner lives). Its
# record outlives I5's bound, and a hook that hangs is not forced until the shutdown.
# While True, such an exit is left unchecked until its owners are gone again.
LENIENT_EXIT_OWNER_BACK = True
# A fourth: two passes over one record (an owner pass and the shutdown's, or a gc call's:
# waiting for graceful exits, passes last seconds and overlap) can both drop it and both
# count the kill (``kills_total`` twice, the second ``forced``): a bulk drop's set was taken
# before the other pass's single delete forgot the record, and still counts it dropped.
# While True, a kill counted again is left out of the ``how`` and died_on_its_own counts.
LENIENT_DOUBLE_DROP = True

# The caller's call a controller task serves (and the tasks it starts): (what, actor id).
# Set in the caller's own task, whose context the controller's tasks for it copy.
_CALL: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar("call", default=("", ""))
# The controller process that answered the caller's last call (set in the caller's task).
_SERVED: contextvars.ContextVar[Optional[Process]] = contextvars.ContextVar("served", default=None)


class Unavailable(Exception):
    """No controller answered the call (Serve is down, or the caller's deadline passed)."""


# --- schedule ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    t: float
    op: str
    args: tuple = ()

    def __str__(self) -> str:
        return f"{self.t:9.3f}s  {self.op} " + " ".join(str(a) for a in self.args)


@dataclass(frozen=True)
class Profile:
    config: Config
    latency: float  # the most a request spends on the wire, each way
    restart_s: float  # Ray's restart of a crashed controller
    faults: int  # 0 calm, 1 some, 2 storm
    exit_s: float  # from the last shutdown step to the controller's exit (upstream's last steps)
    pg_share: float = 0.0  # of the actors, those that are placement groups instead
    grace_share: float = 0.0  # of the actors (not placement groups), those registered with a grace
    jobs: tuple = ()  # the Ray jobs that run at the start (each may end during the run)

    def __str__(self) -> str:
        c = self.config
        return (f"grace={c.shutdown_grace_s:g}s bulk_drop_min={c.bulk_drop_min} "
                f"liveness_interval={c.liveness_interval_s:g}s latency<={self.latency:g}s "
                f"restart={self.restart_s:g}s faults={self.faults} exit={self.exit_s:g}s "
                f"pg_share={self.pg_share:g} grace_share={self.grace_share:g} jobs={len(self.jobs)}")


def actor_id(i: int) -> str:
    """Like Ray's, ids spread over the 256 buckets of their first byte."""
    return f"{i * 167 % 256:02x}{i:030x}"


def pg_id(i: int) -> str:
    """A placement group's id: 18 bytes (an actor's are 16), in the bucket ``actor_id(i)``
    would be in."""
    return f"{i * 167 % 256:02x}{i:034x}"


# The share of a seed's actors that are placement groups: drawn from the seed apart from
# the schedule's own random numbers, so that a seed's events are those it had before
# placement groups (some of its actors are placement groups instead), and a quarter of
# the seeds have none.
PG_SHARES = (0.0, 0.25, 0.25, 0.5)


def _pg_share(seed: int) -> float:
    return PG_SHARES[zlib.crc32(f"{seed}:pg-share".encode()) % len(PG_SHARES)]


def _kind_of(seed: int, share: float, i: int) -> str:
    """Whether actor ``i`` of the seed is a placement group: from the seed and ``i``."""
    if share and zlib.crc32(f"{seed}:pg:{i}".encode()) / 2**32 < share:
        return rec.KIND_PLACEMENT_GROUP
    return rec.KIND_ACTOR


# Graceful exits and job owners (issue 22), drawn like the placement-group share: from a
# random number generator of their own, seeded with the seed, over the events the seed's
# schedule had before them. So a seed keeps its events; some of its actors' registrations
# carry a grace (and their hooks may hang), some of its registrations name a job as
# their owner, and the jobs' ends are new events. A quarter of the seeds has no graceful
# actor, a quarter no job.
GRACE_SHARES = (0.0, 0.3, 0.3, 0.6)
JOB_COUNTS = (0, 1, 2, 3)
JOB_IDS = ("02000000", "03000000", "04000000")  # (the fakes' Serve runs in job 01000000)
UNKNOWN_JOB = "0e000000"  # a job this cluster never ran: its registrations are refused
JOB_SHARE = 0.35  # of the registrations through serve_cleanup.register, when jobs run
MAX_SIM_GRACE_S = 3.0  # the largest grace_s a registration of the simulation asks for


def _graceful_and_job_owned(seed: int, profile: Profile, events: list[Event]) -> tuple[Profile, list[Event]]:
    """The seed's events, with graceful exits and job owners. An ``actor`` event gets its
    hook as a last argument (0: its graceful exit ends at once; ``inf``: its hook hangs;
    else: its hook runs that long, which may outlast the grace); a ``register`` event
    through ``serve_cleanup.register`` gets its ``grace_s``, and may name a job (or a job
    the cluster never ran) instead of its owner, as may an ``unregister`` of one owner;
    ``end_job`` events end the jobs."""
    share = GRACE_SHARES[zlib.crc32(f"{seed}:grace-share".encode()) % len(GRACE_SHARES)]
    jobs = JOB_IDS[:JOB_COUNTS[zlib.crc32(f"{seed}:jobs".encode()) % len(JOB_COUNTS)]]
    profile = dataclasses.replace(profile, grace_share=share, jobs=jobs)
    rng = random.Random(f"{seed}:grace-and-jobs")
    graceful: dict[int, float] = {}  # actor -> the grace its registrations ask for
    out: list[Event] = []
    for ev in events:
        if ev.op == "actor":
            hook = 0.0
            if ev.args[6] == rec.KIND_ACTOR and share and rng.random() < share:
                g = graceful[ev.args[0]] = round(rng.uniform(0.5, MAX_SIM_GRACE_S - 0.5), 2)
                roll = rng.random()
                hook = math.inf if roll < 0.3 else round(rng.uniform(0.1, 2 * g), 2) if roll < 0.6 else 0.0
            ev = Event(ev.t, ev.op, ev.args + (hook,))
        elif ev.op == "register" and ev.args[1] == "api":
            i, how, scope, app, deployment = ev.args
            if jobs and rng.random() < JOB_SHARE:
                scope, app, deployment = "job", UNKNOWN_JOB if rng.random() < 0.05 else rng.choice(jobs), ""
            grace = 0.0
            if i in graceful:
                roll = rng.random()
                grace = graceful[i] if roll < 0.75 else 0.0 if roll < 0.9 else graceful[i] + 0.5
            ev = Event(ev.t, ev.op, (i, how, scope, app, deployment, grace))
        elif ev.op == "unregister" and ev.args[1:2] in (("app",), ("deployment",)) and jobs and rng.random() < JOB_SHARE:
            ev = Event(ev.t, ev.op, (ev.args[0], "job", rng.choice(jobs), ""))
        out.append(ev)
    last = max((e.t for e in events), default=0.0) or 1.0
    horizon = next((e.t for e in events if e.op == "shutdown"), last) or last
    for job in jobs:
        end = round(rng.uniform(0.1, 1.2) * horizon, 3)
        if end <= last:  # else it runs until Serve shuts down
            at = next((k for k, e in enumerate(out) if e.t > end), len(out))
            out.insert(at, Event(end, "end_job", (job,)))
    return profile, out


def _register_as_the_adapter_does(core, reg: Registration):
    """The controller's dispatch (``serve_adapter.controller``): the upstream method
    takes the fast path for an actor with no record, every other call the full one."""
    if reg.ensure_only and not reg.check_actor and core.registrar.can_write_new(reg.actor_id):
        return core.registrar.register_new(reg)
    return core.registrar.register(reg)


def schedule(seed: int) -> tuple[Profile, list[Event]]:
    """The seed's profile and events (a pure function of the seed)."""
    rng = random.Random(seed)
    short_grace = rng.random() < 0.25
    faults = rng.choice([0, 1, 1, 2])
    profile = Profile(
        config=Config(
            shutdown_grace_s=round(rng.uniform(1.5, 6.0), 2) if short_grace else 20.0,
            bulk_drop_min=rng.choice([64, 64, 4, 8, 16]),
            liveness_interval_s=rng.choice([5.0, 5.0, 5.0, 1.0, 2.0]),
        ),
        latency=rng.choice([0.0, 0.002, 0.02]),
        restart_s=rng.choice([0.2, 1.0]),
        faults=faults,
        exit_s=rng.choice([0.05, 0.05, 0.5]),
        pg_share=_pg_share(seed),
    )
    stuck = 0.15 if short_grace else 0.03  # undying or unreachable actors
    n = rng.randint(25, 110)
    shutdown_at = rng.randrange(n // 3, n) if rng.random() < 0.6 else None
    events: list[Event] = []
    actors: list[int] = []
    t = 0.0
    next_actor = 1
    for k in range(rng.choice([0, 0, 1, 3])):  # left in the KV before the first start
        events.append(Event(0.0, "plant", (rng.choice(["non_utf8", "garbage", "future", "misplaced"]),
                                           rng.randint(1, 40), 1000 + k)))

    def owner() -> tuple[str, str, str]:
        scope = rng.choice(["serve", "serve", "app", "deployment"])
        app = rng.choice(["a1", "a2"])
        if scope == "serve":
            return SERVE
        if scope == "app":
            return ("app", app, "")
        return ("deployment", app, rng.choice(["D1", "D2"]))  # ("a2", "D2") never exists

    for k in range(n):
        t += 0.0 if rng.random() < 0.3 else rng.expovariate(5.0)
        t = round(t, 3)
        if k == shutdown_at:
            events.append(Event(t, "shutdown"))
        roll = rng.random()
        if roll < 0.27 or not actors:
            i, next_actor = next_actor, next_actor + 1
            record_kind = _kind_of(seed, profile.pg_share, i)
            kind = rng.choices(["plain", "system", "gone"], [0.9, 0.04, 0.06])[0]
            named = kind == "system" or rng.random() < 0.6
            name = f"SERVE_REPLICA::a1#{i}" if kind == "system" else (f"n{i}" if named else "")
            if kind == "system" and record_kind == rec.KIND_PLACEMENT_GROUP and i % 2:
                name = ""  # a gang's: anonymous, Serve tells it by its creator (the controller)
            handle_name = "" if kind == "system" or rng.random() < 0.2 else name
            flag = rng.choices(["", "undying", "unreachable"], [1 - stuck, stuck / 2, stuck / 2])[0]
            known_in = rng.choice([0.0, 0.0, 0.0, 0.3, 1.5]) if kind == "plain" else 0.0
            events.append(Event(t, "actor", (i, kind, name, handle_name, known_in, flag, record_kind)))
            if rng.random() < 0.08:
                events.append(Event(t, "die", (i,)))  # dead before it is registered
            actors.append(i)
            how = "upstream" if rng.random() < 0.35 else "api"
            events.append(Event(t, "register", (i, how) + (SERVE if how == "upstream" else owner())))
        elif roll < 0.40:  # again: an owner added to its set (or, scope serve, nothing changes)
            i = rng.choice(actors)
            how = "upstream" if rng.random() < 0.25 else "api"
            shared = owner() if rng.random() < 0.3 else ("app", rng.choice(["a1", "a2"]), "")
            events.append(Event(t, "register", (i, how) + (SERVE if how == "upstream" else shared)))
        elif roll < 0.415:
            count = rng.randint(profile.config.bulk_drop_min, profile.config.bulk_drop_min + 20)
            count = min(count, 90)
            pgs = tuple(j for j in range(next_actor, next_actor + count)
                        if _kind_of(seed, profile.pg_share, j) == rec.KIND_PLACEMENT_GROUP)
            events.append(Event(t, "burst", (next_actor, count, rng.random() < 0.5, pgs)))
            next_actor += count
        elif roll < 0.48:
            i = rng.choice(actors)
            events.append(Event(t, "unregister", (i,) + (owner() if rng.random() < 0.5 else ())))
        elif roll < 0.56:
            events.append(Event(t, "die", (rng.choice(actors),)))
        elif roll < 0.59:
            events.append(Event(t, "delete_app", (rng.choice(["a1", "a2"]),)))
        elif roll < 0.61:
            events.append(Event(t, "deploy", (rng.choice(["a1", "a2"]),)))
        elif roll < 0.65:
            events.append(Event(t, "gc"))
        elif roll < 0.65 + 0.05 * faults:
            what = rng.choice(["puts", "deletes", "reads", "lookups"])
            count = rng.choice([1, 1, 2, 3]) if rng.random() < 0.9 else rng.randint(5, 40)
            events.append(Event(t, "fail", (what, count)))
        elif roll < 0.80:
            events.append(Event(t, "arm", (rng.choice(CRASH_POINTS),)))
        elif roll < 0.83:
            events.append(Event(t, "crash"))
        elif roll < 0.86:
            events.append(Event(t, "plant", (rng.choice(["non_utf8", "garbage", "future", "misplaced"]),
                                              rng.choice(actors), k)))
        elif roll < 0.93:  # shared by both apps (or one app and a deployment of the other)
            i = rng.choice(actors)
            second = ("app", "a2", "") if rng.random() < 0.7 else ("deployment", "a2", "D1")
            events.append(Event(t, "register", (i, "api", "app", "a1", "")))
            events.append(Event(round(t + 0.05, 3), "register", (i, "api") + second))
        # else: nothing happens for a while
    return _graceful_and_job_owned(seed, profile, events)


# --- the model of what callers were told ---------------------------------------------------


@dataclass
class Actor:
    i: int
    actor_id: str
    kind: str  # plain, system (one of Serve's own), gone (long gone from the actor table)
    name: str
    handle_name: str
    known_at: float
    died_at: Optional[float] = None  # when the actor table started to say DEAD
    died_on_its_own: bool = False
    calls: int = 0  # register/unregister calls in flight
    overlapped: bool = False  # two of its calls were in flight at once since it was quiet
    expect: str = "absent"  # what its last call left: present, absent, unknown
    limit: Optional[str] = None  # a documented limit made its state unknown
    claims: dict = field(default_factory=dict)  # the owner(s) it is registered to -> since when
    asked: list = field(default_factory=list)  # owners its calls in flight ask for
    certain: bool = False  # claims is exactly its owner set (its last call ended alone, cleanly)
    busy_until: float = 0.0  # end of its last call
    last: str = ""  # its last call and how it ended
    key_failed_at: float = -1.0  # last failed put/delete of its key
    key_failed_seq: int = 0  # ... in the order of all writes (Sim.writes)
    key_changed_seq: int = 0  # the last write or delete of its key that landed
    takeback_pending: bool = False  # a refused call's take-back write failed; not retried yet
    takeback_since: float = 0.0
    takeback_by: Optional[Process] = None  # the controller process whose reconcile loop retries it
    takeback_window: float = 0.0  # since when the reconcile loop could have retried it
    i5_window: float = 0.0  # since when it has been continuously sweepable
    bulk_mark: float = 0.0  # Sim.bulk_s then
    kill_sent_at: Optional[float] = None
    record_kind: str = rec.KIND_ACTOR  # or a placement group (rec.KIND_PLACEMENT_GROUP)
    kill_tried_at: Optional[float] = None  # the last kill, exit or removal the core tried
    # Graceful exits.
    hook: float = 0.0  # how long its __ray_shutdown__ runs (inf: it hangs)
    max_grace: float = 0.0  # the largest grace_s its registrations asked for
    exit_deadline: Optional[float] = None  # its exit's deadline, as first stored (virtual time)
    deadline_stored: bool = False  # a deadline key of it is in the KV
    deadline_by: int = 0  # the controller process that stored it
    exit_sent_at: Optional[float] = None  # the first Killer.terminate sent to it
    terminated_at: Optional[float] = None  # its exit started: the table says DEAD, its hook runs
    exit_process: int = 0  # the controller process that asked for it
    ended_at: Optional[float] = None  # its process ended (its hook returned, or it was killed)
    ended_by: str = ""  # "hook" or "force"
    forced_in: Optional[asyncio.Task] = None  # the task (a pass) that killed its process
    exit_window: float = 0.0  # since when a controller could have forced it
    exit_exempt: Optional[str] = None  # why its exit is no longer bounded (a caller's unregister)
    owner_back: bool = False  # its exit is under way and its record has a live owner again
    kill_counted: bool = False  # the core counted its kill (metrics) since its record was last written
    # Owners.
    orphan_since: Optional[float] = None  # since when every owner of its record is gone
    orphan_window: float = 0.0  # since when the core could have killed it

    @property
    def is_pg(self) -> bool:
        return self.record_kind == rec.KIND_PLACEMENT_GROUP

    @property
    def handle(self) -> bytes:
        """The handle bytes its registrations give (a placement group has none)."""
        return b"" if self.is_pg else handle_of(self.actor_id)

    @property
    def label(self) -> str:
        return (f"#{self.i} ({self.actor_id[:6]}{', ' + self.name if self.name else ''}, {self.kind}"
                f"{' pg' if self.is_pg else ''})")


@dataclass
class ProcInfo:
    booted_at: float
    recovered_at: float = math.inf
    loaded_at: Optional[float] = None
    planted_before: frozenset = frozenset()
    set_aside_checked: bool = False
    first_step_at: Optional[float] = None
    teardown_done_at: Optional[float] = None
    registering: int = 0  # register handlers running in it
    exited: Optional[State] = None
    crashes_before: int = 0  # crash points reached before it started


@dataclass
class Failure:
    label: str  # I1 .. I6, died_on_its_own, error
    message: str
    at: float
    log: list[str]

    def __str__(self) -> str:
        return f"{self.label} at {self.at:.3f}s: {self.message}"


class _CoreLog(logging.Handler):
    """The core's log. An exception it logged (``log.exception``) is a bug, never an
    expected failure. With ``SIM_LOG=1`` in the environment, its lines (DEBUG and up) go
    into the run's trace too."""

    def __init__(self, sim: "Sim") -> None:
        super().__init__(logging.DEBUG)
        self.sim = sim

    def emit(self, record: logging.LogRecord) -> None:
        if TRACE_CORE_LOG:
            self.sim.note(f"  core {record.levelname}: {record.getMessage()}")
        if record.exc_info:
            self.sim.fail("error", f"the core logged an exception: {record.getMessage()} "
                                   f"{record.exc_info[1]!r}")


class SimServe(FakeServe):
    """The fakes' Serve, whose state follows the run: recovering for a moment after each
    controller start, shutting down once asked (Serve's flag, durable)."""

    def __init__(self, sim: "Sim") -> None:
        super().__init__()
        self.sim = sim

    def state(self) -> ServeState:
        if self.sim.shutdown_at is not None:
            return ServeState.SHUTTING_DOWN
        info = self.sim.info.get(self.sim.w.process)
        if info is None or self.sim.now < info.recovered_at:
            return ServeState.RECOVERING
        return ServeState.RUNNING


class SimMetrics:
    def __init__(self) -> None:
        self.killed_n = 0
        # Per task: the ``how`` of each kill counted while the reaper drops records there
        # (``Sim._instrument``).
        self.hows: dict[asyncio.Task, list[str]] = {}

    def registered(self, scope: str, kind: str = "actor") -> None: ...

    def killed(self, reason: str, kind: str = "actor", how: str = "forced") -> None:
        self.killed_n += 1
        counted = self.hows.get(asyncio.current_task())  # type: ignore[arg-type]
        if counted is not None:
            counted.append(how)

    def kill_failed(self, reason: str, kind: str = "actor") -> None: ...

    def records(self, counts: dict, set_aside: int, by_kind: dict) -> None: ...

    def reconcile_duration(self, seconds: float) -> None: ...


# --- the run -------------------------------------------------------------------------------


class Sim:
    def __init__(self, seed: int, profile: Profile, events: list[Event]) -> None:
        self.seed = seed
        self.p = profile
        self.events = events
        self.failure: Optional[Failure] = None
        self._log: list[tuple[float, str]] = []
        self.limits: dict[str, int] = {}  # documented limits met, and how often
        self.stats: dict[str, int] = {}

    # --- driving ----------------------------------------------------------------------

    def run(self) -> Optional[Failure]:
        loop = VirtualTimeLoop()
        track_tasks(loop)
        self.loop = loop
        try:
            loop.run_until_complete(self._main())
        except SimDeadlock as e:
            self.fail("error", f"deadlock: {e}")
        except Exception as e:  # a bug in the simulation or an exception the core let out
            self.fail("error", f"{e!r}")
        finally:
            close_loop(loop)
        return self.failure

    @property
    def now(self) -> float:
        return self.loop.time()

    def note(self, what: str) -> None:
        self._log.append((self.now, what))

    def count(self, what: str, n: int = 1) -> None:
        self.stats[what] = self.stats.get(what, 0) + n

    def fail(self, label: str, message: str) -> None:
        if self.failure is None:
            self.note(f"FAILED {label}: {message}")
            self.failure = Failure(label, message, self.now if hasattr(self, "loop") else 0.0,
                                   [f"{t:9.3f}s  {m}" for t, m in self._log])

    def _latency(self, op: str, key: str) -> float:
        """A request's time on the wire: from the seed, the request and its key only."""
        if not self.p.latency:
            return 0.0
        n = self._requests[(op, key)] = self._requests.get((op, key), 0) + 1
        return self.p.latency * (zlib.crc32(f"{self.seed}:{op}:{key}:{n}".encode()) / 2**32)

    def _u(self, *what: object) -> float:
        """A uniform number in [0, 1) from the seed and ``what``."""
        return zlib.crc32(":".join(map(str, (self.seed,) + what)).encode()) / 2**32

    async def _main(self) -> None:
        self.w = w = World(self.p.config, clock=LoopClock(self.loop))
        self.serve = w.owners = SimServe(self)
        for app, deployments in APPS.items():
            self.serve.deploy(app, *deployments)
        self.metrics = w.metrics = SimMetrics()
        logger = logging.Logger("serve_cleanup")  # this run's own: not in logging's registry
        logger.setLevel(logging.DEBUG if TRACE_CORE_LOG else logging.ERROR)
        logger.addHandler(_CoreLog(self))
        w.logger = logger
        self._requests: dict[tuple[str, str], int] = {}
        w.store.latency = w.table.latency = self._latency
        w.store.on_change = self._on_change
        w.store.on_failure = self._on_store_failure
        w.table.on_failure = self._on_table_failure
        w.killer.check = self._on_kill_attempt
        w.killer.on_kill = self._on_kill
        w.killer.on_terminate = self._on_terminate
        w.killer.on_kill_process = self._on_kill_process
        w.jobs.running |= set(self.p.jobs)
        w.jobs.on_read = self._on_job_read

        self.actors: dict[int, Actor] = {}
        self.by_id: dict[str, Actor] = {}
        self.kv: dict[str, float] = {}  # actor ids with a record in the KV -> when written
        self.planted: dict[bytes, bytes] = {}
        self.plant_queue: list[tuple] = [e.args for e in self.events if e.op == "plant" and e.t == 0.0]
        self.deleted_at: dict[str, list[float]] = {}
        self.info: dict[Process, ProcInfo] = {}
        self.shutdown_at: Optional[float] = None
        self.serve_down = False
        self.exit_state: Optional[State] = None
        self.closed_at: Optional[float] = None
        self.gave_up_at: Optional[float] = None
        self.faults_on = True
        self.calm_since = math.inf  # the sweep can run since then (a process OPEN, no failure)
        self.last_store_failure = -1.0
        self.writes = 0  # KV writes and deletes of record keys, landed or failed
        self.bulk_s = 0.0  # how long bulk drops have held the write gate alone (sampled)
        self.kill_deaths = 0
        self.race_kills = 0
        self.calls: list[asyncio.Task] = []
        self.stuck_registered = False
        self.left_at_give_up: Optional[dict[str, Record]] = None
        self._ready: Optional[Process] = None
        self.bound = (self.p.config.liveness_interval_s + 2 * self.p.config.reconcile_interval_s
                      + SAMPLE_S + 12 * self.p.latency + 0.01)
        # A graceful exit past its deadline is forced at the next poll of the pass that asked
        # for it, or by the next pass (a reconcile interval or a shutdown retry away).
        c = self.p.config
        self.force_slack = max(c.reconcile_interval_s, c.shutdown_retry_s) + 0.6 + 20 * self.p.latency
        self.kv_records: dict[str, Record] = {}  # the readable record of each id the KV holds one of
        self.kv_owners: dict[str, tuple] = {}  # actor ids with an owner in the KV -> their owners
        self.passes: dict[object, tuple[Process, frozenset]] = {}  # reap passes running: ids each holds
        # Passes waiting for their kills and exits to end: since when, and the exits each waits for.
        self.waits: dict[object, tuple[Process, float, frozenset]] = {}
        self.wait_slack = 0.3 + 10 * self.p.latency  # a wait polls every 0.25 s at most
        self.job_read_at: dict[Process, float] = {}  # each process's last read of the job table
        self.job_left_at: dict[str, float] = {}  # when a job last stopped owning a record in the KV
        self.job_reads = {"ended": 0, "gc": 0, "alive": 0}
        self.job_register_attempts = 0

        supervisor = asyncio.ensure_future(self._supervise())
        observer = asyncio.ensure_future(self._observe())
        for ev in self.events:
            if ev.op == "plant" and ev.t == 0.0:
                continue  # planted before the first start
            await asyncio.sleep(max(0.0, ev.t - self.now))
            if self.failure:
                return
            self._apply(ev)
            self._check()
        await self._finish()
        supervisor.cancel()
        observer.cancel()

    async def _finish(self) -> None:
        """Faults stop; Serve shuts down (if it has not yet) once the dead are swept; a
        following controller adopts whatever a give-up left."""
        self._faults_off()
        if self.shutdown_at is None:
            quiet_until = self.now + BACKOFF_MAX_S + self.bound + 5.0
            while self.now < quiet_until and not self.failure and (self._gone_in_kv() or self._orphans_left()):
                await asyncio.sleep(0.5)
                self._check()
            self._apply(Event(self.now, "shutdown"))
        await self._until_down()
        if self.failure:
            return
        await self._settle_calls()
        self._check()
        if self.exit_state is State.GAVE_UP and not self.failure:
            await self._following_controller()
        if not self.failure:
            self._final_checks()

    async def _until_down(self) -> None:
        started = self.now
        while not self.serve_down or self._ready_process() is not None:
            if self.failure:
                return
            if self.now - started > MAX_RUN_S:
                self.fail("I6", f"Serve's shutdown has not finished {MAX_RUN_S:.0f}s after it started")
                return
            await asyncio.sleep(0.25)
            self._check()

    async def _settle_calls(self) -> None:
        pending = [t for t in self.calls if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=CALL_TIMEOUT_S + self.p.config.load_wait_s + 10)
        if any(not t.done() for t in pending):
            self.fail("error", f"{sum(not t.done() for t in pending)} call(s) never returned")

    def _faults_off(self) -> None:
        self.faults_on = False
        self.faults_off_at = self.now
        s, t = self.w.store, self.w.table
        s.fail_puts = s.fail_deletes = s.fail_reads = t.fail_lookups = 0
        self.w.crash_at.clear()
        self.note("faults stop")

    async def _following_controller(self) -> None:
        """A new Serve instance over the same KV (no apps yet), every actor killable
        again: it must adopt the records the give-up left, and kill their actors."""
        w = self.w
        left = self.left_at_give_up or {}
        self.count("gave_up")
        self.note(f"a following Serve instance starts; {len(left)} record(s) left: "
                  + ", ".join(self.by_id[a].label if a in self.by_id else a for a in sorted(left)))
        if w.store.records() != left:
            self.fail("I6", "the records a give-up left changed before the next controller started: "
                            f"{sorted(left)} then {sorted(w.store.records())}")
            return
        w.killer.undying.clear()
        w.killer.unreachable.clear()
        self.serve.deployments = set()
        self.shutdown_at = None
        self.serve_down = False
        self.exit_state = None
        self.closed_at = None
        self.calm_since = math.inf
        supervisor = asyncio.ensure_future(self._supervise())
        started = self.now
        while self._ready_process() is None or self.w.current.state not in LOADED:
            await asyncio.sleep(0.1)
            if self.now - started > 10:
                self.fail("I6", "the following controller did not load the records")
                return
        status = self.w.current.status()
        if status["records"] != len(left):
            self.fail("I6", f"the following controller adopted {status['records']} of the "
                            f"{len(left)} record(s) a give-up left")
            return
        await asyncio.sleep(3.0)  # its reconcile kills the app-scoped ones (no app exists)
        self._check()
        self._apply(Event(self.now, "shutdown"))
        await self._until_down()
        supervisor.cancel()
        if self.exit_state is not State.CLOSED and not self.failure:
            self.fail("I6", f"the following controller did not finish the shutdown ({self.exit_state})")
        for actor_id in left:
            a = self.by_id.get(actor_id)
            if a is not None and a.kind == "system":
                continue  # Serve's own: its record is dropped, the actor never killed
            if self.w.table.alive(actor_id) and not self.failure:
                self.fail("I6", f"the following controller left {self.by_id[actor_id].label} alive, "
                                "whose record a give-up had left")

    # --- the controller process (Ray's side) ------------------------------------------

    def _ready_process(self) -> Optional[Process]:
        p = self._ready
        return p if p is not None and p.alive else None

    async def _supervise(self) -> None:
        while not self.serve_down:
            p = self.w.process
            if p is None or not p.alive:
                if p is not None:
                    await asyncio.sleep(self.p.restart_s)
                if self.serve_down or self.failure:
                    return
                await self._boot()
            else:
                await asyncio.sleep(0.05)

    async def _boot(self) -> None:
        while self.plant_queue:
            self._plant(*self.plant_queue.pop(0))
        core = self.w.new_process()
        p = self.w.process
        assert p is not None
        self._instrument(p, core)
        info = self.info[p] = ProcInfo(booted_at=self.now, planted_before=frozenset(self.planted),
                                       crashes_before=len(self.w.crashes))
        p.on_death = lambda: self._died(p)
        self.calm_since = math.inf
        self.note(f"controller process {p.number} starts, reads the records")
        load = p.spawn(core.load())
        await asyncio.wait([load])
        if not p.alive:
            self.note(f"controller process {p.number} crashed while reading the records")
            return
        info.recovered_at = self.now + 0.6 * self._u("recover", p.number)
        p.spawn(core.run())
        p.spawn(self._control_loop(p, core))
        self._ready = p
        self.note(f"controller process {p.number} serves calls ({core.state.value})")

    def _instrument(self, p: Process, core: Any) -> None:
        """Note which records each reap pass of ``p`` holds while it runs (a graceful exit,
        or an orphan, waits for the pass under way), and check the ``how`` of each kill the
        core counts as it drops the records of killed actors (metrics)."""
        reaper = core.reaper
        reap, drop_all, confirm = reaper.reap, reaper._drop_all, reaper._confirm_dead

        async def tracked_reap(records: list, reason: Any) -> Any:
            token = object()
            self.passes[token] = (p, frozenset(r.actor_id for r in records))
            try:
                return await reap(records, reason)
            finally:
                self.passes.pop(token, None)

        async def counted_drop(to_drop: dict, reason: Any, outcomes: dict) -> None:
            task = asyncio.current_task()
            hows = self.metrics.hows[task] = []
            try:
                await drop_all(to_drop, reason, outcomes)
            finally:
                del self.metrics.hows[task]
            self._check_hows(p, [a for a in to_drop if outcomes.get(a) is Outcome.KILLED], hows)

        async def timed_confirm(records: list, exiting: dict, reason: Any, outcomes: dict) -> Any:
            token = object()
            self.waits[token] = (p, self.now, frozenset(exiting))
            try:
                return await confirm(records, exiting, reason, outcomes)
            finally:
                self.waits.pop(token, None)

        reaper.reap, reaper._drop_all, reaper._confirm_dead = tracked_reap, counted_drop, timed_confirm

    def _passes_of(self, p: Optional[Process]) -> list[frozenset]:
        return [ids for q, ids in self.passes.values() if q is p and q.alive]

    def _died(self, p: Process) -> None:
        info = self.info[p]
        if info.exited is State.GAVE_UP:  # what it leaves (it may die of a crash meanwhile)
            self.left_at_give_up = self.w.store.records()
        if info.exited is None:
            self.count("crashes")
            if self.w.crashes and self.w.crashes[-1] == "mid_graceful_exit" and len(self.w.crashes) > info.crashes_before:
                self.count("crashes_mid_graceful_exit")
            self.note(f"controller process {p.number} crashed"
                      + (f" at {self.w.crashes[-1]}" if self.w.crashes else ""))
        for a in self.actors.values():
            if a.takeback_pending:  # the failed take-back's retry died with the process
                self._limit(a, "take-back lost in a crash")

    async def _control_loop(self, p: Process, core: Any) -> None:
        """Serve's control loop: once Serve shuts down, its teardown, then the shutdown step
        (``_kill_registered_cleanup_actors``) every tick until the core says done."""
        info = self.info[p]
        while True:
            await asyncio.sleep(0.1)
            if self.shutdown_at is None:
                continue
            if info.teardown_done_at is None:
                info.teardown_done_at = self.now + 0.5 * self._u("teardown", p.number)
            if self.now < info.teardown_done_at:
                continue
            if info.first_step_at is None:
                info.first_step_at = self.now
            if core.shutdown_step():
                await self._exit(p, core)
                return

    async def _exit(self, p: Process, core: Any) -> None:
        info = self.info[p]
        state = info.exited = core.state
        self.exit_state = state
        self.serve_down = True
        records = self.w.store.records()
        self.note(f"shutdown step says done: {state.value}; records in the KV: {len(records)}")
        if state is State.CLOSED:
            self.closed_at = self.now
            if records:  # I6
                self.fail("I6", "shutdown finished (closed) with records left in the KV: "
                                + ", ".join(self._label(a) for a in sorted(records)))
        elif state is State.GAVE_UP:
            self.gave_up_at = self.now
            held = self.now - (info.first_step_at or self.now)
            if held < self.p.config.shutdown_grace_s - 1e-6:
                self.fail("I6", f"shutdown gave up after {held:.2f}s, before the grace "
                                f"({self.p.config.shutdown_grace_s:g}s)")
            elif (not records and not info.registering and info.loaded_at is not None
                    and not (core.status()["take_backs_pending"] and self._take_back_failing)):
                self.fail("I6", f"shutdown was held for the whole grace ({held:.2f}s) with nothing "
                                "left: no record, no registration in flight, no take-back that could "
                                f"not be written ({core.status()['take_backs_pending']} pending)")
            elif (not self.stuck_registered and not self._faulted_during_shutdown
                    and self.p.config.shutdown_grace_s >= 4 * self.p.config.unknown_grace_s):
                self.fail("I6", "shutdown gave up though every registered actor could be killed and "
                                "no fault happened during the shutdown")
        else:
            self.fail("I6", f"shutdown step said done in state {state.value}")
        await asyncio.sleep(self.p.exit_s)  # upstream deletes its checkpoints and flag, kills itself
        p.die()

    @property
    def _faulted_during_shutdown(self) -> bool:
        return self.shutdown_at is None or self.faults_on or self.faults_off_at > self.shutdown_at

    # --- callers ----------------------------------------------------------------------

    async def _call(self, fn: Callable[[Any], Any], registering: bool = False) -> tuple[bool, Any, int]:
        """Call the controller as a caller does (Ray retries a call whose controller died).
        Returns (ok, result or exception, attempts cut by a crash or the exit)."""
        started, delay, cut = self.now, 0.05, 0
        while True:
            p = self._ready_process()
            if p is None:
                if self.serve_down or self.now - started > CALL_TIMEOUT_S:
                    return False, Unavailable("no controller"), cut
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            info = self.info[p]
            info.registering += registering
            task = p.spawn(fn(p.core))
            try:
                await asyncio.wait([task])
            finally:
                info.registering -= registering
            if task.cancelled() or isinstance(task.exception(), Crash):
                cut += 1
                continue
            _SERVED.set(p)
            if task.exception() is not None:
                return False, task.exception(), cut
            return True, task.result(), cut

    def _start(self, a: Actor, owner: Optional[tuple]) -> None:
        if a.calls:
            a.overlapped = True
        a.calls += 1
        if owner is not None:
            a.asked.append((owner, self.now))

    def _end(self, a: Actor, new: str, limit: Optional[str] = None,
             asked: Optional[tuple] = None, owners: Optional[tuple] = None) -> None:
        """A call of ``a`` ended: ``new`` is what it leaves if no other call overlapped;
        ``owner`` the owner a registration returned; ``asked`` what the call asked for."""
        a.calls -= 1
        if asked is not None:
            a.asked.remove(asked)
        if owners is not None:  # the owner set a registration returned: owner -> since when
            held = {o: a.claims.get(o, asked[1] if asked else self.now) for o in owners or (SERVE,)}
            if a.overlapped:
                a.claims.update(held)
            else:
                a.claims = held
        a.certain = a.certain and owners is None and not limit and not a.overlapped and new != "unknown"
        if owners is not None and not a.overlapped and not limit:
            a.certain = True
        if (limit or a.overlapped) and asked is not None:
            a.claims.setdefault(*asked)  # its record may hold what it asked for
        if a.overlapped:
            new = "unknown"
        if not a.calls:
            a.overlapped = False
        a.expect = new
        a.busy_until = self.now
        if limit:
            self._limit(a, limit)
        elif new != "unknown" and not a.calls:
            a.limit = None

    def _limit(self, a: Actor, why: str) -> None:
        """A behaviour docs/architecture.md lists under "Limits", met by actor ``a``: its
        record may outlive a call that raised, and the actor may be killed with the owner
        it asked for. Exactly these:

        * "A crash, then a retry that fails": a registration cut short by a crash whose
          retry raised ``OwnerNotFoundError`` (its owner was deleted meanwhile) or
          ``PersistenceError`` (the restarted controller could not read its records in
          time, or could not look the actor up);
        * "A registration whose write had an unknown outcome" (the take-back part): a
          refused registration whose take-back failed, then a crash before its retry;
        * "A stuck record is given up on" (I6: "the records stay"): a registration in
          flight when the shutdown gave up.
        """
        a.limit = why
        a.expect = "unknown"
        a.takeback_pending = False
        self.limits[why] = self.limits.get(why, 0) + 1
        self.note(f"limit for {a.label}: {why}")

    async def _register(self, a: Actor, reg: Registration) -> None:
        started = self.now
        asked = (SERVE if reg.ensure_only else (reg.scope, reg.app, reg.deployment), started)
        self._start(a, asked[0])
        _CALL.set(("register", a.actor_id))  # (this call's own task: the controller's tasks copy it)
        ok, result, cut = await self._call(lambda core: _register_as_the_adapter_does(core, reg), registering=True)
        if reg.scope == rec.SCOPE_JOB:
            self.job_register_attempts += cut + 1  # each may read the job table once (its job check)
        how = "upstream" if reg.ensure_only else f"{reg.scope} {reg.app} {reg.deployment}".strip()
        if reg.grace_s:
            how += f" grace {reg.grace_s:g}s"
        if ok:
            a.last = f"register {how} returned at {self.now:.3f}s"
            self.note(f"register {a.label} {how}: ok ({result.owner_label})" + (f" after {cut} cut" if cut else ""))
            self.count("registered")
            before = dict(a.claims) if a.certain and not a.calls - 1 and a.expect == "present" else None
            if before is not None and not cut and self.w.table.alive(a.actor_id):  # owner sets
                if reg.ensure_only or reg.scope == "serve":
                    expected = set(before)
                else:
                    expected = (set(before) - {SERVE}) | {asked[0]}
                got = set(result.owners or (SERVE,))
                if got != expected and not any(self._owner_gone(o, t) for o, t in before.items()):
                    self.fail("owners", f"registering {a.label} with {how} left the owners {sorted(got)}; "
                                        f"its owners were {sorted(before)}, so {sorted(expected)}")
            self._end(a, "present", asked=asked, owners=result.owners)
            if (before is not None and (reg.ensure_only or reg.scope == "serve") and a.certain
                    and set(a.claims) != set(before) and self.w.table.alive(a.actor_id)
                    and not any(self._owner_gone(o, t) for o, t in before.items())):  # the upstream rule
                self.fail("owners", f"registering {a.label} with scope serve ({how}) changed the owners of its "
                                    f"registration: {sorted(before)} then {sorted(a.claims)}")
            return
        a.last = f"register {how} raised {type(result).__name__} at {self.now:.3f}s" + (f" after {cut} cut" if cut else "")
        self.note(f"register {a.label} {how}: {type(result).__name__}" + (f" after {cut} cut" if cut else ""))
        if isinstance(result, (ValueError, TypeError)) and not isinstance(result, RegistrationError):
            # (the simulation's arguments are valid)
            self.fail("error", f"registering {a.label} with {how} raised {result!r}")
        limit = None
        if cut and isinstance(result, (OwnerNotFoundError, PersistenceError)):
            limit = f"crash, then the retry raised {type(result).__name__}"
        elif self.gave_up_at is not None and started <= self.gave_up_at:
            limit = "in flight when the shutdown gave up"
        if (a.key_failed_at >= started and a.key_failed_seq > a.key_changed_seq and not limit
                and a.actor_id in self.kv):  # its last write failed: the take-back, not the write
            a.takeback_pending, a.takeback_since = True, self.now
            a.takeback_by = _SERVED.get()  # the process that retries it
            a.claims.setdefault(*asked)  # if the take-back is lost, its record holds this owner
            a.certain = False
            if a.takeback_by is None or not a.takeback_by.alive:  # it died as the call returned
                limit = "take-back lost in a crash"
        if cut:
            a.certain = False
        self._end(a, a.expect, limit, asked=asked)

    async def _unregister(self, a: Actor, owner: tuple = SERVE) -> None:
        if owner != SERVE:
            return await self._unregister_owner(a, owner)
        self._start(a, None)
        _CALL.set(("unregister", a.actor_id))
        ok, result, _ = await self._call(lambda core: core.unregister(a.actor_id))
        a.last = f"unregister {'returned' if ok else 'raised'} at {self.now:.3f}s"
        self.note(f"unregister {a.label}: {result if ok else type(result).__name__}")
        if ok:
            a.takeback_pending = False
            if result and a.terminated_at is not None and a.ended_at is None:
                a.exit_exempt = "unregistered during its graceful exit"  # never killed now
        self._end(a, "absent" if ok else "unknown")
        if a.expect == "absent" and not a.calls:
            a.claims = {}  # whatever it was registered to before, it is not now
            a.certain = True

    async def _unregister_owner(self, a: Actor, owner: tuple) -> None:
        """Remove one owner: the last one leaves the actor registered for shutdown."""
        self._start(a, None)
        _CALL.set(("unregister", a.actor_id))
        ok, result, cut = await self._call(lambda core: core.unregister(a.actor_id, owner))
        a.last = f"unregister {a.label} from {owner} {'returned' if ok else 'raised'} at {self.now:.3f}s"
        self.note(f"unregister {a.label} from {owner}: {result if ok else type(result).__name__}")
        alone = not a.overlapped and not cut
        expect = a.expect
        if ok and result and alone:
            a.claims.pop(owner, None)
            if not a.claims:
                a.claims = {SERVE: self.now}
        elif not ok:
            a.certain = False
            expect = "unknown" if a.expect == "present" else a.expect
        elif not alone:
            a.certain = False
        self._end(a, expect)

    async def _gc(self) -> None:
        _CALL.set(("gc", ""))
        ok, result, _ = await self._call(lambda core: core.gc())
        self.note(f"gc: {[(r['actor_id'][:6], r.get('outcome')) for r in result] if ok else type(result).__name__}")

    # --- events -----------------------------------------------------------------------

    def _spawn_call(self, coro: Any) -> None:
        self.calls.append(asyncio.ensure_future(coro))

    def _new_actor(self, i: int, kind: str, name: str, handle_name: str, known_in: float, flag: str,
                   record_kind: str = rec.KIND_ACTOR, hook: float = 0.0) -> Actor:
        pg = record_kind == rec.KIND_PLACEMENT_GROUP
        a = Actor(i, pg_id(i) if pg else actor_id(i), kind, name, handle_name, self.now + known_in,
                  record_kind=record_kind, hook=hook)
        if hook:  # its hook runs until it returns (``_hook_returns``) or its process is killed
            self.w.killer.hanging.add(a.actor_id)
        ns = "serve" if kind == "system" else "ns"
        self.w.table.add(a.actor_id, name, ns, known_in, kind=record_kind)
        if pg and kind == "system" and not name:  # Serve's own, told by its creator
            self.w.table.actors[a.actor_id] = dataclasses.replace(self.w.table.actors[a.actor_id],
                                                                  creator=CONTROLLER_ID)
        if kind == "gone":
            del self.w.table.actors[a.actor_id]  # long gone: the table does not know it
        if flag == "undying":
            self.w.killer.undying.add(a.actor_id)
        elif flag == "unreachable":
            self.w.killer.unreachable.add(a.actor_id)
        self.actors[i] = a
        self.by_id[a.actor_id] = a
        return a

    def _registration(self, a: Actor, how: str, scope: str, app: str, deployment: str,
                      grace: float = 0.0) -> Registration:
        ns = "serve" if a.kind == "system" else "ns"
        if how == "upstream":
            scope, app, deployment = SERVE
        if a.is_pg:  # serve_cleanup.register only: serve-wide where the schedule says upstream
            reg = Registration(
                actor_id=a.actor_id, name=a.handle_name, namespace="", handle=b"",
                scope=scope, app=app, deployment=deployment, kind=rec.KIND_PLACEMENT_GROUP,
            )
        else:
            reg = Registration(
                actor_id=a.actor_id, name=a.handle_name, namespace=ns if a.handle_name else "",
                handle=handle_of(a.actor_id), scope=scope, app=app, deployment=deployment,
                ensure_only=how == "upstream", check_actor=how != "upstream",
                grace_s=0.0 if how == "upstream" else grace,
            )
            a.max_grace = max(a.max_grace, reg.grace_s)
        if a.actor_id in self.w.killer.undying or a.actor_id in self.w.killer.unreachable:
            self.stuck_registered = True
        return reg

    def _apply(self, ev: Event) -> None:
        op, args = ev.op, ev.args
        w = self.w
        if op == "actor":
            self._new_actor(*args)
        elif op == "register":
            a = self.actors.get(args[0])
            if a is not None:
                self._spawn_call(self._register(a, self._registration(a, *args[1:])))
        elif op == "burst":
            first, n, upstream, pgs = args
            for i in range(first, first + n):
                a = self._new_actor(i, "plain", "", "", 0.0, "",
                                    rec.KIND_PLACEMENT_GROUP if i in pgs else rec.KIND_ACTOR)
                self._spawn_call(self._register(a, self._registration(a, "upstream" if upstream else "api", *SERVE)))
            self.count("bursts")
        elif op == "unregister":
            a = self.actors.get(args[0])
            if a is not None:
                self._spawn_call(self._unregister(a, tuple(args[1:]) or SERVE))
        elif op == "die":
            a = self.actors.get(args[0])
            if a is not None and a.died_at is None and a.kind != "gone":
                w.table.die(a.actor_id)
                a.died_at, a.died_on_its_own = self.now, True
                if a.kill_sent_at is not None and self.now - a.kill_sent_at <= self.p.config.confirm_death_s:
                    self.race_kills += 1  # a kill that did not take, then this death: the core sees a kill
                self.note(f"{a.label} dies on its own")
        elif op == "delete_app":
            self.serve.delete_app(args[0])
            self.deleted_at.setdefault(args[0], []).append(self.now)
            self.note(f"app {args[0]} deleted")
        elif op == "deploy":
            self.serve.deploy(args[0], *APPS[args[0]])
            self.note(f"app {args[0]} deployed")
        elif op == "gc":
            self._spawn_call(self._gc())
        elif op == "fail" and self.faults_on:
            what, n = args
            if what == "lookups":
                w.table.fail_lookups += n
            else:
                setattr(w.store, f"fail_{what}", getattr(w.store, f"fail_{what}") + n)
            self.note(f"the next {n} {what} fail")
        elif op == "arm" and self.faults_on:
            w.crash_at.add(args[0])
            self.note(f"crash point {args[0]} armed")
        elif op == "crash" and self.faults_on:
            p = self._ready_process()
            if p is not None and not self.serve_down:
                self.note(f"controller process {p.number} is killed")
                p.die()
        elif op == "plant":
            self.plant_queue.append(args)  # written while no controller runs (see _plant)
        elif op == "end_job":
            w.jobs.running.discard(args[0])
            self.note(f"job {args[0]} ends")
        elif op == "shutdown" and self.shutdown_at is None:
            self.shutdown_at = self.now
            self.note("serve.shutdown(): Serve shuts down")
            self.count("shutdowns")

    def _plant(self, kind: str, near: int, k: int) -> None:
        """An entry under the record prefix that is not a record, in a bucket that holds
        records (so that bulk deletes must leave it). Written while no controller process
        runs (before the first start, in a restart gap: an older version, a crash, a
        person): a bulk delete holds back only the controller's own writes, so an entry
        written by someone else while it runs is outside I4."""
        bucket = actor_id(near)[:2]
        other = bucket + f"f{k:029x}"  # an id no actor of the simulation has
        if kind == "non_utf8":
            key: Any = rec.KEY_PREFIX.encode() + bucket.encode() + b"\xff\xfe" + str(k).encode()
            value = b"\x00"
        elif kind == "garbage":
            key, value = rec.KEY_PREFIX + bucket + f"junk{k}", b"\xc1 not msgpack"
        elif kind == "future":
            key = rec.record_key(other)
            value = msgpack.packb({"v": 99, "actor_id": other}, use_bin_type=True)
        else:  # a valid record under another actor's key
            key = rec.record_key(other)
            value = rec.encode(Record(actor_id=actor_id(near), name="", namespace="", handle=b"x",
                                      registered_at=EPOCH))
        raw = key if isinstance(key, bytes) else key.encode()
        if self.w.store._find(key) is not None:
            return
        self.w.store.data[key] = value
        self.planted[raw] = value
        self.note(f"planted {kind} entry {raw!r}")

    # --- observers (hooks of the fakes) -----------------------------------------------

    def _id_of(self, key: bytes) -> Optional[str]:
        prefix = rec.KEY_PREFIX.encode()
        if not key.startswith(prefix):
            return None
        try:
            return key[len(prefix):].split(b"/")[0].decode()
        except UnicodeDecodeError:
            return None

    def _record(self, actor_id: str) -> Optional[Record]:
        """The readable record the KV holds for ``actor_id`` now (its keys resolved as a
        restarted controller would): as read at the last change of one of its keys (every
        write and delete of a record key goes through ``_on_change``; planted entries
        are under ids no actor has)."""
        return self.kv_records.get(actor_id)

    def _check_written(self, a: Actor) -> None:
        """I1, at a write of a key of ``a``: each of its keys, and each value, has the kind
        it was registered with (else the reaper reads the wrong table, and its kill or
        removal reaches nothing) and the handle its registration gave (no kill can reach
        an anonymous actor without it)."""
        for key in self.w.store.keys_of(a.actor_id):
            entry = read_entry(key, self.w.store.data[self.w.store._find(key)])
            if not isinstance(entry, Record):
                continue
            if not rec.is_v1_key(key) and rec.parse_key(key).kind != a.record_kind:
                self.fail("I1", f"a key of {a.label} was written with kind {rec.parse_key(key).kind!r}: "
                                f"{key!r}")
            elif entry.kind != a.record_kind:
                self.fail("I1", f"a value of {a.label} was written with kind {entry.kind!r}")
            elif entry.handle != a.handle:
                self.fail("I1", f"a key of {a.label} was written without the handle its registration "
                                "gave: no kill can reach an anonymous actor")
            else:
                continue
            return

    def _check_owners(self, a: "Actor", record: Record) -> None:
        """The owner set the KV holds is the one the actor's calls left (or, while a
        call is in flight, one they may leave)."""

    def _label(self, actor_id: str) -> str:
        a = self.by_id.get(actor_id)
        return a.label if a is not None else actor_id

    def _on_change(self, op: str, key: bytes) -> None:
        if key in self.planted:
            self.fail("I4", f"a set-aside entry was {op}d: {key!r}")
            return
        if key.startswith(DEADLINE_PREFIX):
            self._on_deadline(op, key[len(DEADLINE_PREFIX):].decode())
            return
        actor_id = self._id_of(key)
        a = self.by_id.get(actor_id) if actor_id else None
        record = self.w.store.record_of(actor_id) if actor_id else None
        if actor_id is not None:
            if record is not None:
                self.kv_records[actor_id] = record
            else:
                self.kv_records.pop(actor_id, None)
            before = self.kv_owners.get(actor_id, ())
            if record is not None and record.owners:
                self.kv_owners[actor_id] = record.owners
            else:
                self.kv_owners.pop(actor_id, None)
            for owner in set(before) - set(self.kv_owners.get(actor_id, ())):
                if owner[0] == rec.SCOPE_JOB:
                    self.job_left_at[owner[1]] = self.now
        if op == "put":
            if a is not None:
                a.kill_counted = False
            if self.closed_at is not None:
                self.fail("I6", f"a record was written after shutdown finished (closed): {self._label(actor_id)}")
            if actor_id not in self.kv or record is None:
                self.kv[actor_id] = self.now
            if a is not None:
                self._check_written(a)
        elif record is None:
            self.kv.pop(actor_id, None)
            if (a is not None and a.expect == "present" and not a.calls and a.kind != "system"
                    and not a.limit and self.w.table.alive(a.actor_id)):  # I1
                self.fail("I1", f"the record of {a.label} was deleted while its actor lives; its "
                                "registration returned and it was not unregistered")
            elif (a is not None and a.terminated_at is not None and a.ended_at is None
                    and a.exit_exempt is None):  # I1, for a graceful exit
                if _CALL.get() == ("unregister", a.actor_id):
                    a.exit_exempt = "unregistered during its graceful exit"
                elif LENIENT_TAKE_BACK_OF_AN_EXIT and (_CALL.get() == ("register", a.actor_id)
                                                       or self._retracting(a.actor_id)):
                    a.exit_exempt = "its record taken back by a refused registration (known core bug)"
                    self.count("exits_taken_back")
                    self.note(f"{a.label}: {a.exit_exempt}")
                else:
                    self.fail("I1", f"the record of {a.label} was deleted while its graceful exit's process "
                                    f"still runs its hook (deadline {a.exit_deadline:.3f}s); it was not "
                                    "unregistered")
        if a is not None and record is not None and not a.calls and not a.limit:
            self._check_owners(a, record)
        if a is not None:
            self.writes += 1
            a.key_changed_seq = self.writes
            # The take-back's retry landed (or another write did); a retry deleting an
            # actor's keys one by one has landed once its last delete has.
            p = self._ready_process()
            if not (op == "delete" and record is not None and p is not None
                    and actor_id in p.core.registrar.retract):
                a.takeback_pending = False

    def _retracting(self, actor_id: str) -> bool:
        """The controller process running now is retrying a failed take-back of the actor."""
        p = _PROCESS.get()
        return p is not None and p.core is not None and actor_id in p.core.registrar.retract

    @property
    def _take_back_failing(self) -> bool:
        """A take-back is being retried and failing: during the shutdown, a write of the key
        of an actor that has no record failed (a take-back that is never retried is not)."""
        return any(a.key_failed_at >= (self.shutdown_at or math.inf) and a.actor_id not in self.kv
                   for a in self.actors.values())

    def _on_store_failure(self, op: str, key: bytes) -> None:
        self.last_store_failure = self.now
        self.calm_since = max(self.calm_since, self.now)
        self.count(f"failed_{op}s")
        actor_id = self._id_of(key)
        a = self.by_id.get(actor_id) if actor_id else None
        if a is not None and op in ("put", "delete"):
            self.writes += 1
            a.key_failed_at, a.key_failed_seq = self.now, self.writes

    def _on_table_failure(self, op: str) -> None:
        self.calm_since = max(self.calm_since, self.now)
        self.count("failed_table_reads")

    def _on_kill_attempt(self, record: Record) -> None:
        """I3, at the moment of every kill (and every graceful exit asked for, every process
        killed past its deadline)."""
        a = self.by_id.get(record.actor_id)
        p = self.w.process
        self.count("kills")
        if a is not None:
            a.kill_tried_at = self.now
        if a is None:
            self.fail("I3", f"killed {record.actor_id}, which no caller ever registered")
        elif record.kind != a.record_kind:
            self.fail("I3", f"sent {a.label} the kill of a {rec.KIND_NAMES.get(record.kind, record.kind)}; "
                            f"it is a {rec.KIND_NAMES[a.record_kind]}")
        elif a.kind == "system":
            self.fail("I3", f"killed {a.label}, one of Serve's own actors")
        elif a.actor_id not in self.kv:
            self.fail("I3", f"killed {a.label}, which has no record in the KV")
        elif a.expect == "absent" and not a.calls and not a.takeback_pending and not a.limit:
            self.fail("I3", f"killed {a.label}, which is not registered (last call: {a.last})")
        elif (self.shutdown_at is None and a.certain and not a.calls and not a.takeback_pending
                and any(not self._owner_gone(o, t) for o, t in a.claims.items())):
            self.fail("I3", f"killed {a.label} while an owner of it lives ({sorted(a.claims)}) and Serve runs: "
                            "an actor dies with its last owner")
        elif self.shutdown_at is None and not any(self._owner_gone(o, t) for o, t in [*a.claims.items(), *a.asked]):
            self.fail("I3", f"killed {a.label} while its owner lives ({sorted(a.claims)}, asked for "
                            f"{sorted(o for o, _ in a.asked)}) and Serve runs")
        elif (p is not None and not self._read_alive(p, a.actor_id, record.kind)
              and self.w.store._find(rec.deadline_key(a.actor_id)) is None):  # (not an exit's forced end)
            self.fail("died_on_its_own", f"killed {a.label}, which the pass's own read of the actor "
                                         "table did not find alive")
        else:
            self.note(f"kill {a.label}")

    def _read_alive(self, p: Process, actor_id: str, kind: str) -> bool:
        """The read that decided this kill (the pass's bulk read of the kind's table, in
        the same task, or a lookup by id after it) found the actor alive."""
        read = p.live_read.get(asyncio.current_task(), {}).get(kind)
        if read is None:
            return True  # no bulk read in this task: nothing to hold the kill against
        at, alive = read
        return actor_id in alive or p.found_alive.get(actor_id, -1.0) >= at

    def _on_kill(self, record: Record, was_alive: bool) -> None:
        a = self.by_id[record.actor_id]
        a.kill_sent_at = self.now
        if a.terminated_at is not None:
            return  # an exit's forced end: its death was its exit's (``_on_terminate``)
        if was_alive and not self.w.table.alive(a.actor_id):
            a.died_at = self.now
            self.kill_deaths += 1
        elif not was_alive:
            self.race_kills += 1  # it died between the core's read of the table and the kill

    def _owner_gone(self, owner: tuple[str, str, str], since: float) -> bool:
        scope, app, deployment = owner
        if scope == "serve":
            return self.shutdown_at is not None
        if scope == rec.SCOPE_JOB:  # a job that ended never runs again
            return app not in self.w.jobs.running
        alive = (app, deployment) in self.serve.deployments if deployment else any(
            x == app for x, _ in self.serve.deployments)
        return not alive or any(t >= since for t in self.deleted_at.get(app, []))

    def _gone_now(self, owner: tuple[str, str, str]) -> bool:
        """Whether Serve (or the job table) no longer has ``owner``, now."""
        scope, app, deployment = owner
        if scope == rec.SCOPE_JOB:
            return app not in self.w.jobs.running
        if scope == rec.SCOPE_APP:
            return not any(x == app for x, _ in self.serve.deployments)
        if scope == rec.SCOPE_DEPLOYMENT:
            return (app, deployment) not in self.serve.deployments
        return self.shutdown_at is not None

    # --- graceful exits and job owners (observers) -------------------------------------

    def _on_deadline(self, op: str, actor_id: str) -> None:
        """A graceful exit's deadline key written or deleted: stored only for a registered
        actor, never later than its largest grace, and never stored again (a restarted
        controller honours it)."""
        a = self.by_id.get(actor_id)
        if a is None:
            self.fail("exits", f"a deadline was stored for {actor_id}, which no caller registered")
            return
        if op != "put":
            a.deadline_stored = False
            return
        value = self.w.store.data[self.w.store._find(rec.deadline_key(actor_id))]
        deadline = float(value.decode().split(" ")[0]) - EPOCH
        p = _PROCESS.get()
        if (a.deadline_stored and a.exit_deadline is not None and p is not None and p.number == a.deadline_by
                and deadline - a.exit_deadline <= 0.5):
            # Two passes of one process (a gc call's and the owner pass, say) asked for the
            # exit at once: both stored a deadline (the later one stands, a moment later).
            self.count("deadlines_stored_twice")
            return
        if a.deadline_stored:
            self.fail("exits", f"the deadline of {a.label}'s graceful exit was stored again: "
                               f"{a.exit_deadline:.3f}s, then {deadline:.3f}s")
        elif deadline - self.now > a.max_grace + 1e-6:
            self.fail("exits", f"the deadline of {a.label}'s graceful exit is {deadline - self.now:.3f}s "
                               f"away; its largest grace is {a.max_grace:g}s")
        elif a.actor_id not in self.kv:
            self.fail("exits", f"a deadline was stored for {a.label}, which has no record")
        a.deadline_stored = True
        a.exit_deadline = deadline
        a.deadline_by = p.number if p is not None else 0
        self.note(f"deadline of {a.label}'s exit stored: {deadline:.3f}s")

    def _on_terminate(self, record: Record, was_alive: bool) -> None:
        """A graceful exit asked for (``check``, I3, ran before): only with its deadline
        stored, before that deadline. The table says DEAD at once; the process runs its
        hook (``Actor.hook``)."""
        a = self.by_id[record.actor_id]
        if not a.deadline_stored or a.exit_deadline is None:
            self.fail("exits", f"{a.label} was asked to exit gracefully with no deadline stored")
            return
        if self.now >= a.exit_deadline:
            self.fail("exits", f"{a.label} was asked to exit gracefully at {self.now:.3f}s, past its "
                               f"deadline {a.exit_deadline:.3f}s")
            return
        self.count("exits_asked")
        a.kill_sent_at = self.now
        if a.exit_sent_at is None:
            a.exit_sent_at = self.now
        if was_alive and not self.w.table.alive(a.actor_id):
            a.died_at = a.terminated_at = self.now
            a.exit_process = self.w.process.number if self.w.process is not None else 0
            self.kill_deaths += 1
            if a.actor_id not in self.w.killer.in_hook:
                a.ended_at, a.ended_by = self.now, "hook"
            elif math.isfinite(a.hook):
                self.loop.call_later(a.hook, self._hook_returns, a)
            self.note(f"{a.label} exits gracefully (hook {a.hook:g}s, deadline {a.exit_deadline:.3f}s)")
        elif not was_alive:
            self.race_kills += 1  # it died between the core's read of the table and the exit

    def _hook_returns(self, a: Actor) -> None:
        if self.w.killer.end_hook(a.actor_id):
            a.ended_at, a.ended_by = self.now, "hook"
            self.count("hooks_returned")
            self.note(f"{a.label}'s hook returns: its process ends")

    def _on_kill_process(self, record: Record, where: str) -> None:
        """A graceful exit forced: I3 (as a kill), never before its deadline, at its own
        process."""
        self._on_kill_attempt(record)
        a = self.by_id.get(record.actor_id)
        if a is None or self.failure:
            return
        if a.exit_deadline is None or self.now < a.exit_deadline - 1e-6:
            self.fail("exits", f"{a.label}'s process was killed at {self.now:.3f}s, before its graceful "
                               f"exit's deadline {a.exit_deadline}")
        elif where != f"proc-{a.actor_id}":
            self.fail("exits", f"{a.label}'s process was killed at {where!r}, not at its own")
        elif a.actor_id in self.w.killer.in_hook:
            a.ended_at, a.ended_by, a.forced_in = self.now, "force", asyncio.current_task()
            self.count("exits_forced")
            self.note(f"{a.label}'s hook is past its deadline: its process is killed")

    def _check_hows(self, p: Process, killed: list[str], hows: list[str]) -> None:
        """The metrics' ``how`` of each kill counted: graceful for an actor whose process
        ended (its hook returned) before its deadline, forced for one killed at once or
        whose process was killed. (Either, for an exit another controller asked for, one
        whose hook returned past its deadline, or one asked of an actor dead already.)"""
        if len(killed) != len(hows):
            self.fail("how", f"{len(hows)} kill(s) counted as the records of {len(killed)} killed actor(s) "
                             "were dropped")
            return
        for actor_id, how in zip(killed, hows):
            a = self.by_id.get(actor_id)
            if a is None:
                continue
            if a.kill_counted:
                if not LENIENT_DOUBLE_DROP:
                    self.fail("how", f"the kill of {a.label} was counted again ({how}): two passes dropped its record")
                    return
                self.count("kills_counted_twice")
                self.race_kills += 1  # (the core's count has it twice: died_on_its_own)
                continue
            a.kill_counted = True
            if a.terminated_at is None and a.exit_sent_at is None and a.exit_deadline is not None:
                # Never asked to exit (unreachable, or a crash between its deadline's put and
                # the ask), then dead on its own or killed at once (past its deadline): its
                # stored deadline made it an exit under way for a later pass.
                if not LENIENT_HOW_ACROSS_PASSES:
                    expected = "none: it died on its own" if a.died_on_its_own else "forced"
                else:
                    expected = "either"
                    if a.died_on_its_own:
                        self.race_kills += 1  # (counted as a kill, it was none of ours: died_on_its_own)
            elif a.terminated_at is None:
                expected = "either" if a.exit_sent_at is not None else "forced"
            elif a.exit_process != p.number or a.ended_at is None:
                expected = "either"
            elif a.ended_by == "force":
                expected = ("either" if LENIENT_HOW_ACROSS_PASSES and a.forced_in is not asyncio.current_task()
                            else "forced")
            else:
                expected = "graceful" if a.ended_at < (a.exit_deadline or math.inf) else "either"
            self.count(f"killed_{how}")
            if expected != "either" and how != expected:
                self.fail("how", f"the kill of {a.label} was counted {how}; it was {expected} (exit asked at "
                                 f"{a.exit_sent_at}, deadline {a.exit_deadline}, process ended at {a.ended_at} "
                                 f"by its {a.ended_by or '?'})")
                return

    def _on_job_read(self, op: str, ids: list[str]) -> None:
        """A read of the job table: a registration's check of its job, or the reconcile
        loop's read of which owning jobs ended, which comes only while a job owns a record
        (and names only such jobs), at most once a liveness interval per controller
        process (a gc call's read, forced, excepted)."""
        if op == "alive":
            self.job_reads["alive"] += 1
            return
        in_gc = _CALL.get()[0] == "gc"  # its forced read is the caller's, not the loop's
        self.job_reads["gc" if in_gc else "ended"] += 1
        owning = {o[1] for owners in self.kv_owners.values() for o in owners if o[0] == rec.SCOPE_JOB}
        # (memory forgets a deleted key once the delete's answer is back: a round trip later)
        owning |= {j for j, t in self.job_left_at.items() if self.now - t <= 2 * self.p.latency + 1e-9}
        if not ids or not set(ids) <= owning:
            self.fail("jobs", f"the job table was read for jobs {sorted(ids)}; the jobs that own records: "
                              f"{sorted(owning)}")
            return
        p = _PROCESS.get()
        if p is None:
            return
        last = self.job_read_at.get(p)
        interval = self.p.config.liveness_interval_s
        if not in_gc and last is not None and self.now - last < interval - 1e-6:
            self.fail("jobs", f"controller process {p.number} read the job table at {last:.3f}s and again at "
                              f"{self.now:.3f}s: at most once every {interval:g}s")
        self.job_read_at[p] = self.now

    # --- checks -----------------------------------------------------------------------

    def _gone_since(self, a: Actor) -> Optional[float]:
        """Since when the table has said ``a`` is gone (for the sweep), or None."""
        written = self.kv.get(a.actor_id)
        if written is None:
            return None
        if a.kind == "system":
            return written
        if a.kind == "gone":
            record = self._record(a.actor_id)
            if record is None:
                return None
            return record.registered_at - EPOCH + self.p.config.unknown_grace_s
        if a.terminated_at is not None and a.deadline_stored:
            # An exit under way: its pass drops the record once its process has ended (the
            # sweep leaves it); after a crash, the next pass over it.
            return max(a.ended_at, a.known_at) if a.ended_at is not None else None
        if a.died_at is not None:
            return max(a.died_at, a.known_at)
        return None

    def _gone_in_kv(self) -> list[Actor]:
        return [self.by_id[x] for x in self.kv if x in self.by_id and self._gone_since(self.by_id[x]) is not None]

    async def _observe(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_S)
            if self.failure:
                return
            self._sample()

    def _sample(self) -> None:
        p = self._ready_process()
        core = p.core if p is not None else None
        info = self.info.get(p) if p is not None else None
        if core is not None and info is not None:
            state = core.state
            if state in LOADED and info.loaded_at is None:
                info.loaded_at = self.now
            if info.loaded_at is not None and not info.set_aside_checked:  # I4: reported
                info.set_aside_checked = True
                shown = {s["key"] for s in core.status()["set_aside"]}
                missing = [k for k in info.planted_before
                           if k.decode("utf-8", "backslashreplace") not in shown and k in self.planted]
                if missing:
                    self.fail("I4", f"controller process {p.number} does not report set-aside entries {missing}")
            if (not self.faults_on and info.loaded_at is None
                    and self.now - max(self.faults_off_at, info.booted_at) > 3 * self.p.config.reconcile_interval_s + 1):
                self.fail("I4", "faults stopped, but the controller has not read its records")
            if (state is State.OPEN and self.serve.state() is ServeState.RUNNING
                    and self.calm_since == math.inf):
                self.calm_since = self.now
        # I2: a failed take-back is retried by the reconcile loop (while a process is OPEN;
        # during a shutdown its passes retry it, and I6 holds the shutdown for it).
        retry_s = 3 * self.p.config.reconcile_interval_s + self.p.config.confirm_death_s + 2.0
        for a in self.actors.values():
            if not a.takeback_pending:
                continue
            if a.calls or core is None or core.state is not State.OPEN or core.locks.busy(a.actor_id):
                a.takeback_window = self.now
            elif (p is a.takeback_by and a.actor_id not in core.registrar.retract
                    and not core.registry.has_stale(a.actor_id)):
                a.takeback_pending = False  # retried: its writes were deletes of keys the put never wrote
            elif self.now - max(a.takeback_window, a.takeback_since, self.last_store_failure) > retry_s:
                self.fail("I2", f"the failed take-back of {a.label}'s refused registration was not retried "
                                f"in {retry_s:g}s (last: {a.last})")
                return
        passes = self._passes_of(p)
        if self.w.killer.in_hook:
            self._sample_exits(p, core, info, passes)
            if self.failure:
                return
        if self.shutdown_at is None and core is not None and core.state is State.OPEN and self.kv_owners:
            self._sample_orphans(core, passes)
            if self.failure:
                return
        # I5: each record of a gone actor is dropped within the bound of its sweepable window,
        # plus the time a bulk drop (a pass's part that grows with the records) held the
        # write gate meanwhile ("plus the time of the pass itself").
        if self.shutdown_at is not None or core is None or core.state is not State.OPEN:
            return
        if core.registry.gate._closed is not None:  # a bulk drop holds the write gate alone
            self.bulk_s += SAMPLE_S
        for a in self._gone_in_kv():
            if (a.calls or not core.reaper.due(a.actor_id) or core.locks.busy(a.actor_id)
                    or (a.deadline_stored and (passes or self._owner_back(a)))):  # an exit's: a pass drops it
                a.i5_window, a.bulk_mark = self.now, self.bulk_s
                continue
            gone = self._gone_since(a)
            start = max(gone, self.kv[a.actor_id], self.calm_since, a.i5_window, a.busy_until)
            if self.now > start + self.bound + (self.bulk_s - a.bulk_mark):
                why = ("dead" if a.kind == "plain" else "unknown to the actor table" if a.kind == "gone"
                       else "one of Serve's own")
                self.fail("I5", f"the record of {a.label} ({why} since {gone:.3f}s, sweepable since "
                                f"{start:.3f}s) is still in the KV after {self.now - start:.2f}s; "
                                f"bound {self.bound:.2f}s")
                return

    def _owner_back(self, a: Actor) -> bool:
        """An exit under way whose record has an owner again while Serve runs (see
        ``LENIENT_EXIT_OWNER_BACK``)."""
        if not (LENIENT_EXIT_OWNER_BACK and self.shutdown_at is None and a.terminated_at is not None
                and a.actor_id in self.kv):
            return False
        back = not all(self._gone_now(o) for o in self.kv_owners.get(a.actor_id, (SERVE,)))
        if back and not a.owner_back:
            self.count("exits_owner_back")
        a.owner_back = back
        return back

    def _sample_exits(self, p: Optional[Process], core: Any, info: Optional[ProcInfo],
                      passes: list[frozenset]) -> None:
        """exits: a graceful exit's process (its hook running) ends by its deadline, as
        first stored, plus ``force_slack``: the pass that asked for it forces it then, or,
        after a crash, the restarted controller's first pass over it (the deadline stands).
        The clock of an exit waits while no controller could force it: none loaded, Serve
        recovering or tearing down, the record backing off, a call of it in flight (after
        one, the next pass forces it), or the passes under way not holding it."""
        for actor_id in sorted(self.w.killer.in_hook):
            a = self.by_id[actor_id]
            if a.exit_exempt is not None:
                continue
            if a.exit_deadline is None:
                self.fail("exits", f"{a.label}'s process runs its graceful exit's hook, and no deadline was stored")
                return
            waiting = [t for q, t, ids in self.waits.values() if q is p and actor_id in ids and t > a.busy_until]
            if (waiting and core is not None and not a.calls and not core.locks.busy(actor_id)
                    and self.now > max(a.exit_deadline, min(waiting)) + self.wait_slack):
                # The pass waiting for it forces it at its deadline (at the next poll).
                self.fail("exits", f"{a.label}'s graceful exit (asked at {a.exit_sent_at:.3f}s, deadline "
                                   f"{a.exit_deadline:.3f}s) still runs its hook at {self.now:.3f}s; a pass has "
                                   f"waited for it since {min(waiting):.3f}s (bound {self.wait_slack:.2f}s)")
                return
            if (self._owner_back(a) or core is None or info is None or core.state not in LOADED
                    or (self.shutdown_at is None and self.serve.state() is not ServeState.RUNNING)
                    or (self.shutdown_at is not None and info.first_step_at is None)
                    or a.calls or not core.reaper.due(actor_id) or core.locks.busy(actor_id)
                    or (passes and (a.busy_until >= (a.terminated_at or 0.0)
                                    or not any(actor_id in ids for ids in passes)))):
                a.exit_window = self.now
                continue
            start = max(a.exit_deadline, a.exit_window)
            if self.now > start + self.force_slack:
                self.fail("exits", f"{a.label}'s graceful exit (asked at {a.exit_sent_at:.3f}s, deadline "
                                   f"{a.exit_deadline:.3f}s) still runs its hook at {self.now:.3f}s; a controller "
                                   f"could force it since {start:.3f}s (bound {self.force_slack:.2f}s)")
                return

    def _orphans_left(self) -> bool:
        """Some actor every owner of whose record is gone has not been killed yet."""
        return any(a.orphan_since is not None and (a.kill_tried_at is None or a.kill_tried_at < a.orphan_since)
                   for a in map(self.by_id.get, self.kv_owners) if a is not None)

    def _sample_orphans(self, core: Any, passes: list[frozenset]) -> None:
        """orphans: an actor every owner of whose record is gone (an app or deployment
        deleted, a job ended) is killed (or asked to exit) within the bound of I5 of the
        moment the core could do it: the record written, no call of it in flight, not
        backing off, the process OPEN and Serve running with no failed request since (the
        job table is read once a liveness interval), the passes under way holding it (the
        owner pass is one at a time)."""
        for actor_id, owners in self.kv_owners.items():
            a = self.by_id.get(actor_id)
            if a is None:
                continue
            if (a.calls or a.limit or a.takeback_pending or a.kind == "system" or not self.w.table.alive(actor_id)
                    or not all(self._gone_now(o) for o in owners)):
                a.orphan_since = None
                continue
            if a.orphan_since is None:
                a.orphan_since = a.orphan_window = self.now
            if a.kill_tried_at is not None and a.kill_tried_at >= a.orphan_since:
                continue
            if (not core.reaper.due(actor_id) or core.locks.busy(actor_id)
                    or (passes and not any(actor_id in ids for ids in passes))):
                a.orphan_window = self.now
                continue
            start = max(a.orphan_since, a.orphan_window, self.calm_since, a.busy_until, self.kv.get(actor_id, 0.0))
            if self.now > start + self.bound:
                self.fail("orphans", f"every owner of {a.label} is gone ({sorted(owners)}) since "
                                     f"{a.orphan_since:.3f}s, and it was not killed in {self.now - start:.2f}s; "
                                     f"bound {self.bound:.2f}s")
                return

    def _check(self) -> None:
        """I1, I2, I4 and the counts at this moment."""
        if self.failure:
            return
        p = self._ready_process()
        if p is not None and p.core.state in LOADED:
            self._check_counts(p.core)
        store = self.w.store
        for key, value in self.planted.items():  # I4: untouched
            found = store._find(key)
            if found is None or store.data[found] != value:
                self.fail("I4", f"set-aside entry {key!r} was changed or deleted")
                return
        for a in self.actors.values():
            if a.calls or a.limit:
                continue
            if (a.expect == "present" and a.kind != "system" and a.actor_id not in self.kv
                    and self.w.table.alive(a.actor_id)):
                self.fail("I1", f"{a.label} is registered (its registration returned, it was not "
                                "unregistered) and alive, but has no record in the KV")
                return
            if (a.expect == "present" and a.certain and not a.takeback_pending and a.actor_id in self.kv
                    and not a.died_at and a.kind == "plain"):  # I1/I2 over (actor, owner) pairs
                record = self._record(a.actor_id)
                held = set(record.owners or (SERVE,)) if record is not None else set()
                if record is not None and held != set(a.claims):
                    missing, extra = set(a.claims) - held, held - set(a.claims)
                    self.fail("I2" if extra else "I1",
                              f"the KV holds {a.label} with owners {sorted(held)}, its calls left "
                              f"{sorted(a.claims)} (last: {a.last})")
                    return
            if a.expect == "absent" and a.actor_id in self.kv and not a.takeback_pending:
                self.fail("I2", f"{a.label} has a record in the KV, but its calls left it unregistered "
                                f"(last: {a.last})")
                return

    def _check_counts(self, core: Any) -> None:
        """What the controller publishes per kind (metrics, ``status``) is what its records
        say: ``counts_by_kind`` and ``counts_by_kind_and_scope`` recounted from them."""
        registry = core.registry
        by_kind = dict.fromkeys(rec.KINDS, 0)
        by_kind_scope = {(k, s): 0 for k in rec.KINDS for s in rec.SCOPES}
        for r in registry.records():
            by_kind[r.kind] += 1
            for scope in [o[0] for o in r.owners] or [rec.SCOPE_SERVE]:
                by_kind_scope[(r.kind, scope)] += 1
        said = registry.counts_by_kind()
        if said != by_kind:
            self.fail("counts", f"counts_by_kind says {said}; the records are {by_kind}")
            return
        said_scopes = registry.counts_by_kind_and_scope()
        if said_scopes != by_kind_scope:
            self.fail("counts", f"counts_by_kind_and_scope says {said_scopes}; the records are {by_kind_scope}")
            return
        wrong = [r.actor_id for r in registry.records() if registry.kind_of(r.actor_id) != r.kind]
        if wrong:
            self.fail("counts", f"kind_of disagrees with the records of {[self._label(x) for x in wrong[:5]]}")

    def _final_checks(self) -> None:
        records = self.w.store.records()
        if records:
            self.fail("I6", f"records left after Serve shut down: {[self._label(a) for a in records]}")
            return
        for a in self.actors.values():
            if a.expect == "present" and a.kind != "system" and not a.limit and self.w.table.alive(a.actor_id):
                self.fail("I1", f"{a.label} outlived serve.shutdown() though its registration returned")
                return
        left = [self.by_id[x].label for x in sorted(self.w.killer.in_hook) if self.by_id[x].exit_exempt is None]
        if left:  # exits
            self.fail("exits", f"graceful exits whose processes still run their hooks after Serve shut down: {left}")
            return
        # jobs: the reads of the reconcile loops (the table's count, less the registrations'
        # checks and gc calls' reads), at most one a liveness interval per process.
        loops = self.w.jobs.reads - self.job_reads["alive"] - self.job_reads["gc"]
        if loops > len(self.info) + self.now / self.p.config.liveness_interval_s:
            self.fail("jobs", f"the reconcile loops read the job table {loops} times in {self.now:.1f}s")
        if self.job_reads["alive"] > self.job_register_attempts:
            self.fail("jobs", f"{self.job_reads['alive']} reads of the job table by registrations; "
                              f"{self.job_register_attempts} registration(s) named a job")
        for what, n in self.job_reads.items():
            self.count(f"job_reads_{what}", n)
        if self.metrics.killed_n > self.kill_deaths + self.race_kills:  # died_on_its_own
            self.fail("died_on_its_own", f"the core counted {self.metrics.killed_n} kill(s); its kills "
                                         f"killed {self.kill_deaths} actor(s) (and {self.race_kills} raced a death)")
        self.count("died_on_its_own", sum(a.died_on_its_own for a in self.actors.values()))
        self.count("prefix_deletes", len(self.w.store.prefix_deletes))


def run(seed: int, events: Optional[list[Event]] = None) -> tuple[Sim, Optional[Failure]]:
    """Run the seed's schedule, or ``events`` (a part of it) with the seed's profile."""
    profile, schedule_events = schedule(seed)
    sim = Sim(seed, profile, schedule_events if events is None else events)
    return sim, sim.run()


def shrink(seed: int, failure: Failure, budget: int = 400) -> tuple[list[Event], Failure]:
    """The shortest part of the seed's schedule found that still fails the same way:
    drops chunks of events, then single events, while the run still fails with the same
    label (at most ``budget`` runs)."""
    _, events = schedule(seed)
    best, best_failure, runs = list(events), failure, 0
    size = max(1, len(best) // 2)
    while size >= 1 and runs < budget:
        i, progress = 0, False
        while i < len(best) and runs < budget:
            candidate = best[:i] + best[i + size:]
            _, f = run(seed, candidate)
            runs += 1
            if f is not None and f.label == failure.label:
                best, best_failure, progress = candidate, f, True
            else:
                i += size
        if not progress:
            size //= 2
    return best, best_failure
