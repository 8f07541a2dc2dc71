"""The core's decisions, deterministically, without Ray (see docs/architecture.md, Invariants).

Each test drives a ``World`` (tests/no_ray/fakes.py): one KV, actor table, killer, Serve and
virtual clock, and controller processes built over them. A crash is simulated by raising
``Crash`` at a crash point (or anywhere) and building a new core from the same store.
Tests read the core's state through ``status()``, not its private fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

import pytest

from fakes import CONTROLLER_ID, Crash, Gate, LoopClock, World, run_in_virtual_time
from serve_cleanup.core import Config, Registration, State
from serve_cleanup.core import records as rec
from serve_cleanup.core.locks import WriteGate
from serve_cleanup.core.ports import ServeState
from serve_cleanup.core.reaper import Outcome, Reason
from serve_cleanup.errors import (
    DeadActorError,
    OwnerNotFoundError,
    PersistenceError,
    RegistrationError,
    SystemActorError,
)

pytestmark = pytest.mark.timeout(30)


def stored(world: World) -> set[str]:
    return set(world.store.records())


def owned(reg: Registration, scope: str, app: str = "", deployment: str = "") -> Registration:
    return dataclasses.replace(reg, scope=scope, app=app, deployment=deployment)


def upstream(reg: Registration) -> Registration:
    """As Serve's own ``_register_shutdown_cleanup_actor`` registers."""
    return dataclasses.replace(reg, ensure_only=True, check_actor=False)


async def shut_down(w: World, core) -> int:
    w.owners.serve_state = ServeState.SHUTTING_DOWN
    return await w.shutdown(core)


# --- registration -----------------------------------------------------------------------


async def test_register_stores_a_verified_record_and_a_repeat_needs_no_gcs():
    w = World()
    core = await w.core()
    a = w.actor("cache")
    record = await core.registrar.register(a)
    assert stored(w) == {a.actor_id} and record.name == "cache" and core.status()["unverified"] == 0
    requests, lookups = w.store.requests, w.table.lookups
    assert (await core.registrar.register(a)).actor_id == a.actor_id
    assert (w.store.requests, w.table.lookups) == (requests, lookups)


async def test_the_upstream_entry_point_costs_one_put_and_no_lookup():
    """Issue 14, target 1: Serve's own entry point at its floor (one KV put)."""
    w = World()
    core = await w.core()
    a = w.actor("prefix-tree")
    requests = w.store.requests
    await core.registrar.register(upstream(a))
    assert w.store.requests - requests == 1 and w.store.puts == 1
    assert w.table.lookups == 0 and w.table.bulk_reads == 0
    await core.registrar.register(upstream(a))  # every router re-registers its actor
    assert w.store.requests - requests == 1


async def test_the_upstream_fast_path_holds_the_actor_while_its_put_is_under_way():
    """A new actor registered upstream takes ``register_new`` (one coroutine around the
    one put). An app registration of the same actor arriving during that put waits for
    it (the actor's lock), then adds its owner in place of the serve key: memory and the
    KV agree, and the serve key is gone."""
    w = World()
    w.owners.deploy("shop", "D")
    core = await w.core()
    a = w.actor()
    assert core.registrar.can_write_new(a.actor_id)
    w.store.put_gate = Gate()
    fast = asyncio.ensure_future(core.registrar.register_new(upstream(a)))
    while w.store.put_gate.waiting == 0:
        await asyncio.sleep(0)
    assert not core.registrar.can_write_new(a.actor_id)  # its lock is held
    app = asyncio.ensure_future(core.registrar.register(owned(a, "app", "shop")))
    for _ in range(20):
        await asyncio.sleep(0)
    assert w.store.put_gate.waiting == 1  # the app call waits for the lock, not for a put
    w.store.put_gate.open()
    await fast
    record = await app
    assert record.owners == (("app", "shop", ""),)
    assert core.registry.get(a.actor_id).owners == (("app", "shop", ""),)
    assert w.store.records()[a.actor_id].owners == (("app", "shop", ""),)
    assert len(w.store.keys_of(a.actor_id)) == 1  # the serve key was deleted


