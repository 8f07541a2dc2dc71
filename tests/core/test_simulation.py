"""Seeded simulation of the core under random interleavings, failures and crashes.

In the spirit of FoundationDB's simulation tests: each seed drives a random mix of
concurrent registrations (named, anonymous and not yet known to GCS, moves between
owners), unregistrations, actor deaths, app deletions, gc passes, reconcile ticks, KV
write failures and controller crashes at random moments; a call cut by a crash is retried
on the restarted core, as Ray retries actor tasks. Then Serve shuts down and the
invariants of docs/architecture.md are checked. 40 seeds by default; a long run is
``pytest tests/unit/test_simulation.py --sim-seeds 2000``. A failing seed replays exactly:
``pytest tests/unit/test_simulation.py -k 'test_simulation[<seed>]'``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import Optional

import pytest

from fakes import Crash, World
from serve_cleanup.core import Config
from serve_cleanup.errors import OwnerNotFoundError, RegistrationError
from serve_cleanup.core.ports import ServeState

STEPS = 60


def pytest_generate_tests(metafunc):
    if "seed" in metafunc.fixturenames:
        metafunc.parametrize("seed", range(metafunc.config.getoption("--sim-seeds")))


async def _call(w: World, op, attempts: int = 20, retried: Optional[list] = None):
    """Run ``op(core)`` on the current core. A process that crashed mid-call never
    answers, whatever it was doing: the caller's call is retried on the restarted one."""
    for attempt in range(attempts):
        if attempt and retried is not None:
            retried.append(attempt)
        core = w.current
        try:
            result = await op(core)
        except Crash:
            if w.current is core:
                await w.core()  # Ray restarts the controller
            continue
        except BaseException:
            if w.current is not core:
                continue
            raise
        if w.current is not core:
            continue
        return result
    raise AssertionError("call retried forever")


@pytest.mark.timeout(60)
async def test_simulation(seed):
    rng = random.Random(seed)
    w = World(Config(shutdown_grace_s=600.0))
    w.owners.deploy("a1", "D1", "D2")
    w.owners.deploy("a2", "D1")
    await w.core()
    actors = []
    # Completion order of calls, per actor id: what the caller was last told.
    order = iter(range(10**9))
    returned: dict[str, int] = {}  # last successful registration
    unregistered: dict[str, int] = {}  # last unregister that completed
    unregistered_true: dict[str, tuple[int, int]] = {}  # ... said it removed a record (and kills so far)
    died_on_its_own: set[str] = set()
    ambiguous: set[str] = set()
    tasks = []

    async def register(reg, step):
        retried: list = []
        try:
            await _call(w, lambda core: core.register(reg), retried=retried)
        except OwnerNotFoundError:
            if retried:  # see docs/architecture.md, Limits: the first attempt's record
                ambiguous.add(reg.actor_id)  # may have been reaped with its owner
            return
        except (RegistrationError, ValueError):
            return
        returned[reg.actor_id] = next(order)

    async def unregister(actor_id, step):
        removed = await _call(w, lambda core: core.unregister(actor_id))
        unregistered[actor_id] = n = next(order)
        if removed:
            unregistered_true[actor_id] = (n, len(w.killer.kills))

    for step in range(STEPS):
        roll = rng.random()
        if roll < 0.35 or not actors:
            reg = w.actor(rng.choice(["", "n"]) + (str(step) if rng.random() < 0.5 else ""),
                          known_in=rng.choice([0.0, 0.0, 0.3, 1.5]))
            if rng.random() < 0.1:
                w.table.die(reg.actor_id)  # dead before it is registered
                died_on_its_own.add(reg.actor_id)
            actors.append(reg)
            tasks.append(asyncio.ensure_future(register(_owned(reg, rng, w), step)))
        elif roll < 0.45:
            tasks.append(asyncio.ensure_future(register(_owned(rng.choice(actors), rng, w), step)))
        elif roll < 0.52:
            tasks.append(asyncio.ensure_future(unregister(rng.choice(actors).actor_id, step)))
        elif roll < 0.60:
            victim = rng.choice(actors).actor_id
            if w.table.alive(victim):
                w.table.die(victim)
                died_on_its_own.add(victim)
        elif roll < 0.64:
            w.owners.delete_app(rng.choice(["a1", "a2"]))
        elif roll < 0.70:
            tasks.append(asyncio.ensure_future(_call(w, lambda core: core.gc())))
        elif roll < 0.80:
            tasks.append(asyncio.ensure_future(_call(w, lambda core: core.tick())))
        elif roll < 0.85:
            w.store.fail_puts += 1
        elif roll < 0.90:
            w.store.fail_deletes += 1
        elif roll < 0.95:
            await w.core()  # the controller crashes; Ray restarts it
        for _ in range(rng.randint(0, 4)):
            await asyncio.sleep(0)
        await w.clock.sleep(rng.choice([0.0, 0.05, 0.3]))

    await asyncio.gather(*tasks, return_exceptions=True)
    w.owners.serve_state = ServeState.SHUTTING_DOWN
    for _ in range(3):  # a crash in the middle of shutdown, sometimes
        try:
            await w.shutdown(w.current)
            break
        except Crash:
            await w.core()
    # I1 + I6: every actor whose registration returned (and was not unregistered after) is dead.
    for actor_id, n in returned.items():
        if unregistered.get(actor_id, -1) > n:
            continue
        assert not w.table.alive(actor_id), f"seed {seed}: registered actor {actor_id} leaked"
    # I3: only actors that were registered were killed; unregistered ones were left alone.
    for actor_id in w.killer.kills:
        assert actor_id in returned or actor_id in ambiguous, f"seed {seed}: killed {actor_id}, never registered"
    for actor_id, (n, kills_before) in unregistered_true.items():
        if returned.get(actor_id, -1) < n:
            assert actor_id not in w.killer.kills[kills_before:], (
                f"seed {seed}: actor {actor_id} was killed after its unregister returned"
            )
    # Nothing is left in the KV once shutdown finished.
    assert w.store.records() == {}, f"seed {seed}: records left {sorted(w.store.records())}"


def _owned(reg, rng: random.Random, w: World):
    scope = rng.choice(["serve", "serve", "app", "deployment"])
    if scope == "serve":
        return dataclasses.replace(reg, scope="serve", app="", deployment="")
    app = rng.choice(["a1", "a2"])
    deployment = rng.choice(["D1", "D2"]) if scope == "deployment" else ""
    return dataclasses.replace(reg, scope=scope, app=app, deployment=deployment)
