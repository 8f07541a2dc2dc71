"""The core's seeded simulation (tests/no_ray/simulation.py says what it runs and checks).

``--sim-seeds`` seeds (300 by default; a long run is ``--sim-seeds 100000``). A failing
seed prints its profile, the invariant it broke, a minimal trace (the shortest part of its
schedule found that still breaks the same invariant, and what happened when it ran) and
replays exactly with ``pytest tests/no_ray/test_simulation.py -k 'test_simulation[<seed>]'``.
No Ray: this runs where Ray is not installed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import simulation
from fakes import Crash, Gate, LoopClock, World, run_in_virtual_time
from serve_cleanup.core import Config, admission, engine, lifecycle, locks, reaper, registration, registry
from serve_cleanup.core import records as rec
from serve_cleanup.core.lifecycle import Event, State
from serve_cleanup.core.ports import ServeState
from serve_cleanup.errors import DeadActorError
from simulation import Failure, run, schedule, shrink


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" in metafunc.fixturenames:
        metafunc.parametrize("seed", range(metafunc.config.getoption("--sim-seeds")))


TRACE_TAIL = 60  # lines of the minimal run's log shown


@pytest.mark.timeout(600)
def test_simulation(seed: int) -> None:
    sim, failure = run(seed)
    if failure is not None:
        pytest.fail(report(seed, failure), pytrace=False)


def report(seed: int, failure: Failure) -> str:
    """The seed, what broke, a minimal schedule that still breaks it, and what happened."""
    profile, events = schedule(seed)
    minimal, minimal_failure = shrink(seed, failure)
    log = minimal_failure.log
    return (
        f"seed {seed}: {failure}\n"
        f"profile: {profile}\n"
        f"replay: pytest tests/no_ray/test_simulation.py -k 'test_simulation[{seed}]'\n\n"
        f"minimal schedule ({len(minimal)} of {len(events)} events), which fails with "
        f"{minimal_failure}:\n" + "\n".join(str(e) for e in minimal) + "\n\n"
        f"what happened in it (last {min(TRACE_TAIL, len(log))} of {len(log)} lines):\n"
        + "\n".join(log[-TRACE_TAIL:])
    )


# --- the simulation's own machinery ---------------------------------------------------------


def test_a_schedule_is_a_function_of_its_seed_and_a_run_replays_exactly():
    assert schedule(7) == schedule(7) and schedule(7) != schedule(8)
    first, second = run(7)[0], run(7)[0]
    assert first._log == second._log and len(first._log) > 50


def test_a_run_is_the_same_whatever_the_interpreters_hash_seed():
    """So that a seed that failed in CI replays here. Seed 12 once ran differently under
    PYTHONHASHSEED 0 and 1 (the core iterated a set of actor ids)."""
    code = (
        "import hashlib, sys; sys.path.insert(0, {here!r}); import simulation as S; "
        "print(hashlib.md5(repr(S.run(12)[0]._log).encode()).hexdigest())"
    ).format(here=str(Path(__file__).parent))
    digests = {
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": hash_seed},
                       capture_output=True, text=True, check=True).stdout
        for hash_seed in ("1", "2", "3")
    }
    assert len(digests) == 1, digests


def test_virtual_time_jumps_to_the_next_timer():
    async def main(loop):
        started = time.monotonic()
        await asyncio.sleep(3600.0)
        return loop.time(), time.monotonic() - started

    virtual, real = run_in_virtual_time(main)
    assert virtual == pytest.approx(3600.0) and real < 1.0


def test_a_crashed_process_sends_none_of_its_pending_kills():
    """Its shutdown pass was reading the actor table when the process died: the read
    never answers, so the kill that would follow is never sent."""
    async def main(loop):
        w = World(clock=LoopClock(loop))
        core = await w.core()
        a = w.actor("n")
        await core.registrar.register(a)
        w.table.gate = gate = Gate()
        w.owners.serve_state = ServeState.SHUTTING_DOWN
        assert core.shutdown_step() is False  # starts a pass; its read of the table waits
        while gate.waiting == 0:
            await asyncio.sleep(0)
        w.process.die()
        w.table.gate = None
        gate.open()
        await asyncio.sleep(10.0)
        assert w.killer.kills == [] and w.table.alive(a.actor_id) and stored(w) == {a.actor_id}

    run_in_virtual_time(main)


def stored(w: World) -> set[str]:
    return set(w.store.records())


# --- every check can fail: a deliberately broken core is caught -------------------------------


def _sweep_drops_a_live_record(m: pytest.MonkeyPatch) -> None:
    classify = reaper.Reaper._classify

    async def broken(self, records, table):
        live, to_drop, unknown, under_way = await classify(self, records, table)
        for r in live[:1]:
            to_drop[r.actor_id] = (r, reaper.Outcome.ALREADY_DEAD)
        return live[1:], to_drop, unknown, under_way

    m.setattr(reaper.Reaper, "_classify", broken)


def _take_back_without_handle(m: pytest.MonkeyPatch) -> None:
    put_pairs = registry.Registry.put_pairs

    async def broken(self, record, **how):
        if len(record.pairs) > 1 or record.latest < self._clock() - 1e-9:  # memory's copy, written back
            record = record.replace(handle=b"")
        await put_pairs(self, record, **how)

    m.setattr(registry.Registry, "put_pairs", broken)


def _first_dead_owner_kills(m: pytest.MonkeyPatch) -> None:
    def broken(self, live_apps, live_deployments, ended_jobs=frozenset()):
        return [r for r in self.records()
                if any(not registry.owner_alive(o, live_apps, live_deployments, ended_jobs) for o in r.owners)]

    m.setattr(registry.Registry, "orphans", broken)


def _serve_scope_moves_an_owned_actor(m: pytest.MonkeyPatch) -> None:
    """0.1.0's rule: the last register wins, so scope serve takes an actor from its owners."""
    m.setattr(admission.Registration, "matches",
              lambda self, r: self.owner in r.owners or (not r.owners and self.scope == "serve"))
    write = registration.Registrar._write

    async def broken(self, reg, previous):
        if previous is not None and reg.scope == "serve":
            previous = previous.replace(pairs=((rec.SERVE_OWNER, previous.latest),))
        return await write(self, reg, previous)

    m.setattr(registration.Registrar, "_write", broken)


