"""Graceful kills (issue 22), deterministically and without Ray: a registration's
``grace_s`` asks the actor to exit gracefully (``Killer.terminate``: Ray's
``__ray_terminate__``, which runs ``__ray_shutdown__``) before the forced kill, with a
deadline stored in the KV so that a restarted controller honours it.

The fakes' killer ends a terminated actor at once (``killer.graceful`` notes that its
hook ran) unless it is ``hanging``; time is virtual (``World``'s clock, which adds up
the sleeps of tasks that run side by side, so a bound here is "within a second").
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import math

import pytest

from fakes import Crash, World
from serve_cleanup.core import Registration
from serve_cleanup.core import records as rec
from serve_cleanup.core.ports import ServeState

pytestmark = pytest.mark.timeout(30)


class Kills:
    """The metrics port, keeping the kills: (reason, kind, how)."""

    def __init__(self) -> None:
        self.kills: list[tuple[str, str, str]] = []

    def registered(self, scope, kind="actor"): ...

    def killed(self, reason, kind="actor", how="forced"):
        self.kills.append((reason, kind, how))

    def kill_failed(self, reason, kind="actor"): ...

    def records(self, counts, set_aside, by_kind): ...

    def reconcile_duration(self, seconds): ...


def graceful(reg: Registration, grace_s: float, **owner: str) -> Registration:
    return dataclasses.replace(reg, grace_s=grace_s, **owner)


def world() -> World:
    w = World()
    w.metrics = Kills()
    return w


async def shut_down(w: World, core) -> float:
    """Serve's shutdown to its end; how long it took (virtual seconds)."""
    started = w.clock.now
    w.owners.serve_state = ServeState.SHUTTING_DOWN
    await w.shutdown(core)
    took = w.clock.now - started
    # The pass that emptied the registry ends its bookkeeping (metrics) after the step
    # that let the controller go: let it finish.
    await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}), return_exceptions=True)
    return took


async def settle() -> None:
    """Let every other task end, taking their exceptions (a task a crash left with an
    exception nobody takes is reported when it is collected, at a random later moment)."""
    await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}), return_exceptions=True)
    # What the dead process left (its coroutines, their finalizers) is collected here, not
    # in the middle of a later test (CPython 3.11.7's ast.parse fails with "AST
    # constructor recursion depth mismatch" when a finalizer runs Python code inside it).
    gc.collect()


def kill_times(w: World) -> dict[str, float]:
    """When each forced kill was sent (virtual time)."""
    times: dict[str, float] = {}
    w.killer.on_kill = lambda record, was_alive: times.setdefault(record.actor_id, w.clock.now)
    return times


def deadline_keys(w: World) -> list[str]:
    return [k for k in map(str, w.store.data) if rec.DEADLINE_PREFIX in k]


async def test_a_graceful_exit_runs_its_hook_and_counts_as_graceful():
    w = world()
    core = await w.core()
    a, b = w.actor("flusher"), w.actor("plain")
    await core.registrar.register(graceful(a, 5.0))
    await core.registrar.register(b)
    took = await shut_down(w, core)
    assert w.killer.graceful == [a.actor_id]  # b was killed at once: no hook
    assert not w.table.alive(a.actor_id) and not w.table.alive(b.actor_id)
    assert sorted(w.metrics.kills) == [("shutdown", "actor", "forced"), ("shutdown", "actor", "graceful")]
    assert w.store.records() == {} and deadline_keys(w) == []
    assert took < 1.0  # the exit ended at once: nobody waited for the deadline


async def test_a_hanging_exit_is_forced_at_its_deadline_not_before_and_not_much_after():
    w = world()
    core = await w.core()
    a = w.actor("hangs")
    await core.registrar.register(graceful(a, 4.0))
    w.killer.hanging.add(a.actor_id)
    times = kill_times(w)
    started = w.clock.now
    took = await shut_down(w, core)
    assert 4.0 <= times[a.actor_id] - started <= 4.0 + 1.0, times
    assert a.actor_id not in w.killer.in_hook and w.killer.graceful == []
    assert w.metrics.kills == [("shutdown", "actor", "forced")]
    assert took <= 4.0 + 1.5 and w.store.records() == {} and deadline_keys(w) == []


async def test_an_actor_of_several_registrations_gets_the_largest_grace():
    w = world()
    w.owners.deploy("a1")
    w.owners.deploy("a2")
    core = await w.core()
    a = w.actor("shared")
    await core.registrar.register(graceful(a, 2.0, scope="app", app="a1"))
    await core.registrar.register(graceful(a, 6.0, scope="app", app="a2"))
    await core.registrar.register(graceful(a, 1.0, scope="app", app="a2"))  # a repeat: nothing changes
    w.killer.hanging.add(a.actor_id)
    times = kill_times(w)
    started = w.clock.now
    await shut_down(w, core)
    assert 6.0 <= times[a.actor_id] - started <= 7.0


async def test_the_grace_is_read_back_from_the_values_after_a_restart():
    """The load reads keys only (grace unknown, 0 in memory); the kill reads the values."""
    w = world()
    core = await w.core()
    a = w.actor("flusher")
    await core.registrar.register(graceful(a, 3.0))
    core = await w.core()  # a restart
    assert core.registry.get(a.actor_id).grace_s == 0.0
    w.killer.hanging.add(a.actor_id)
    times = kill_times(w)
    started = w.clock.now
    await shut_down(w, core)
    assert 3.0 <= times[a.actor_id] - started <= 4.0