@pytest.mark.parametrize("lost", ["request", "answer"])
async def test_a_failed_put_on_the_fast_path_leaves_nothing_behind(lost):
    """A put that failed, or that landed and then timed out: the call raises and takes
    its key back, so no record is left of a call that raised (I2)."""
    w = World()
    core = await w.core()
    a = w.actor()
    if lost == "request":
        w.store.fail_puts = 1
    else:
        w.store.lose_put_answers = 1
    with pytest.raises(PersistenceError):
        await core.registrar.register(upstream(a))
    assert stored(w) == set() and core.registry.get(a.actor_id) is None
    assert not core.registry.has_stale(a.actor_id) and not core.registrar.retract
    assert core.registrar.can_write_new(a.actor_id)  # its lock was given back
    await core.registrar.register(upstream(a))
    assert stored(w) == {a.actor_id}


async def test_the_upstream_entry_point_keeps_an_existing_owner():
    w = World()
    w.owners.deploy("shop", "D")
    core = await w.core()
    a = w.actor()
    await core.registrar.register(owned(a, "app", "shop"))
    record = await core.registrar.register(upstream(a))
    assert record.scope == "app" and w.store.records()[a.actor_id].scope == "app"


async def test_a_dead_actor_registered_upstream_is_accepted_and_its_record_swept():
    """Upstream never refused a dead actor; its record is harmless and goes within I5's bound."""
    w = World()
    core = await w.core()
    a = w.actor()
    w.table.die(a.actor_id)
    await core.registrar.register(upstream(a))
    assert stored(w) == {a.actor_id}
    await w.ticks(core, int((core.config.liveness_interval_s + core.config.unknown_grace_s) / 0.5) + 2)
    assert stored(w) == set() and w.killer.kills == []


@pytest.mark.parametrize("state", ["dead", "unknown", "system"])
async def test_a_refused_registration_leaves_no_record(state):
    w = World()
    core = await w.core()
    a = w.actor("SERVE_REPLICA::x" if state == "system" else "n", namespace="serve" if state == "system" else "ns")
    if state == "dead":
        w.table.die(a.actor_id)
    if state == "unknown":
        w.table.actors.pop(a.actor_id)
    # A handle that carries no name: only the actor table tells a system actor apart.
    a = dataclasses.replace(a, name="", namespace="")
    with pytest.raises(SystemActorError if state == "system" else DeadActorError):
        await core.registrar.register(a)
    assert stored(w) == set() and core.status()["records"] == 0


async def test_an_anonymous_actor_not_yet_known_to_gcs_is_waited_for():
    w = World()
    core = await w.core()
    a = w.actor(known_in=0.5)
    await core.registrar.register(a)
    assert stored(w) == {a.actor_id}


async def test_the_owner_must_exist_and_arguments_are_checked():
    w = World()
    core = await w.core()
    a = w.actor()
    with pytest.raises(OwnerNotFoundError):
        await core.registrar.register(owned(a, "app", "nope"))
    with pytest.raises(ValueError):
        await core.registrar.register(owned(a, "app"))
    with pytest.raises(SystemActorError):
        await core.registrar.register(dataclasses.replace(a, actor_id=CONTROLLER_ID))
    assert stored(w) == set()


async def test_a_failed_write_raises_and_takes_back():
    w = World()
    core = await w.core()
    a = w.actor()
    w.store.fail_puts = 1
    with pytest.raises(PersistenceError):
        await core.registrar.register(a)
    assert stored(w) == set() and core.status()["records"] == 0


async def test_a_failed_take_back_is_retried_and_memory_never_claims_more_than_the_kv():
    w = World()
    core = await w.core()
    a = w.actor()
    w.table.die(a.actor_id)
    w.store.fail_deletes = 1
    with pytest.raises(DeadActorError):
        await core.registrar.register(a)
    status = core.status()
    assert status["records"] == 0 and status["take_backs_pending"] == 1
    assert stored(w) == {a.actor_id}  # the take-back write failed...
    await w.ticks(core, 1)
    assert stored(w) == set() and core.status()["take_backs_pending"] == 0  # ...and was retried