def _an_added_owner_replaces_the_set(m: pytest.MonkeyPatch) -> None:
    write = registration.Registrar._write

    async def broken(self, reg, previous):
        if previous is not None and previous.owners:
            previous = previous.replace(pairs=((rec.SERVE_OWNER, previous.latest),))
        return await write(self, reg, previous)

    m.setattr(registration.Registrar, "_write", broken)


def _replaced_keys_stay(m: pytest.MonkeyPatch) -> None:
    async def broken(self, actor_id):
        self._stale.pop(actor_id, None)

    m.setattr(registry.Registry, "delete_stale", broken)


def _fast_path_without_the_lock(m: pytest.MonkeyPatch) -> None:
    """The upstream method's fast path (``Registrar.register_new``) neither holds the
    actor's lock nor makes others wait: an unregister meanwhile finds no record."""
    async def claim(self, key):
        pass

    m.setattr(locks.KeyedLocks, "claim", claim)
    m.setattr(locks.KeyedLocks, "release", lambda self, key: None)


def _no_take_back(m: pytest.MonkeyPatch) -> None:
    async def broken(self, actor_id, previous):
        pass

    m.setattr(registration.Registrar, "_take_back", broken)


def _bulk_drop_deletes_every_bucket(m: pytest.MonkeyPatch) -> None:
    async def broken(self, records, busy):
        async with self.gate.alone():
            doomed = {r.actor_id: r for r in records if self.get(r.actor_id) is r and not busy(r.actor_id)}
            for bucket in {rec.bucket_of(k) for k in await self._store.keys(rec.KEY_PREFIX)}:
                await self._store.delete_prefix(bucket)
            self._forget_all(doomed)
            return set(doomed)

    m.setattr(registry.Registry, "drop_bulk", broken)


def _unreadable_entry_is_fatal(m: pytest.MonkeyPatch) -> None:
    m.setattr(registry, "read_entry", lambda key, value, **how: rec.decode(value, **how))


def _sweep_three_times_slower(m: pytest.MonkeyPatch) -> None:
    sweep = engine.CleanupCore.sweep

    async def broken(self, force=False):
        dropped = await sweep(self, force)
        if self._next_sweep > self._clock.monotonic():
            self._next_sweep = self._clock.monotonic() + 3 * self.config.liveness_interval_s
        return dropped

    m.setattr(engine.CleanupCore, "sweep", broken)