async def test_a_restarted_controller_honours_the_running_deadline_without_restarting_it():
    w = world()
    core = await w.core()
    a = w.actor("hangs")
    await core.registrar.register(graceful(a, 8.0))
    w.killer.hanging.add(a.actor_id)
    asked_at = w.clock.now
    w.crash_at = {"mid_graceful_exit"}
    with pytest.raises(Crash):
        await shut_down(w, core)
    await settle()  # the crashed pass's exception is taken, not left to the garbage collector
    # Ray's table says DEAD at once; the process is still in its hook.
    assert len(deadline_keys(w)) == 1 and not w.table.alive(a.actor_id) and a.actor_id in w.killer.in_hook
    await w.clock.sleep(3.0)  # Ray restarts the controller
    times = kill_times(w)
    core = await w.core()
    await shut_down(w, core)
    assert 8.0 <= times[a.actor_id] - asked_at <= 9.0, "the deadline was restarted, not honoured"
    assert w.store.records() == {} and deadline_keys(w) == []


async def test_a_controller_back_after_the_deadline_kills_at_once():
    w = world()
    core = await w.core()
    a = w.actor("hangs")
    await core.registrar.register(graceful(a, 2.0))
    w.killer.hanging.add(a.actor_id)
    w.crash_at = {"mid_graceful_exit"}
    with pytest.raises(Crash):
        await shut_down(w, core)
    await settle()  # the crashed pass's exception is taken, not left to the garbage collector
    await w.clock.sleep(5.0)  # longer than the grace
    core = await w.core()
    took = await shut_down(w, core)
    assert took < 1.0 and a.actor_id not in w.killer.in_hook


async def test_an_owner_deletion_exits_gracefully_too():
    w = world()
    w.owners.deploy("app")
    core = await w.core()
    a = w.actor("per-app")
    await core.registrar.register(graceful(a, 5.0, scope="app", app="app"))
    w.owners.delete_app("app")
    for _ in range(20):
        await core.tick()
        await w.clock.sleep(0.5)
        if not w.table.alive(a.actor_id):
            break
    await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}), return_exceptions=True)
    assert w.killer.graceful == [a.actor_id]
    assert w.metrics.kills == [("owner_deleted", "actor", "graceful")]


async def test_a_deadline_left_for_an_actor_no_longer_registered_is_deleted():
    """(left by a controller that crashed after the exit ended, before the delete)"""
    w = world()
    gone, a = w.actor("gone"), w.actor("flusher")
    await w.store.put(rec.deadline_key(gone.actor_id), b"1.0 proc-x")
    core = await w.core()  # its load lists the exits under way
    assert deadline_keys(w) == []
    await core.registrar.register(graceful(a, 1.0))
    await shut_down(w, core)
    assert deadline_keys(w) == []


@pytest.mark.parametrize("grace", [-1.0, rec.MAX_GRACE_S + 0.1, math.nan, math.inf])
async def test_a_grace_out_of_range_is_refused_and_stores_nothing(grace):
    w = world()
    core = await w.core()
    a = w.actor("x")
    with pytest.raises(ValueError, match="grace_s=.* is out of range: 0 .* to 10 seconds"):
        await core.registrar.register(graceful(a, grace))
    assert w.store.records() == {}


def test_grace_is_checked_for_type_and_kind():
    assert rec.check_grace(0) == 0.0 and rec.check_grace(rec.MAX_GRACE_S) == rec.MAX_GRACE_S
    with pytest.raises(TypeError, match="grace_s must be a number"):
        rec.check_grace(True)
    with pytest.raises(TypeError, match="grace_s must be a number"):
        rec.check_grace("5")
    with pytest.raises(ValueError, match="a placement group is removed at once"):
        rec.check_grace(1.0, rec.KIND_PLACEMENT_GROUP)


def test_the_grace_round_trips_through_the_value_and_an_absent_one_reads_as_zero():
    r = rec.Record("ab" * 16, "n", "ns", b"h", pairs=(((rec.SCOPE_SERVE, "", ""), 1.0),), grace_s=2.5)
    assert rec.decode(rec.encode(r)).grace_s == 2.5
    assert rec.decode(rec.encode(r.replace(grace_s=0.0))).grace_s == 0.0
    assert b"grace_s" not in rec.encode(r.replace(grace_s=0.0))  # 0.2.0's value, byte for byte


async def test_an_owner_added_after_a_restart_keeps_the_serve_keys_grace():
    """The serve key is replaced by the owner's key: its grace (in its value, unknown to a
    controller that loaded the keys) is read before, not lost."""
    w = world()
    w.owners.deploy("app")
    core = await w.core()
    a = w.actor("flusher")
    await core.registrar.register(graceful(a, 4.0))
    core = await w.core()  # restarted: grace 0 in memory
    await core.registrar.register(dataclasses.replace(a, scope="app", app="app"))
    w.killer.hanging.add(a.actor_id)
    times = kill_times(w)
    started = w.clock.now
    await shut_down(w, core)
    assert 4.0 <= times[a.actor_id] - started <= 5.0


async def test_a_deadline_stored_for_an_actor_still_alive_is_honoured_not_restarted():
    """The actor was asked to exit but still runs its queued calls (ALIVE) when the
    controller restarts: the stored deadline holds."""
    w = world()
    core = await w.core()
    a = w.actor("busy")
    await core.registrar.register(graceful(a, 6.0))
    w.killer.undying.add(a.actor_id)  # the exit is asked for, nothing happens yet
    asked_at = w.clock.now
    w.crash_at = {"mid_graceful_exit"}
    with pytest.raises(Crash):
        await shut_down(w, core)
    await settle()  # the crashed pass's exception is taken, not left to the garbage collector
    await w.clock.sleep(2.0)
    w.killer.undying.discard(a.actor_id)
    w.killer.hanging.add(a.actor_id)
    times = kill_times(w)
    core = await w.core()
    await shut_down(w, core)
    assert 6.0 <= times[a.actor_id] - asked_at <= 7.0, "the stored deadline was restarted"