async def test_a_refused_owner_gives_back_the_previous_record_with_its_handle():
    """Memory holds records without their handle bytes; a take-back that wrote memory's
    copy back would lose the handle, and an anonymous actor could no longer be reached by
    any kill (the fakes' killer reaches actors as Ray's does). An owner added to an actor
    without owners, refused: the serve key was never deleted, the app key is."""
    w = World()
    w.owners.deploy("shop", "D")
    core = await w.core()
    a = w.actor()  # anonymous: only its handle bytes reach it
    await core.registrar.register(a)
    w.table.fail_lookups = 1  # the addition's actor-table lookup fails: refused, taken back
    with pytest.raises(PersistenceError):
        await core.registrar.register(owned(a, "app", "shop"))
    record = w.store.records()[a.actor_id]
    assert record.owners == () and record.handle == a.handle and len(w.store.keys_of(a.actor_id)) == 1
    w.owners.delete_app("shop")
    await w.ticks(core, 4)
    assert w.table.alive(a.actor_id)  # it waits for shutdown
    await shut_down(w, core)
    assert not w.table.alive(a.actor_id) and stored(w) == set()


async def test_a_refused_owner_whose_take_back_failed_is_retried():
    w = World()
    w.owners.deploy("shop", "D")
    core = await w.core()
    a = w.actor()
    await core.registrar.register(a)
    w.table.fail_lookups = 1  # the addition is refused...
    w.table.on_failure = lambda op: setattr(w.store, "fail_deletes", 1)  # ...and its take-back fails
    with pytest.raises(PersistenceError):
        await core.registrar.register(owned(a, "app", "shop"))
    w.table.on_failure = None
    assert core.status()["take_backs_pending"] == 1 and core.registry.get(a.actor_id).owners == ()
    assert w.store.records()[a.actor_id].owners == (("app", "shop", ""),)  # the KV: both keys
    await w.ticks(core, 1)  # retried
    assert core.status()["take_backs_pending"] == 0
    record = w.store.records()[a.actor_id]
    assert record.owners == () and record.handle == a.handle and len(w.store.keys_of(a.actor_id)) == 1


async def test_a_take_back_made_moot_by_a_drop_does_not_hold_the_shutdown(caplog):
    """Found by the simulation (seeds 1518 and 1977 of 3000): the take-back of a refused
    move failed and was queued; before its retry a pass dropped the actor's record (the
    actor had died); the queued take-back then matched memory no more, so it was neither
    retried nor dropped, and the shutdown waited for it until the grace, then gave up with
    nothing left, saying the records could not be read."""
    w = World(Config(shutdown_grace_s=5.0))
    w.owners.deploy("shop", "D")
    core = await w.core()
    a = w.actor("n")
    await core.registrar.register(a)
    w.table.fail_lookups = 1  # the addition is refused...
    w.table.on_failure = lambda op: setattr(w.store, "fail_deletes", 1)  # ...and its take-back fails
    with pytest.raises(PersistenceError):
        await core.registrar.register(owned(a, "app", "shop"))
    w.table.on_failure = None
    assert core.status()["take_backs_pending"] == 1
    w.table.die(a.actor_id)
    await core.sweep(force=True)  # the sweep drops the record of the dead actor
    assert stored(w) == set()
    with caplog.at_level(logging.ERROR, logger="serve_cleanup"):
        await shut_down(w, core)
    assert core.status()["state"] == "closed", caplog.text


async def test_a_give_up_after_the_records_were_read_does_not_say_they_could_not_be(caplog):
    w = World(Config(shutdown_grace_s=1.0))
    core = await w.core()
    a = w.actor()
    await core.registrar.register(a)
    w.killer.undying.add(a.actor_id)
    with caplog.at_level(logging.ERROR, logger="serve_cleanup"):
        await shut_down(w, core)
    assert "giving up" in caplog.text and "could not be read" not in caplog.text


async def test_a_failed_unregister_keeps_a_pending_take_back():
    """Found by the simulation (seed 48 of 1000): unregister dropped the queued take-back
    before its own delete, so when that delete failed too the refused record stayed."""
    w = World()
    core = await w.core()
    a = w.actor()
    w.table.die(a.actor_id)
    w.store.fail_deletes = 2
    with pytest.raises(DeadActorError):
        await core.registrar.register(a)  # refused; its take-back fails
    with pytest.raises(TimeoutError):
        await core.unregister(a.actor_id)  # fails as well
    assert core.status()["take_backs_pending"] == 1
    await w.ticks(core, 1)
    assert stored(w) == set()