def _closes_with_records_left(m: pytest.MonkeyPatch) -> None:
    step = engine.CleanupCore.shutdown_step

    def broken(self):
        if self.state is State.SHUTTING_DOWN and self._clock.monotonic() % 1 < 0.3:
            self._move(Event.CLEAN)
            return True
        return step(self)

    m.setattr(engine.CleanupCore, "shutdown_step", broken)


def _gives_up_before_the_grace(m: pytest.MonkeyPatch) -> None:
    m.setattr(engine.CleanupCore, "_give_up", lambda self: (self._move(Event.GRACE_OVER), None)[1])
    step = engine.CleanupCore.shutdown_step

    def broken(self):
        if self._stuck_since is not None and self._clock.monotonic() - self._stuck_since > 1.0 \
                and self.state in lifecycle.SHUTTING and (self._pass is None or self._pass.done()):
            self._give_up()
            return True
        return step(self)

    m.setattr(engine.CleanupCore, "shutdown_step", broken)


def _kills_actors_it_read_as_dead(m: pytest.MonkeyPatch) -> None:
    def broken(record, info, now, grace_s):
        return info is None and now - record.registered_at > grace_s

    m.setattr(reaper, "gone", broken)


# --- placement groups (kind "pg"): a quarter to half of the actors of most seeds ----------


def _removed_is_alive(m: pytest.MonkeyPatch) -> None:
    """Only an actor's final state counts: a REMOVED placement group reads as alive."""
    def broken(record, info, now, grace_s):
        if info is not None:
            return info.state == "DEAD"
        return now - record.registered_at > grace_s

    m.setattr(reaper, "gone", broken)


def _placement_groups_read_in_the_actor_table(m: pytest.MonkeyPatch) -> None:
    async def broken(self, records):
        return await self._table.live([r.actor_id for r in records])

    m.setattr(reaper.Reaper, "_live_by_kind", broken)


def _keys_without_their_kind(m: pytest.MonkeyPatch) -> None:
    pair_key = rec.pair_key

    def broken(actor_id, owner, registered_at, name, namespace, kind=rec.KIND_ACTOR):
        return pair_key(actor_id, owner, registered_at, name, namespace)

    m.setattr(rec, "pair_key", broken)


def _values_without_their_kind(m: pytest.MonkeyPatch) -> None:
    encode = rec.encode

    def broken(record, owner=None):
        return encode(record._replace(kind=rec.KIND_ACTOR), owner)

    m.setattr(rec, "encode", broken)


def _handle_read_back_forgets_the_kind(m: pytest.MonkeyPatch) -> None:
    """The reaper's read of the handles (``Registry.full``) rebuilds every record as an
    actor's: a placement group gets an actor's kill."""
    full = registry.Registry.full

    async def broken(self, records):
        return {a: r._replace(kind=rec.KIND_ACTOR) for a, r in (await full(self, records)).items()}

    m.setattr(registry.Registry, "full", broken)


def _load_forgets_the_kind(m: pytest.MonkeyPatch) -> None:
    parse_keys = rec.parse_keys

    def broken(keys, shared=None):
        parsed = parse_keys(keys, shared)
        parsed.kinds = [rec.KIND_ACTOR] * len(parsed.kinds)
        return parsed

    m.setattr(rec, "parse_keys", broken)


def _load_counts_every_record_as_an_actor(m: pytest.MonkeyPatch) -> None:
    """The load's shortcut for a KV of actors only (``Loaded.mixed``) taken for every
    load: the records keep their kind, the counts by kind do not."""
    read_keys = registry.read_keys

    async def broken(store, **how):
        loaded = await read_keys(store, **how)
        loaded.mixed = False
        return loaded

    m.setattr(registry, "read_keys", broken)


def _own_placement_groups_told_by_the_actor_rule(m: pytest.MonkeyPatch) -> None:
    """Serve's own placement groups told as its actors are (name and namespace): one the
    controller created, anonymous, passes for a user's."""
    def broken(serve, kind, name, namespace, creator=""):
        return serve.is_own_actor(name, namespace)

    m.setattr(admission, "is_own", broken)
    m.setattr(reaper, "is_own", broken)


# --- graceful exits and job owners (issue 22): most seeds have some of each ------------------


