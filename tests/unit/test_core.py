"""The core's decisions, deterministically, without Ray (see docs/architecture.md, Invariants).

Each test drives a ``World`` (tests/unit/fakes.py): one KV, actor table, killer, owners and
virtual clock, and controller processes built over them. A crash is simulated by raising
``Crash`` at a crash point (or anywhere) and building a new core from the same store.
The tests named ``test_defect_*`` fail on the code before issue 9 and pass after.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from fakes import Crash, Gate, World
from serve_cleanup import records as rec
from serve_cleanup.core import Config
from serve_cleanup.errors import (
    DeadActorError,
    OwnerNotFoundError,
    PersistenceError,
    RegistrationError,
    SystemActorError,
)
from serve_cleanup.ports import ServeState
from serve_cleanup.reaper import Outcome, Reason

pytestmark = pytest.mark.timeout(30)


def stored(world: World) -> set[str]:
    return set(world.store.records())


# --- registration ---------------------------------------------------------------------


async def test_register_stores_verified_record_and_repeat_needs_no_gcs():
    w = World()
    core = w.core()
    a = w.actor("cache")
    record = await core.register(a)
    assert stored(w) == {a.actor_id} and record.name == "cache"
    puts, lookups = w.store.puts, w.table.lookups
    assert await core.register(a) is record
    assert (w.store.puts, w.table.lookups) == (puts, lookups)


@pytest.mark.parametrize("state", ["dead", "unknown", "system"])
async def test_refused_registration_leaves_no_record(state):
    w = World()
    core = w.core()
    a = w.actor("SERVE_REPLICA::x" if state == "system" else "n", namespace="serve" if state == "system" else "ns")
    if state == "dead":
        w.table.die(a.actor_id)
    if state == "unknown":
        w.table.actors.pop(a.actor_id)
    # A handle that carries no name: only the actor table tells a system actor apart.
    a = type(a)(actor_id=a.actor_id, name="", namespace="", handle=a.handle)
    with pytest.raises(SystemActorError if state == "system" else DeadActorError):
        await core.register(a)
    assert stored(w) == set() and len(core.registry) == 0


async def test_anonymous_actor_not_yet_known_to_gcs_is_waited_for():
    w = World()
    core = w.core()
    a = w.actor(known_in=0.5)
    await core.register(a)
    assert stored(w) == {a.actor_id}


async def test_owner_must_exist_and_arguments_are_checked():
    w = World()
    core = w.core()
    a = w.actor()
    with pytest.raises(OwnerNotFoundError):
        await core.register(type(a)(**{**a.__dict__, "scope": "app", "app": "nope"}))
    with pytest.raises(ValueError):
        await core.register(type(a)(**{**a.__dict__, "scope": "app"}))
    with pytest.raises(SystemActorError):
        await core.register(type(a)(**{**a.__dict__, "actor_id": "c0ffee" * 5 + "00"}))
    assert stored(w) == set()


async def test_failed_write_raises_and_takes_back():
    w = World()
    core = w.core()
    a = w.actor()
    w.store.fail_puts = 1
    with pytest.raises(PersistenceError):
        await core.register(a)
    assert stored(w) == set() and a.actor_id not in core.registry


async def test_failed_take_back_is_retried_and_memory_never_claims_more_than_the_kv():
    w = World()
    core = w.core()
    a = w.actor()
    w.table.die(a.actor_id)
    w.store.fail_deletes = 1
    with pytest.raises(DeadActorError):
        await core.register(a)
    assert a.actor_id not in core.registry and a.actor_id in core.retract
    assert stored(w) == {a.actor_id}  # the take-back write failed...
    await w.ticks(core, 1)
    assert stored(w) == set() and not core.retract  # ...and was retried


# --- defect 1: nothing in the KV stops the controller from starting ----------------------


async def test_defect_1_non_utf8_key_is_set_aside_not_fatal():
    w = World()
    good = w.actor()
    await w.core().register(good)
    w.store.data[rec.KEY_PREFIX.encode() + b"\xff\xfe"] = b"\x00"
    w.store.data[rec.KEY_PREFIX + "x"] = b"\xc1 junk"
    core = w.core()
    assert core.loaded and set(core.registry.ids()) == {good.actor_id}
    assert {s.raw_key for s in core.registry.set_aside()} == {
        rec.KEY_PREFIX.encode() + b"\xff\xfe", (rec.KEY_PREFIX + "x").encode()}
    assert len(w.store.data) == 3  # set aside, not deleted


async def test_unreadable_kv_at_start_is_retried_and_holds_shutdown():
    w = World()
    a = w.actor()
    await w.core().register(a)
    w.store.fail_scans = 3
    core = w.core()
    assert not core.loaded
    assert core.shutdown_step() is False  # cannot know what to kill yet
    w.owners.serve_state = ServeState.SHUTTING_DOWN
    await w.shutdown(core)
    assert not w.table.alive(a.actor_id) and stored(w) == set()


# --- defect 2: a refusal decided after the write survives a crash -------------------------


@pytest.mark.parametrize("point", ["after_record_write", "after_refusal_decided"])
async def test_defect_2_dead_actor_refused_across_a_crash(point):
    w = World()
    a = w.actor("n")
    w.table.die(a.actor_id)
    w.crash_at = {point}
    with pytest.raises(Crash):
        await w.core().register(a)
    assert stored(w) == {a.actor_id}  # the crash cut the take-back
    core = w.core()
    with pytest.raises(DeadActorError):  # Ray retries the call on the restarted controller
        await core.register(a)
    assert stored(w) == set()


async def test_defect_2_system_actor_record_left_by_a_crash_is_dropped_never_killed():
    w = World()
    a = w.actor("SERVE_PROXY_ACTOR-x", namespace="serve")
    anonymous_handle = type(a)(actor_id=a.actor_id, name="", namespace="", handle=a.handle)
    w.crash_at = {"after_refusal_decided"}
    with pytest.raises(Crash):
        await w.core().register(anonymous_handle)
    core = w.core()  # nobody retries: the sweep finds it
    await w.ticks(core, 2)
    assert stored(w) == set() and w.killer.kills == []
    w.owners.serve_state = ServeState.SHUTTING_DOWN
    await w.shutdown(core)
    assert w.killer.kills == [] and w.table.alive(a.actor_id)


async def test_crash_after_write_of_a_good_actor_then_retry_succeeds_once():
    w = World()
    a = w.actor("n")
    w.crash_at = {"after_record_write"}
    with pytest.raises(Crash):
        await w.core().register(a)
    core = w.core()
    record = await core.register(a)
    assert stored(w) == {a.actor_id} and record.actor_id in core.verified


# --- defect 3: records of dead actors under a live owner are dropped -----------------------


@pytest.mark.parametrize("scope", ["serve", "app", "deployment"])
async def test_defect_3_dead_actor_record_dropped_within_bound(scope):
    w = World()
    w.owners.deploy("shop", "D")
    core = w.core()
    a = w.actor()
    owner = {"serve": {}, "app": {"app": "shop"}, "deployment": {"app": "shop", "deployment": "D"}}[scope]
    await core.register(type(a)(**{**a.__dict__, "scope": scope, **owner}))
    w.table.die(a.actor_id)  # a replica restart took its helper along
    start = w.clock.now
    bound = 2 * core.config.reconcile_interval_s + core.config.liveness_interval_s + 0.1
    while a.actor_id in stored(w):
        assert w.clock.now - start <= bound, "record of a dead actor outlived the bound"
        await w.ticks(core, 1)
    assert w.killer.kills == []


# --- defect 4: passes never delete the record of a registration in flight -----------------


@pytest.mark.parametrize("racer", ["gc", "shutdown", "sweep"])
async def test_defect_4_inflight_anonymous_registration_survives_concurrent_pass(racer):
    w = World()
    core = w.core()
    a = w.actor(known_in=1.0)  # GCS learns of it a second from now
    task = asyncio.ensure_future(core.register(a))
    for _ in range(5):
        await asyncio.sleep(0)
    assert a.actor_id in stored(w)  # written, still waiting for the actor table
    if racer == "gc":
        await core.gc()
    elif racer == "sweep":
        await core.sweep()
    else:
        w.owners.serve_state = ServeState.SHUTTING_DOWN
        assert core.shutdown_step() is False
    record = await task
    assert a.actor_id in stored(w) and core.registry.get(a.actor_id) == record
    if racer == "shutdown":  # and the shutdown then kills it
        await w.shutdown(core)
        assert not w.table.alive(a.actor_id) and stored(w) == set()


@pytest.mark.parametrize("first", ["pass", "move"])
async def test_defect_4_move_racing_orphan_pass_never_kills_a_registered_actor(first):
    """A registration moved from a deleted app to scope 'serve' while the orphan pass
    that will kill it is looking the actor up: either the move wins (the actor lives,
    registered Serve-wide) or the pass does (the move is refused). Never both."""
    w = World()
    w.owners.deploy("old", "D")
    core = w.core()
    a = w.actor("n")
    await core.register(type(a)(**{**a.__dict__, "scope": "app", "app": "old"}))
    w.owners.delete_app("old")
    gate = w.table.gate = Gate()  # holds the first lookup only
    if first == "pass":
        reaping = asyncio.ensure_future(core.tick())
        while gate.waiting == 0:
            await asyncio.sleep(0)
        w.table.gate = None
        moving = asyncio.ensure_future(core.register(a))  # scope serve, the default
    else:
        moving = asyncio.ensure_future(core.register(a))
        while gate.waiting == 0:
            await asyncio.sleep(0)
        w.table.gate = None
        reaping = asyncio.ensure_future(core.tick())
    for _ in range(20):
        await asyncio.sleep(0)
    gate.open()
    await reaping
    try:
        record = await moving
    except DeadActorError:
        assert not w.table.alive(a.actor_id) and stored(w) == set()  # told: not registered
    else:  # told: registered; so it must be alive and registered Serve-wide
        assert w.table.alive(a.actor_id) and record.scope == "serve"
        assert stored(w) == {a.actor_id}


# --- defect 5: retries back off ---------------------------------------------------------


async def test_defect_5_undying_actor_is_retried_with_backoff_and_does_not_block_others(caplog):
    w = World()
    w.owners.deploy("app", "D")
    core = w.core()
    stuck, other = w.actor("stuck"), w.actor("other")
    await core.register(type(stuck)(**{**stuck.__dict__, "scope": "app", "app": "app"}))
    await core.register(other)
    w.killer.undying.add(stuck.actor_id)
    w.owners.delete_app("app")
    with caplog.at_level(logging.WARNING, logger="serve_cleanup"):
        t0 = w.clock.now
        while w.clock.now - t0 < 120:
            await w.ticks(core, 1)
    attempts = w.killer.kills.count(stuck.actor_id)
    assert 3 <= attempts <= 10, attempts  # ~240 ticks, but backoff up to 60 s
    warnings = [r for r in caplog.records if "stuck" in r.getMessage()]
    assert len(warnings) <= 4
    assert await core.unregister(other.actor_id)  # not queued behind the stuck actor


async def test_defect_5_unreachable_actor_backs_off():
    w = World()
    w.owners.deploy("app", "D")
    core = w.core()
    a = w.actor("n")
    await core.register(type(a)(**{**a.__dict__, "scope": "app", "app": "app"}))
    w.killer.unreachable.add(a.actor_id)
    w.owners.delete_app("app")
    calls = []
    w.killer.check = lambda r: calls.append(w.clock.now)
    await w.ticks(core, 120)  # 60 s
    assert 3 <= len(calls) <= 8
    assert a.actor_id in stored(w)


# --- defect 6: shutdown with only a registration in flight -------------------------------


async def test_defect_6_shutdown_with_only_an_inflight_registration_gives_up_without_empty_passes(caplog):
    w = World(Config(shutdown_grace_s=5.0))
    core = w.core()
    a = w.actor()
    w.store.put_gate = Gate()  # the write never comes back
    task = asyncio.ensure_future(core.register(a))
    await asyncio.sleep(0)
    w.owners.serve_state = ServeState.SHUTTING_DOWN
    with caplog.at_level(logging.INFO, logger="serve_cleanup"):
        steps = await w.shutdown(core)
    assert steps > 1 and core._shutdown.task is None  # held, but no empty pass ran
    assert "giving up" in caplog.text and "in flight" in caplog.text
    task.cancel()


# --- invariants -----------------------------------------------------------------------


async def test_only_the_current_record_is_killed_and_only_its_id():
    w = World()
    w.owners.deploy("app", "D")
    core = w.core()
    a, bystander = w.actor("n"), w.actor("m")

    def check(record):
        assert core.registry.get(record.actor_id) is record, "killed a record that is not current"
    w.killer.check = check
    await core.register(a)
    w.owners.serve_state = ServeState.SHUTTING_DOWN
    await w.shutdown(core)
    assert w.killer.kills == [a.actor_id] and w.table.alive(bystander.actor_id)


async def test_shutdown_kills_every_record_and_crash_mid_kill_is_finished_by_restart():
    w = World()
    core = w.core()
    regs = [w.actor(f"a{i}") for i in range(5)]
    for r in regs:
        await core.register(r)
    w.owners.serve_state = ServeState.SHUTTING_DOWN
    w.crash_at = {"after_kill_before_delete"}
    with pytest.raises(Crash):
        core.shutdown_step()
        await core._shutdown.task
    core = w.core()
    await w.shutdown(core)
    assert stored(w) == set() and not any(w.table.alive(r.actor_id) for r in regs)


async def test_shutdown_gives_up_on_undying_actor_after_grace_and_keeps_the_record():
    w = World(Config(shutdown_grace_s=3.0))
    core = w.core()
    a = w.actor()
    await core.register(a)
    w.killer.undying.add(a.actor_id)
    w.owners.serve_state = ServeState.SHUTTING_DOWN
    await w.shutdown(core)
    assert stored(w) == {a.actor_id}


async def test_unregister_removes_without_killing():
    w = World()
    core = w.core()
    a = w.actor()
    await core.register(a)
    assert await core.unregister(a.actor_id) is True
    assert await core.unregister(a.actor_id) is False
    w.owners.serve_state = ServeState.SHUTTING_DOWN
    await w.shutdown(core)
    assert w.table.alive(a.actor_id) and w.killer.kills == []


async def test_gc_collects_orphans_and_dead_but_not_live_or_young_unknown():
    w = World()
    w.owners.deploy("gone", "D")
    core = w.core()
    orphan, dead, live = w.actor("o"), w.actor("d"), w.actor("l")
    await core.register(type(orphan)(**{**orphan.__dict__, "scope": "app", "app": "gone"}))
    await core.register(dead)
    await core.register(live)
    w.owners.delete_app("gone")
    w.table.die(dead.actor_id)
    dry = await core.gc(dry_run=True)
    assert {d["actor_id"] for d in dry} == {orphan.actor_id, dead.actor_id}
    assert len(stored(w)) == 3
    result = await core.gc()
    assert {d["actor_id"]: d["outcome"] for d in result} == {
        orphan.actor_id: Outcome.KILLED.value, dead.actor_id: Outcome.ALREADY_DEAD.value}
    assert stored(w) == {live.actor_id}


async def test_reconcile_kills_orphans_after_restart_but_not_before_recovery():
    w = World()
    w.owners.deploy("app", "D")
    a = w.actor()
    await w.core().register(type(a)(**{**a.__dict__, "scope": "deployment", "app": "app", "deployment": "D"}))
    w.owners.delete_app("app")  # deleted while the controller was down
    w.owners.serve_state = ServeState.RECOVERING
    core = w.core()
    await w.ticks(core, 3)
    assert w.table.alive(a.actor_id)
    w.owners.serve_state = ServeState.RUNNING
    await w.ticks(core, 2)
    assert not w.table.alive(a.actor_id) and stored(w) == set()


async def test_outcomes_of_a_pass_keep_order():
    w = World()
    core = w.core()
    regs = [w.actor() for _ in range(3)]
    for r in regs:
        await core.register(r)
    w.table.die(regs[1].actor_id)
    outcomes = await core.run_pass(core.registry.records(), Reason.GC)
    assert outcomes == [Outcome.KILLED, Outcome.ALREADY_DEAD, Outcome.KILLED]


async def test_no_registration_is_accepted_once_shutdown_let_the_controller_exit():
    """Closes the window between the final shutdown check and the process exit: a call
    arriving then is refused, so it can leave no record behind."""
    w = World()
    core = w.core()
    w.owners.serve_state = ServeState.SHUTTING_DOWN
    assert core.shutdown_step() is True
    a = w.actor()
    with pytest.raises(RegistrationError, match="finished shutting down"):
        await core.register(a)
    assert stored(w) == set()


async def test_sweep_looks_each_record_up_once_per_interval_however_often_it_moved():
    w = World()
    w.owners.deploy("a", "D")
    core = w.core()
    x = w.actor()
    for scope in ("serve", "app", "serve", "app"):  # moves re-enqueue the same id
        await core.register(type(x)(**{**x.__dict__, "scope": scope, "app": "a" if scope == "app" else ""}))
    before = w.table.lookups
    await w.ticks(core, 20)  # 10 s at 0.5 s a tick, 1 s liveness interval
    assert 8 <= w.table.lookups - before <= 11


async def test_shutdown_over_many_dead_records_reads_the_table_once_and_kills_the_live():
    w = World()
    core = w.core()
    regs = [w.actor() for _ in range(200)]
    for r in regs:
        await core.register(r)
    for r in regs[:190]:
        w.table.die(r.actor_id)
    for r in regs[190:195]:
        w.table.actors.pop(r.actor_id)  # long gone from the table
    await w.clock.sleep(10)
    lookups = w.table.lookups
    w.owners.serve_state = ServeState.SHUTTING_DOWN
    await w.shutdown(core)
    assert stored(w) == set() and w.table.snapshots >= 1
    assert sorted(w.killer.kills) == sorted(r.actor_id for r in regs[195:])
    assert w.table.lookups - lookups <= 5 * 3  # only the live ones: a lookup, then polls


async def test_registrations_are_summed_up_in_the_log_not_one_info_line_each(caplog):
    w = World()
    core = w.core()
    with caplog.at_level(logging.INFO, logger="serve_cleanup"):
        for _ in range(5):
            await core.register(w.actor())
        assert "registered" not in caplog.text
        await w.ticks(core, 1)
    assert "5 new registration(s) accepted" in caplog.text and "serve=5" in caplog.text


async def test_after_a_shutdown_give_up_even_a_repeat_is_refused():
    w = World(Config(shutdown_grace_s=1.0))
    core = w.core()
    a = w.actor()
    await core.register(a)
    w.killer.undying.add(a.actor_id)
    w.owners.serve_state = ServeState.SHUTTING_DOWN
    await w.shutdown(core)  # gives up; the record stays
    with pytest.raises(RegistrationError, match="finished shutting down"):
        await core.register(a)


async def test_a_failed_unregister_keeps_a_pending_take_back():
    """Found by the simulation (seed 48 of 1000): unregister dropped the queued take-back
    before its own delete, so when that delete failed too the refused record stayed."""
    w = World()
    core = w.core()
    a = w.actor()
    w.table.die(a.actor_id)
    w.store.fail_deletes = 2
    with pytest.raises(DeadActorError):
        await core.register(a)  # refused; its take-back fails
    with pytest.raises(TimeoutError):
        await core.unregister(a.actor_id)  # fails as well
    assert a.actor_id in core.retract
    await w.ticks(core, 1)
    assert stored(w) == set()