async def test_an_unregister_while_a_restarted_core_loads_is_not_undone_by_the_load():
    """Found by the simulation (tests/no_ray/test_simulation.py, seed 241 of 300, once the
    actor table and killer died with their process): a restarted core read a record; an
    unregister then deleted it from the KV and forgot it in a memory the load had not
    filled yet; the load then remembered it. Memory claimed a record the KV did not hold,
    so the retried registration of that actor returned it without writing (I1), and the
    actor leaked after the next restart. In the controller, calls reach a core that is
    still loading when its first read failed: the reconcile tick then reads again while
    calls are served."""
    w = World()
    a = w.actor("n")
    await (await w.core()).registrar.register(a)
    record = w.store.records()[a.actor_id]  # as 0.1.0 wrote it: a load reads v1 values
    w.store.data = {rec.record_key(a.actor_id): rec.encode_v1(record)}
    core = w.new_process()  # Ray restarted the controller; it reads the records
    w.store.read_gate = gate = Gate()
    loading = asyncio.ensure_future(core.load())
    while gate.waiting == 0:
        await asyncio.sleep(0)  # the record is read; the answer is on its way back
    w.store.read_gate = None
    unregistering = asyncio.ensure_future(core.unregister(a.actor_id))
    for _ in range(5):
        await asyncio.sleep(0)
    gate.open()
    await loading
    assert await unregistering is True
    assert stored(w) == set() and core.status()["records"] == 0
    await core.registrar.register(a)  # registered again: written again
    assert stored(w) == {a.actor_id}


# --- I4: nothing in the KV stops the controller from starting ------------------------------


async def test_a_non_utf8_key_is_set_aside_not_fatal():
    w = World()
    good = w.actor()
    await (await w.core()).registrar.register(good)
    w.store.data[rec.KEY_PREFIX.encode() + b"\xff\xfe"] = b"\x00"
    w.store.data[rec.KEY_PREFIX + "x"] = b"\xc1 junk"
    core = await w.core()
    assert core.state is State.OPEN and {r.actor_id for r in core.registry.records()} == {good.actor_id}
    assert {s.raw_key for s in core.registry.set_aside()} == {
        rec.KEY_PREFIX.encode() + b"\xff\xfe", (rec.KEY_PREFIX + "x").encode()}
    assert len(w.store.data) == 3  # set aside, not deleted


async def test_an_unreadable_kv_at_start_is_retried_and_holds_shutdown():
    w = World()
    a = w.actor()
    await (await w.core()).registrar.register(a)
    w.store.fail_reads = 3
    core = await w.core()
    assert core.status()["state"] == "loading"
    assert core.shutdown_step() is False  # cannot know what to kill yet
    assert core.status()["state"] == "loading for shutdown"
    await shut_down(w, core)
    assert not w.table.alive(a.actor_id) and stored(w) == set()
    assert core.status()["state"] == "closed"


async def test_registrations_wait_for_the_records_and_give_up_with_a_persistence_error():
    w = World(Config(load_wait_s=1.0))
    w.store.fail_reads = 10_000
    core = await w.core()
    with pytest.raises(PersistenceError, match="could not read its registrations"):
        await core.registrar.register(w.actor())
    assert stored(w) == set()


# --- I2: a refusal decided after the write survives a crash --------------------------------


@pytest.mark.parametrize("point", ["after_record_write", "after_refusal_decided"])
async def test_a_dead_actor_is_refused_across_a_crash(point):
    w = World()
    a = w.actor("n")
    w.table.die(a.actor_id)
    w.crash_at = {point}
    with pytest.raises(Crash):
        await (await w.core()).registrar.register(a)
    assert stored(w) == {a.actor_id}  # the crash cut the take-back
    core = await w.core()
    with pytest.raises(DeadActorError):  # Ray retries the call on the restarted controller
        await core.registrar.register(a)
    assert stored(w) == set()


async def test_a_system_actor_record_left_by_a_crash_is_dropped_never_killed():
    w = World()
    a = w.actor("SERVE_PROXY_ACTOR-x", namespace="serve")
    w.crash_at = {"after_refusal_decided"}
    with pytest.raises(Crash):
        await (await w.core()).registrar.register(dataclasses.replace(a, name="", namespace=""))
    core = await w.core()  # nobody retries: the sweep finds it
    await w.ticks(core, 2)
    assert stored(w) == set() and w.killer.kills == []
    await shut_down(w, core)
    assert w.killer.kills == [] and w.table.alive(a.actor_id)


async def test_a_crash_after_the_write_of_a_good_actor_then_the_retry_succeeds_once():
    w = World()
    a = w.actor("n")
    w.crash_at = {"after_record_write"}
    with pytest.raises(Crash):
        await (await w.core()).registrar.register(a)
    core = await w.core()
    assert core.status()["unverified"] == 1
    await core.registrar.register(a)
    assert stored(w) == {a.actor_id} and core.status()["unverified"] == 0