def _deadline_restarted_after_a_crash(m: pytest.MonkeyPatch) -> None:
    """A restarted controller gives each exit under way a fresh deadline: now + its grace."""
    deadlines = registry.Registry.deadlines

    async def broken(self):
        listing = self._deadlines is None
        found = await deadlines(self)
        if listing and found:
            full = await self.full([self._records[a] for a in found if a in self._records])
            for actor_id, (_, where) in list(found.items()):
                if actor_id in full:
                    found[actor_id] = (self._clock() + full[actor_id].grace_s, where)
        return found

    m.setattr(registry.Registry, "deadlines", broken)


def _exits_under_way_forgotten(m: pytest.MonkeyPatch) -> None:
    """A restarted controller does not list the exits under way: their actors are DEAD in
    the table, so their records are swept while their hooks still run."""
    async def broken(self):
        if self._deadlines is None:
            self._deadlines = {}
        return self._deadlines

    m.setattr(registry.Registry, "deadlines", broken)


def _hanging_exit_never_forced(m: pytest.MonkeyPatch) -> None:
    """Past the deadline, only ``Killer.kill`` (which no longer reaches a process whose
    table entry says DEAD), never ``Killer.kill_process``."""
    async def broken(self, exit, record, reason, outcomes):
        async with self._locks.hold(record.actor_id):
            if self._registry.get(record.actor_id) is not record:
                outcomes[record.actor_id] = reaper.Outcome.SUPERSEDED
                return False
            await self._killer.kill(exit.target)
        exit.forced = True
        return True

    m.setattr(reaper.Reaper, "_force", broken)


def _exits_forced_at_once(m: pytest.MonkeyPatch) -> None:
    """The wait for an exit ignores its deadline: its process is killed at the first poll."""
    confirm = reaper.Reaper._confirm_dead

    async def broken(self, records, exiting, reason, outcomes):
        for e in exiting.values():
            e.deadline = min(e.deadline, self._clock.time())
        return await confirm(self, records, exiting, reason, outcomes)

    m.setattr(reaper.Reaper, "_confirm_dead", broken)


def _sweep_drops_exits_under_way(m: pytest.MonkeyPatch) -> None:
    classify = reaper.Reaper._classify

    async def broken(self, records, table):
        live, to_drop, unknown, under_way = await classify(self, records, table)
        for r in under_way:
            to_drop[r.actor_id] = (r, reaper.Outcome.ALREADY_DEAD)
        return live, to_drop, unknown, []

    m.setattr(reaper.Reaper, "_classify", broken)


def _every_kill_counted_forced(m: pytest.MonkeyPatch) -> None:
    drop_all = reaper.Reaper._drop_all

    async def broken(self, to_drop, reason, outcomes):
        self._how.clear()
        await drop_all(self, to_drop, reason, outcomes)

    m.setattr(reaper.Reaper, "_drop_all", broken)


def _job_owners_never_end(m: pytest.MonkeyPatch) -> None:
    read_jobs = engine.CleanupCore.read_jobs

    async def broken(self, force=False):
        await read_jobs(self, force)
        self._ended_jobs = frozenset()

    m.setattr(engine.CleanupCore, "read_jobs", broken)


def _job_table_read_every_tick(m: pytest.MonkeyPatch) -> None:
    read_jobs = engine.CleanupCore.read_jobs

    async def broken(self, force=False):
        self._next_jobs_read = 0.0
        await read_jobs(self, force)

    m.setattr(engine.CleanupCore, "read_jobs", broken)


def _job_table_read_with_no_job_owner(m: pytest.MonkeyPatch) -> None:
    read_jobs = engine.CleanupCore.read_jobs

    async def broken(self, force=False):
        if not self.registry.owner_jobs() and self._clock.monotonic() >= self._next_jobs_read:
            self._next_jobs_read = self._clock.monotonic() + self.config.liveness_interval_s
            await self._jobs.ended([])
        await read_jobs(self, force)

    m.setattr(engine.CleanupCore, "read_jobs", broken)


def _an_ended_job_kills_what_another_owner_holds(m: pytest.MonkeyPatch) -> None:
    orphans = registry.Registry.orphans

    def broken(self, live_apps, live_deployments, ended_jobs=frozenset()):
        out = {r.actor_id: r for r in orphans(self, live_apps, live_deployments, ended_jobs)}
        for r in self.records():
            if any(o[0] == rec.SCOPE_JOB and o[1] in ended_jobs for o in r.owners):
                out.setdefault(r.actor_id, r)
        return list(out.values())

    m.setattr(registry.Registry, "orphans", broken)


