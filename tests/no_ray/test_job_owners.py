"""Ray jobs as owners (issue 22), deterministically and without Ray: ``scope="job"``,
the owner's first name the job's hex id. The actor is killed once its job has ended while
Serve keeps running; a job owner and an app owner on one actor are an owner set. The job
table (whose RPC reads the whole table) is read at most once a liveness interval, and
only while a job owns something.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from fakes import SERVE_JOB, World
from serve_cleanup.core import Config, Registration
from serve_cleanup.core.ports import ServeState
from serve_cleanup.errors import OwnerNotFoundError

pytestmark = pytest.mark.timeout(30)

JOB, OTHER = "02000000", "03000000"


def by_job(reg: Registration, job: str) -> Registration:
    return dataclasses.replace(reg, scope="job", app=job)


async def ticks(w: World, core, seconds: float) -> None:
    """The reconcile loop for ``seconds`` of virtual time, then its passes to their end."""
    end = w.clock.now + seconds
    while w.clock.now < end:
        await core.tick()
        await w.clock.sleep(core.config.reconcile_interval_s)
    await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}), return_exceptions=True)


async def test_an_actor_dies_when_its_job_ends_and_serve_keeps_running():
    w = World()
    w.jobs.running |= {JOB, OTHER}
    core = await w.core()
    mine, theirs = w.actor("mine"), w.actor("theirs")
    await core.registrar.register(by_job(mine, JOB))
    await core.registrar.register(by_job(theirs, OTHER))
    await ticks(w, core, 6)
    assert w.table.alive(mine.actor_id) and w.table.alive(theirs.actor_id)
    w.jobs.running.discard(JOB)  # the driver exits
    await ticks(w, core, 2 * Config.liveness_interval_s)
    assert not w.table.alive(mine.actor_id) and w.table.alive(theirs.actor_id)
    assert set(w.store.records()) == {theirs.actor_id}
    assert core.status()["state"] == "open" and w.owners.serve_state is ServeState.RUNNING


async def test_a_job_and_an_app_share_an_actor_as_an_owner_set():
    w = World()
    w.jobs.running.add(JOB)
    w.owners.deploy("app")
    core = await w.core()
    a = w.actor("shared")
    await core.registrar.register(by_job(a, JOB))
    await core.registrar.register(dataclasses.replace(a, scope="app", app="app"))
    assert set(core.registry.get(a.actor_id).owners) == {("job", JOB, ""), ("app", "app", "")}
    w.jobs.running.discard(JOB)
    await ticks(w, core, 2 * Config.liveness_interval_s)
    assert w.table.alive(a.actor_id)  # the app still owns it
    w.owners.delete_app("app")
    await ticks(w, core, 3)
    assert not w.table.alive(a.actor_id) and w.store.records() == {}


async def test_a_job_that_ended_while_the_controller_was_down_is_acted_on_after_the_restart():
    w = World()
    w.jobs.running.add(JOB)
    core = await w.core()
    a = w.actor("mine")
    await core.registrar.register(by_job(a, JOB))
    w.jobs.running.discard(JOB)
    core = await w.core()  # restarted: the owner is read back from the key
    await ticks(w, core, 2)
    assert not w.table.alive(a.actor_id) and w.store.records() == {}


async def test_a_job_owner_dies_at_shutdown_like_every_registration():
    w = World()
    w.jobs.running.add(JOB)
    core = await w.core()
    a = w.actor("mine")
    await core.registrar.register(by_job(a, JOB))
    w.owners.serve_state = ServeState.SHUTTING_DOWN
    await w.shutdown(core)
    assert not w.table.alive(a.actor_id)


async def test_serves_own_job_and_an_ended_job_are_refused_and_store_nothing():
    w = World()
    core = await w.core()
    with pytest.raises(ValueError, match="is the job that started Serve"):
        await core.registrar.register(by_job(w.actor(), SERVE_JOB))
    with pytest.raises(OwnerNotFoundError, match=f"job {JOB} has ended"):
        await core.registrar.register(by_job(w.actor(), JOB))
    with pytest.raises(ValueError, match="scope='job' needs job=<a Ray job id in hex"):
        await core.registrar.register(by_job(w.actor(), "not-a-job"))
    assert w.store.records() == {}


async def test_the_job_table_is_read_once_a_liveness_interval_and_only_while_a_job_owns_something():
    w = World()
    w.jobs.running.add(JOB)
    w.owners.deploy("app")
    core = await w.core()
    await core.registrar.register(dataclasses.replace(w.actor(), scope="app", app="app"))
    await ticks(w, core, 30)
    assert w.jobs.reads == 0  # no job owner: never read
    await core.registrar.register(by_job(w.actor(), JOB))
    reads = w.jobs.reads  # the registration's own check: one filtered read
    await ticks(w, core, 60)
    assert 1 <= w.jobs.reads - reads <= 60 / Config.liveness_interval_s + 1


async def test_a_job_checked_running_is_not_read_again_for_each_registration():
    """Issue 22 row 3: GCS copies its whole job table for each read, filtered or not. A
    job that a read found running is trusted until the next read is due."""
    w = World()
    w.jobs.running.add(JOB)
    core = await w.core()
    for _ in range(20):
        await core.registrar.register(by_job(w.actor(), JOB))
    assert w.jobs.reads == 1


class SlowJobs:
    """A job table whose reads take ``took`` seconds (a large table)."""

    def __init__(self, w: World, took: float) -> None:
        self.w, self.took, self.reads = w, took, 0

    async def ended(self, job_ids):
        self.reads += 1
        await self.w.clock.sleep(self.took)
        return set()

    async def alive(self, job_id):
        return True


async def test_a_slow_job_table_is_read_less_often():
    w = World()
    slow = SlowJobs(w, took=0.05)  # 400 x 0.05 s = one read every 20 s
    w.jobs = slow
    core = await w.core()
    await core.registrar.register(by_job(w.actor(), JOB))
    await ticks(w, core, 60)
    assert 2 <= slow.reads <= 60 / 20 + 1, slow.reads


async def test_a_drivers_own_job_is_not_read_at_all():
    """The default job owner is the calling driver's own job, which runs: no read (row 3:
    every driver's first registration paid a copy of the whole job table)."""
    w = World()
    w.jobs.running.add(JOB)
    core = await w.core()
    await core.registrar.register(dataclasses.replace(by_job(w.actor(), JOB), callers_job=True))
    assert w.jobs.reads == 0
    await core.registrar.register(by_job(w.actor(), JOB))  # named explicitly: trusted as seen running
    assert w.jobs.reads == 0