# --- I5: records of dead actors are dropped within a bound ---------------------------------


@pytest.mark.parametrize("scope", ["serve", "app", "deployment"])
async def test_the_record_of_a_dead_actor_is_dropped_within_the_sweep_bound(scope):
    w = World()
    w.owners.deploy("shop", "D")
    core = await w.core()
    a = w.actor()
    owner = {"serve": ("",), "app": ("shop",), "deployment": ("shop", "D")}[scope]
    await core.registrar.register(owned(a, scope, *owner))
    w.table.die(a.actor_id)  # a replica restart took its helper along
    start = w.clock.now
    bound = core.config.liveness_interval_s + 2 * core.config.reconcile_interval_s
    while a.actor_id in stored(w):
        assert w.clock.now - start <= bound, "record of a dead actor outlived the bound"
        await w.ticks(core, 1)
    assert w.killer.kills == []


async def test_the_sweep_costs_one_bulk_read_per_interval_however_many_records():
    """Issue 14, target 2: no lookup per record, and a bound set by time."""
    w = World()
    core = await w.core()
    for _ in range(1000):
        await core.registrar.register(upstream(w.actor()))
    reads, lookups = w.table.bulk_reads, w.table.lookups
    await w.ticks(core, 60)  # 30 s
    assert 5 <= w.table.bulk_reads - reads <= 7  # every liveness interval (5 s)
    assert w.table.lookups == lookups
    assert core.status()["unverified"] == 0  # every record checked by those reads


async def test_the_sweep_drops_a_thousand_dead_records_with_one_prefix_delete():
    w = World()
    core = await w.core()
    regs = [w.actor() for _ in range(1000)]
    for r in regs:
        await core.registrar.register(upstream(r))
    keep = regs[-1]
    for r in regs[:-1]:
        w.table.die(r.actor_id)
    await w.ticks(core, 12)
    assert stored(w) == {keep.actor_id} and w.killer.kills == []
    assert len(w.store.prefix_deletes) >= 1  # buckets, not 999 deletes


def test_dead_actors_records_go_within_the_sweep_bound_while_an_owner_pass_waits_for_an_undying_actor():
    """Found by the simulation (tests/no_ray/test_simulation.py, seeds 53, 954 and 975 of
    1000): the owner pass ran inside the reconcile tick, so while it waited (up to
    ``confirm_death_s``, 5 s) for a killed actor that does not die, no sweep ran and the
    record of an actor killed in the same pass stayed: I5's bound did not hold."""
    async def main(loop):
        config = Config(liveness_interval_s=1.0)
        bound = config.liveness_interval_s + 2 * config.reconcile_interval_s
        w = World(config, clock=LoopClock(loop))
        w.owners.deploy("shop", "D")
        core = await w.core()
        stuck, helper, other = w.actor("stuck"), w.actor("helper"), w.actor("other")
        await core.registrar.register(owned(stuck, "app", "shop"))
        await core.registrar.register(owned(helper, "app", "shop"))
        await core.registrar.register(other)
        w.killer.undying.add(stuck.actor_id)
        deadline: dict[str, float] = {}
        w.killer.on_kill = lambda r, was_alive: r.actor_id == helper.actor_id and deadline.setdefault(
            r.actor_id, loop.time() + bound)
        reconcile = asyncio.ensure_future(core.run())
        await asyncio.sleep(2.0)
        w.owners.delete_app("shop")  # the owner pass kills helper, and stuck, which lives on
        w.table.die(other.actor_id)  # other dies on its own
        deadline[other.actor_id] = loop.time() + bound
        while stored(w) - {stuck.actor_id} or len(deadline) < 2:
            for actor_id, at in deadline.items():
                assert actor_id not in stored(w) or loop.time() <= at, "a dead actor's record outlived I5's bound"
            await asyncio.sleep(0.05)
        assert w.table.alive(stuck.actor_id) and stored(w) == {stuck.actor_id}
        reconcile.cancel()

    run_in_virtual_time(main)


# --- I1 and I3: passes never delete the record of a registration in flight ------------------