BROKEN_CORES = {  # what is broken: (the check that must catch it, how)
    "the sweep drops a live actor's record": ("I1", _sweep_drops_a_live_record),
    "a take-back writes the record without its handle": ("I1", _take_back_without_handle),
    "an owner's deletion kills an actor another live owner holds": ("I3", _first_dead_owner_kills),
    "scope serve moves an owned actor (0.1.0's last-wins)": ("owners", _serve_scope_moves_an_owned_actor),
    "an added owner replaces the owner set": ("owners", _an_added_owner_replaces_the_set),
    # (a replaced key left over also brings a dead actor's record back at a load: I5; or
    # a record back after the shutdown closed: I6)
    "replaced keys are never deleted": ("I2", _replaced_keys_stay, ("I5", "I6")),
    "a refused registration is not taken back": ("I2", _no_take_back),
    "the upstream fast path holds no lock": ("I2", _fast_path_without_the_lock),
    "every record counts as an orphan": ("I3", lambda m: m.setattr(registry.Registry, "orphans",
                                                                   lambda self, apps, deps, jobs=(): self.records())),
    "Serve's own actors are killed": ("I3", lambda m: m.setattr(reaper.Reaper, "_own", lambda self, r, info: False)),
    "a bulk drop deletes every bucket": ("I4", _bulk_drop_deletes_every_bucket),
    "an unreadable entry is fatal": ("I4", _unreadable_entry_is_fatal),
    "the sweep runs three times less often": ("I5", _sweep_three_times_slower),
    "shutdown closes with records left": ("I6", _closes_with_records_left),
    "shutdown gives up after 1 s": ("I6", _gives_up_before_the_grace),
    # A kill of a dead actor registered Serve-wide, while Serve runs, breaks I3 too.
    "the reaper kills actors its read found dead": ("died_on_its_own", _kills_actors_it_read_as_dead, {"I3"}),
    # Placement groups.
    "the reaper takes a removed placement group for alive": ("I3", _removed_is_alive, {"died_on_its_own"}),
    "the reaper reads placement groups in the actor table": ("I1", _placement_groups_read_in_the_actor_table),
    "keys are written without their kind": ("I1", _keys_without_their_kind),
    "values are written without their kind": ("I1", _values_without_their_kind),
    "a placement group is sent an actor's kill": ("I3", _handle_read_back_forgets_the_kind),
    "the load forgets the kind (a repeat is refused)": ("error", _load_forgets_the_kind),
    "the counts by kind take a load for actors only": ("counts", _load_counts_every_record_as_an_actor),
    # Graceful exits and job owners.
    # (the shutdown, waiting for the hanging actor to die, may give up first: I6)
    "a hanging exit is never forced": ("exits", _hanging_exit_never_forced, {"I6"}),
    "exits are forced at once, before their deadline": ("exits", _exits_forced_at_once),
    "the deadline is restarted after a crash": ("exits", _deadline_restarted_after_a_crash),
    # (its record goes while the hook runs: I1 for a graceful exit, if the sweep gets there first)
    "a restarted controller forgets the exits under way": ("exits", _exits_under_way_forgotten, {"I1"}),
    "the sweep drops the records of exits under way": ("I1", _sweep_drops_exits_under_way, {"exits"}),
    "every kill is counted forced": ("how", _every_kill_counted_forced),
    "job owners never end": ("orphans", _job_owners_never_end),
    "an ended job kills an actor another live owner holds": ("I3", _an_ended_job_kills_what_another_owner_holds),
    "the job table is read every tick": ("jobs", _job_table_read_every_tick),
    "the job table is read while no job owns a record": ("jobs", _job_table_read_with_no_job_owner),
}


@pytest.mark.parametrize("broken", list(BROKEN_CORES))
def test_a_broken_core_is_caught(broken: str, monkeypatch: pytest.MonkeyPatch) -> None:
    check, breaking, *also = BROKEN_CORES[broken]
    breaking(monkeypatch)
    for seed in range(12):
        failure = run(seed)[1]
        if failure is not None:
            if also and failure.label in also[0]:
                continue  # caught by another check it also breaks: look for this one
            assert failure.label == check, f"seed {seed}: {failure}"
            return
    pytest.fail(f"no seed of 12 caught it ({check})")


def test_serves_own_placement_groups_told_by_the_actor_rule_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """As ``test_a_broken_core_is_caught``, over the seeds whose schedule has one of
    Serve's own placement groups that only its creator tells apart (about one seed in
    fifteen: the first twelve seeds have too few)."""
    _own_placement_groups_told_by_the_actor_rule(monkeypatch)
    seeds = [seed for seed in range(300) if any(
        e.op == "actor" and e.args[1] == "system" and e.args[6] == rec.KIND_PLACEMENT_GROUP and not e.args[2]
        for e in schedule(seed)[1])][:8]
    for seed in seeds:
        failure = run(seed)[1]
        if failure is not None:
            # I3 once it is removed; I5 first where the sweep, which no longer tells it
            # is Serve's own, keeps its record (a registration refuses it before any write).
            assert failure.label in ("I3", "I5"), f"seed {seed}: {failure}"
            return
    pytest.fail(f"none of seeds {seeds} caught it (I3 or I5)")


def test_a_failure_is_reported_with_a_minimal_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_take_back(monkeypatch)
    failure = run(0)[1]
    assert failure is not None and failure.label == "I2"
    text = report(0, failure)
    minimal = text.split("minimal schedule (")[1].split(" ")[0]
    assert "seed 0: I2" in text and "test_simulation[0]" in text and "what happened in it" in text
    assert int(minimal) < len(schedule(0)[1]) / 4, text


# --- core bugs the simulation found (issue 22): strict xfails, each a seed and a replay --------
#
# simulation.py runs with each of them tolerated (its LENIENT_* flags), so that every other
# check still holds over every seed; these tests run without the tolerance. Once the core
# is fixed, the test XPASSes (a failure, strict): remove the flag and the xfail. (A change
# to the simulation may move a bug off its seeds too: find others with the flag False.)

KNOWN_BUGS = {  # flag: (seeds that fail without it, the check that fails, what is wrong)
    "LENIENT_HOW_ACROSS_PASSES": (
        (4, 845), "how",
        "an exit under way is told by its deadline key alone: a pass that did not ask for it (a gc "
        "call's, the shutdown's beside an owner pass's, a restarted controller's) counts its end as "
        "graceful, though another pass killed its process (seed 4: a gc call during the shutdown), or "
        "though it was never asked and died on its own (seed 845: an unreachable actor; also counted "
        "as killed)"),
    "LENIENT_TAKE_BACK_OF_AN_EXIT": (
        (17, 240), "I1",
        "a registration refused because its actor is DEAD (it is, once its graceful exit started) "
        "takes back the record of an exit under way (Registrar._verify_existing, for a record not "
        "verified by this process: after a restart, or written by the upstream method): the record "
        "goes while the hook runs, the next load deletes the deadline key, nothing forces a hook "
        "that hangs"),
    "LENIENT_EXIT_OWNER_BACK": (
        (862, 904), "I5",
        "an exit under way whose owner is back (the app deployed again after the pass that asked "
        "for it crashed) is reaped by nobody while Serve runs: the sweep leaves it (deadline "
        "stored), no owner pass takes it (an owner lives); its record outlives I5's bound and a "
        "hanging hook runs until the shutdown"),
    "LENIENT_DOUBLE_DROP": (
        (711, 2295), "how",
        "two passes over one record (an owner pass and the shutdown's: waiting for graceful exits, "
        "passes last seconds and overlap) both drop it and both count the kill: the shutdown pass's "
        "bulk drop took its set before the owner pass's single delete forgot the record, and counts it "
        "dropped all the same (kills_total counts the actor twice, the second time forced)"),
}


@pytest.mark.parametrize("flag,bug_seed", [(f, s) for f, (seeds, _, _) in KNOWN_BUGS.items() for s in seeds])
def test_a_known_core_bug_still_breaks_its_seed(flag: str, bug_seed: int, monkeypatch: pytest.MonkeyPatch,
                                               request: pytest.FixtureRequest) -> None:
    seeds, check, what = KNOWN_BUGS[flag]
    seed = bug_seed
    request.applymarker(pytest.mark.xfail(strict=True, raises=AssertionError, reason=f"core bug: {what}"))
    monkeypatch.setattr(simulation, flag, False)
    failure = run(seed)[1]
    if failure is not None and failure.label != check:
        pytest.fail(f"seed {seed} fails another check than the bug's ({check}): {failure}")
    assert failure is None, f"seed {seed}: {failure}"


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="core bug: " + KNOWN_BUGS[
    "LENIENT_TAKE_BACK_OF_AN_EXIT"][2])