@pytest.mark.parametrize("racer", ["gc", "shutdown", "sweep"])
async def test_an_inflight_anonymous_registration_survives_a_concurrent_pass(racer):
    w = World()
    core = await w.core()
    a = w.actor(known_in=1.0)  # GCS learns of it a second from now
    task = asyncio.ensure_future(core.registrar.register(a))
    for _ in range(5):
        await asyncio.sleep(0)
    assert a.actor_id in stored(w)  # written, still waiting for the actor table
    if racer == "gc":
        await core.gc()
    elif racer == "sweep":
        await core.sweep(force=True)
    else:
        w.owners.serve_state = ServeState.SHUTTING_DOWN
        assert core.shutdown_step() is False
    record = await task
    assert a.actor_id in stored(w) and core.registry.get(a.actor_id).actor_id == record.actor_id
    if racer == "shutdown":  # and the shutdown then kills it
        await w.shutdown(core)
        assert not w.table.alive(a.actor_id) and stored(w) == set()


@contextlib.contextmanager
def _no_write_gate(monkeypatch):
    """The bug the gate closes: a bulk delete that does not wait for writes under way."""
    @contextlib.asynccontextmanager
    async def alone(self):
        yield

    with monkeypatch.context() as m:
        m.setattr(WriteGate, "alone", alone)
        yield


@pytest.mark.parametrize("gate", ["real", "removed"])
async def test_a_bulk_delete_never_deletes_a_record_whose_write_lands_after_its_listing(gate, monkeypatch):
    """Issue 14, target 3: the race of a prefix delete. 100 records of dead actors are
    dropped in bulk while a registration's put is in flight. Without the write gate the
    put lands between the listing and the prefix delete and the returned registration's
    record is deleted unchecked (a broken I1): the "removed" case shows the test can fail."""
    w = World()
    core = await w.core()
    await core.registry.deadlines()  # listed once a process (its listing must not open the gate below)
    dead = [w.actor() for _ in range(100)]
    for r in dead:
        await core.registrar.register(upstream(r))
        w.table.die(r.actor_id)
    await w.clock.sleep(10)
    live = w.actor("live")
    w.store.put_gate = Gate()
    registering = asyncio.ensure_future(core.registrar.register(live))
    while w.store.put_gate.waiting == 0:
        await asyncio.sleep(0)
    w.store.on_keys = w.store.put_gate.open  # without the gate: the put lands right after the listing

    async def open_when_the_drop_waits():
        while core.registry.gate._closed is None:  # the bulk drop holds the gate alone
            await asyncio.sleep(0)
        w.store.put_gate.open()

    watcher = asyncio.ensure_future(open_when_the_drop_waits())
    with _no_write_gate(monkeypatch) if gate == "removed" else contextlib.nullcontext():
        await core.sweep(force=True)
    await registering
    watcher.cancel()
    if gate == "real":
        assert stored(w) == {live.actor_id}  # registered: its record is there (I1)
        assert [r.actor_id for r in core.registry.records()] == [live.actor_id]
    else:
        assert live.actor_id not in stored(w)  # the bug this test exists for


@pytest.mark.parametrize("first", ["pass", "move"])
async def test_a_move_racing_an_orphan_pass_never_kills_a_registered_actor(first):
    """An owner added to an actor whose only owner was deleted, while the orphan pass that
    will kill it reads the actor table: either the addition wins (the actor lives, held
    by its new owner) or the pass does (the addition is refused). Never both."""
    w = World()
    w.owners.deploy("old", "D")
    w.owners.deploy("new", "D")
    core = await w.core()
    a = w.actor("n")
    await core.registrar.register(owned(a, "app", "old"))
    w.owners.delete_app("old")
    gate = w.table.gate = Gate()  # holds the first read of the table only
    if first == "pass":
        reaping = asyncio.ensure_future(core.tick())
        while gate.waiting == 0:
            await asyncio.sleep(0)
        w.table.gate = None
        moving = asyncio.ensure_future(core.registrar.register(owned(a, "app", "new")))
    else:
        moving = asyncio.ensure_future(core.registrar.register(owned(a, "app", "new")))
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
    else:  # told: registered; so it must be alive and held by its new owner
        assert w.table.alive(a.actor_id) and ("app", "new", "") in record.owners
        assert stored(w) == {a.actor_id}