def test_a_refused_registration_keeps_the_record_of_an_exit_under_way():
    """Its app deleted, the actor is asked to exit (its hook hangs); the controller crashes
    there and restarts; the actor's driver registers it again with the same owner: refused
    (DEAD), and the record must stay until its process has been forced at its deadline."""
    async def main(loop):
        w = World(clock=LoopClock(loop))
        w.owners.deploy("app")
        core = await w.core()
        a = dataclasses.replace(w.actor("hangs"), scope="app", app="app", grace_s=2.0)
        await core.registrar.register(a)
        await _crash_in_its_exit(w, core, a)
        core = await w.core()  # restarted
        try:
            await core.registrar.register(a)
        except DeadActorError:
            pass  # (refused or not: the record stays)
        assert a.actor_id in w.store.records(), "the record of the exit under way was taken back"
        for _ in range(10):
            await core.tick()
            await asyncio.sleep(0.5)
        assert a.actor_id not in w.killer.in_hook, "its hook still runs past its deadline"

    run_in_virtual_time(main)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="core bug: " + KNOWN_BUGS[
    "LENIENT_EXIT_OWNER_BACK"][2])
def test_an_exit_under_way_whose_owner_is_back_is_still_forced():
    async def main(loop):
        w = World(clock=LoopClock(loop))
        w.owners.deploy("app")
        core = await w.core()
        a = dataclasses.replace(w.actor("hangs"), scope="app", app="app", grace_s=2.0)
        await core.registrar.register(a)
        await _crash_in_its_exit(w, core, a)
        w.owners.deploy("app")  # deployed again while the controller restarts
        core = await w.core()
        for _ in range(2 * int(Config().liveness_interval_s / 0.5)):
            await core.tick()
            await asyncio.sleep(0.5)
        assert a.actor_id not in w.killer.in_hook, "its hook still runs past its deadline"
        assert a.actor_id not in w.store.records(), "the record of a dead actor outlived I5's bound"

    run_in_virtual_time(main)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="core bug: " + KNOWN_BUGS[
    "LENIENT_HOW_ACROSS_PASSES"][2])
def test_a_forced_exit_seen_ended_by_a_restarted_controller_counts_as_forced():
    """The pass that forced the hanging exit dies before it drops the record; the restarted
    controller's pass finds the exit under way, ended: it was forced."""
    async def main(loop):
        w = World(clock=LoopClock(loop))
        w.metrics = metrics = _Kills()
        core = await w.core()
        a = dataclasses.replace(w.actor("hangs"), grace_s=1.0)
        await core.registrar.register(a)
        w.killer.hanging.add(a.actor_id)
        w.killer.on_kill_process = lambda record, where: loop.call_soon(w.process.die)
        w.owners.serve_state = ServeState.SHUTTING_DOWN
        with pytest.raises(Crash):
            await w.shutdown(core)
        if a.actor_id in w.killer.in_hook or a.actor_id not in w.store.records():
            pytest.fail("the process should have been forced, the record left")
        w.killer.on_kill_process = None
        core = await w.core()
        await w.shutdown(core)
        await asyncio.sleep(1.0)
        assert metrics.hows == ["forced"], metrics.hows

    run_in_virtual_time(main)


async def _crash_in_its_exit(w: World, core, a) -> None:
    """``a``'s app is deleted: the owner pass asks it to exit (its hook hangs), and the
    controller crashes right after (``mid_graceful_exit``)."""
    w.killer.hanging.add(a.actor_id)
    w.owners.delete_app("app")
    w.crash_at = {"mid_graceful_exit"}
    for _ in range(20):
        await core.tick()
        await asyncio.sleep(0.5)
        if not w.process.alive:
            break
    if w.process.alive or a.actor_id not in w.killer.in_hook:
        pytest.fail("the controller should have crashed in the actor's graceful exit")


class _Kills:
    def __init__(self) -> None:
        self.hows: list[str] = []

    def registered(self, scope, kind="actor"): ...

    def killed(self, reason, kind="actor", how="forced"):
        self.hows.append(how)

    def kill_failed(self, reason, kind="actor"): ...

    def records(self, counts, set_aside, by_kind): ...

    def reconcile_duration(self, seconds): ...