async def test_only_the_current_record_is_killed_and_only_its_id():
    w = World()
    core = await w.core()
    a, bystander = w.actor("n"), w.actor("m")

    def check(record):
        assert core.registry.get(record.actor_id).actor_id == record.actor_id, "killed a record that is not current"
    w.killer.check = check
    await core.registrar.register(a)
    await shut_down(w, core)
    assert w.killer.kills == [a.actor_id] and w.table.alive(bystander.actor_id)


# --- retries back off --------------------------------------------------------------------


async def test_an_undying_actor_is_retried_with_backoff_and_does_not_block_others(caplog):
    w = World()
    w.owners.deploy("app", "D")
    core = await w.core()
    stuck, other = w.actor("stuck"), w.actor("other")
    await core.registrar.register(owned(stuck, "app", "app"))
    await core.registrar.register(other)
    w.killer.undying.add(stuck.actor_id)
    w.owners.delete_app("app")
    with caplog.at_level(logging.WARNING, logger="serve_cleanup"):
        t0 = w.clock.now
        while w.clock.now - t0 < 120:
            await w.ticks(core, 1)
    attempts = w.killer.kills.count(stuck.actor_id)
    assert 3 <= attempts <= 10, attempts  # ~240 ticks, but backoff up to 60 s
    assert len([r for r in caplog.records if "stuck" in r.getMessage()]) <= 4
    assert await core.unregister(other.actor_id)  # not queued behind the stuck actor


async def test_an_unreachable_actor_backs_off():
    w = World()
    w.owners.deploy("app", "D")
    core = await w.core()
    a = w.actor("n")
    await core.registrar.register(owned(a, "app", "app"))
    w.killer.unreachable.add(a.actor_id)
    w.owners.delete_app("app")
    calls = []
    w.killer.check = lambda r: calls.append(w.clock.now)
    await w.ticks(core, 120)  # 60 s
    assert 3 <= len(calls) <= 8
    assert a.actor_id in stored(w)


# --- I6: shutdown ------------------------------------------------------------------------


async def test_shutdown_with_only_an_inflight_registration_gives_up_without_empty_passes(caplog):
    w = World(Config(shutdown_grace_s=5.0))
    core = await w.core()
    a = w.actor()
    w.store.put_gate = Gate()  # the write never comes back
    task = asyncio.ensure_future(core.registrar.register(a))
    await asyncio.sleep(0)
    requests = w.store.requests
    with caplog.at_level(logging.INFO, logger="serve_cleanup"):
        steps = await shut_down(w, core)
    assert steps > 1 and w.store.requests == requests  # held, but no empty pass ran
    assert "giving up" in caplog.text and "in flight" in caplog.text
    assert core.status()["state"] == "gave up"
    task.cancel()


async def test_shutdown_kills_every_record_and_a_crash_mid_kill_is_finished_by_the_restart():
    w = World()
    core = await w.core()
    regs = [w.actor(f"a{i}") for i in range(5)]
    for r in regs:
        await core.registrar.register(r)
    w.crash_at = {"after_kill_before_delete"}
    with pytest.raises(Crash):
        await shut_down(w, core)
    core = await w.core()
    await w.shutdown(core)
    assert stored(w) == set() and not any(w.table.alive(r.actor_id) for r in regs)


async def test_shutdown_gives_up_on_an_undying_actor_after_the_grace_and_keeps_its_record():
    w = World(Config(shutdown_grace_s=3.0))
    core = await w.core()
    a = w.actor()
    await core.registrar.register(a)
    w.killer.undying.add(a.actor_id)
    await shut_down(w, core)
    assert stored(w) == {a.actor_id} and core.status()["state"] == "gave up"


async def test_no_registration_is_accepted_once_shutdown_let_the_controller_exit():
    """Closes the window between the final shutdown check and the process exit: a call
    arriving then is refused, so it can leave no record behind."""
    w = World()
    core = await w.core()
    w.owners.serve_state = ServeState.SHUTTING_DOWN
    assert core.shutdown_step() is True and core.status()["state"] == "closed"
    with pytest.raises(RegistrationError, match="finished shutting down"):
        await core.registrar.register(w.actor())
    assert stored(w) == set()


async def test_after_a_shutdown_gave_up_even_a_repeat_is_refused():
    w = World(Config(shutdown_grace_s=1.0))
    core = await w.core()
    a = w.actor()
    await core.registrar.register(a)
    w.killer.undying.add(a.actor_id)
    await shut_down(w, core)  # gives up; the record stays
    with pytest.raises(RegistrationError, match="finished shutting down"):
        await core.registrar.register(a)


async def test_shutdown_over_many_dead_records_is_one_prefix_delete_and_kills_only_the_live():
    """Issue 14, target 3: 100,000 records of dead actors in seconds, not one delete each."""
    w = World()
    core = await w.core()
    regs = [w.actor() for _ in range(2000)]
    for r in regs:
        await core.registrar.register(upstream(r))
    for r in regs[:1900]:
        w.table.die(r.actor_id)
    for r in regs[1900:1950]:
        w.table.actors.pop(r.actor_id)  # long gone from the table
    await w.clock.sleep(10)
    deletes_before = w.store.requests
    await shut_down(w, core)
    assert stored(w) == set()
    assert sorted(w.killer.kills) == sorted(r.actor_id for r in regs[1950:])
    assert w.store.requests - deletes_before <= 10  # listings, a handle read and prefix deletes
    assert w.table.lookups == 0


async def test_shutdown_kills_many_live_actors_with_bulk_reads():
    w = World()
    core = await w.core()
    regs = [w.actor(f"a{i}") for i in range(1000)]
    for r in regs:
        await core.registrar.register(upstream(r))
    await shut_down(w, core)
    assert stored(w) == set() and not any(w.table.alive(r.actor_id) for r in regs)
    assert w.table.lookups == 0 and w.table.bulk_reads <= 10


async def test_unregister_removes_without_killing():
    w = World()
    core = await w.core()
    a = w.actor()
    await core.registrar.register(a)
    assert await core.unregister(a.actor_id) is True
    assert await core.unregister(a.actor_id) is False
    await shut_down(w, core)
    assert w.table.alive(a.actor_id) and w.killer.kills == []


# --- reconcile and gc --------------------------------------------------------------------


async def test_gc_collects_orphans_and_dead_but_not_live_or_young_unknown():
    w = World()
    w.owners.deploy("gone", "D")
    core = await w.core()
    orphan, dead, live = w.actor("o"), w.actor("d"), w.actor("l")
    await core.registrar.register(owned(orphan, "app", "gone"))
    await core.registrar.register(dead)
    await core.registrar.register(live)
    young = w.actor()
    await core.registrar.register(upstream(young))
    w.table.actors.pop(young.actor_id)  # unknown, but registered a moment ago
    w.owners.delete_app("gone")
    w.table.die(dead.actor_id)
    dry = await core.gc(dry_run=True)
    assert {d["actor_id"] for d in dry} == {orphan.actor_id, dead.actor_id}
    assert len(stored(w)) == 4
    result = await core.gc()
    assert {d["actor_id"]: d["outcome"] for d in result} == {
        orphan.actor_id: Outcome.KILLED.value, dead.actor_id: Outcome.ALREADY_DEAD.value}
    assert stored(w) == {live.actor_id, young.actor_id}


async def test_reconcile_kills_orphans_after_a_restart_but_not_before_recovery():
    w = World()
    w.owners.deploy("app", "D")
    a = w.actor()
    await (await w.core()).registrar.register(owned(a, "deployment", "app", "D"))
    w.owners.delete_app("app")  # deleted while the controller was down
    w.owners.serve_state = ServeState.RECOVERING
    core = await w.core()
    await w.ticks(core, 3)
    assert w.table.alive(a.actor_id)
    w.owners.serve_state = ServeState.RUNNING
    await w.ticks(core, 4)  # the owner pass runs beside the ticks
    assert not w.table.alive(a.actor_id) and stored(w) == set()


async def test_the_outcomes_of_a_pass_keep_the_order_of_its_records():
    w = World()
    core = await w.core()
    regs = [w.actor() for _ in range(3)]
    for r in regs:
        await core.registrar.register(r)
    w.table.die(regs[1].actor_id)
    outcomes = await core.run_pass(core.registry.records(), Reason.GC)
    assert outcomes == [Outcome.KILLED, Outcome.ALREADY_DEAD, Outcome.KILLED]


async def test_registrations_are_summed_up_in_the_log_not_one_info_line_each(caplog):
    w = World()
    core = await w.core()
    with caplog.at_level(logging.INFO, logger="serve_cleanup"):
        for _ in range(5):
            await core.registrar.register(w.actor())
        assert "registered" not in caplog.text
        await w.ticks(core, 1)
    assert "5 new registration(s) accepted" in caplog.text and "serve=5" in caplog.text
