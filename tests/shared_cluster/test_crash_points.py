"""Crash the controller right after each persistence step; the end state stays correct.

Uses the package's crash-point switch (``serve_cleanup.faults``), set for the controller
through ``controller_options.runtime_env``. Each point crashes once per cluster; the KV
marker it leaves proves the crash happened.
"""

from __future__ import annotations

import pytest
import ray
from ray import serve

import serve_cleanup
from ray_helpers import (
    NO_PROXY,
    kv,
    _teardown_serve,
    actor_state,
    controller_handle,
    kill_controller_and_wait_restart,
    kv_record_keys,
    wait_dead,
    wait_for,
)
from serve_cleanup.serve_adapter import _ray, faults
from serve_cleanup.client.controller import find_controller

pytestmark = pytest.mark.ray


def _crashed(point: str) -> bool:
    return kv().get(faults.MARKER_PREFIX + point) is not None


def _restarts() -> int:
    info = _ray.actor_entry(controller_handle()._actor_id.hex())
    return info.num_restarts


@pytest.fixture
def crash_at(ray_cluster, request):
    point = request.param
    def clear_marker():
        kv().delete(faults.MARKER_PREFIX + point)

    _teardown_serve()
    clear_marker()
    serve_cleanup.start(
        controller_options={"runtime_env": {"env_vars": {"SERVE_CLEANUP_CRASH_POINTS": point}}},
        **NO_PROXY,
    )
    yield point
    _teardown_serve()
    clear_marker()


@pytest.mark.parametrize("crash_at", ["after_record_write"], indirect=True)
def test_crash_after_record_write(crash_at, actors):
    aux = actors()
    # The controller dies after the KV write, before answering; Ray retries the call on
    # the restarted controller, which already holds the record.
    record = serve_cleanup.register(aux)
    assert _crashed(crash_at) and _restarts() == 1
    assert kv_record_keys() == [record.key]
    other = actors()
    serve_cleanup.register(other)  # the point crashes once: the controller is healthy
    serve.shutdown()
    wait_dead(aux)
    wait_dead(other)
    assert kv_record_keys() == []


@pytest.mark.parametrize("crash_at", ["after_kill_before_delete"], indirect=True)
def test_crash_after_kill_before_delete(crash_at, actors, unique):
    registered = [actors(f"kbd-{unique}"), actors(), actors()]
    for a in registered:
        serve_cleanup.register(a)
    bystander = actors()
    serve.shutdown()  # the first kill crashes the controller; the restarted one finishes
    wait_for(lambda: find_controller() is None, 60, "shutdown to finish")
    assert _crashed(crash_at)
    for a in registered:
        wait_dead(a)
    assert kv_record_keys() == []
    assert actor_state(bystander._actor_id.hex()) == "ALIVE"


@pytest.mark.parametrize("crash_at", ["mid_rehydrate"], indirect=True)
def test_crash_mid_rehydrate(crash_at, actors):
    registered = [actors() for _ in range(3)]
    for a in registered:
        serve_cleanup.register(a)
    status = kill_controller_and_wait_restart()  # rehydrate crashes once, then succeeds
    assert _crashed(crash_at)
    assert _restarts() == 2  # our kill + the injected crash: no crash loop
    assert status["records"] == 3
    serve.shutdown()
    for a in registered:
        wait_dead(a)
    assert kv_record_keys() == []


@pytest.mark.parametrize("crash_at", ["after_record_write", "after_refusal_decided"], indirect=True)
def test_refusal_of_a_dead_actor_survives_a_crash(crash_at, actors):
    """Issue 9, defect 2: the record is written before the actor is checked; a crash
    before the take-back used to leave it, and Ray's retry of the call then got the
    stored record back as success."""
    aux = actors()
    ray.kill(aux, no_restart=True)
    wait_dead(aux)
    with pytest.raises(serve_cleanup.DeadActorError):
        serve_cleanup.register(aux)  # crashes once; the retried call is refused again
    assert _crashed(crash_at) and _restarts() == 1
    assert kv_record_keys() == []


@pytest.mark.parametrize("crash_at", ["after_lookup_before_drop"], indirect=True)
def test_crash_while_dropping_a_dead_actors_record(crash_at, actors):
    aux = actors()
    serve_cleanup.register(aux)
    ray.kill(aux, no_restart=True)  # the liveness sweep finds it dead and crashes
    wait_for(lambda: _crashed(crash_at), 30, "the injected crash")
    wait_for(lambda: kv_record_keys() == [], 30, "the restarted controller to drop the record")
    assert _restarts() == 1


@ray.remote(num_cpus=0)
class _Flusher:
    """Its ``__ray_shutdown__`` writes ``marker`` (after ``hang_s``: a hook that hangs)."""

    def __init__(self, marker: str, hang_s: float = 0.0) -> None:
        self.marker, self.hang_s = marker, hang_s

    def pid(self) -> int:
        import os

        return os.getpid()

    def __ray_shutdown__(self) -> None:
        import time

        time.sleep(self.hang_s)
        with open(self.marker, "w") as f:
            f.write("flushed")


@pytest.mark.parametrize("crash_at", ["mid_graceful_exit"], indirect=True)
def test_crash_mid_graceful_exit(crash_at, tmp_path):
    """The controller dies after asking two actors to exit gracefully (their deadline
    stored); the restarted controller resumes the shutdown, finds both DEAD in the actor
    table (Ray says so as soon as an exit starts) with their deadline, lets the one whose
    hook ends finish and ends the hanging one's process at the deadline."""
    import os

    flushes = _Flusher.remote(str(tmp_path / "flushes"), hang_s=1.0)
    hangs = _Flusher.remote(str(tmp_path / "hangs"), hang_s=600)
    pids = ray.get([flushes.pid.remote(), hangs.pid.remote()])
    serve_cleanup.register(flushes, grace_s=4)
    serve_cleanup.register(hangs, grace_s=2)
    serve.shutdown()
    wait_for(lambda: find_controller() is None, 60, "shutdown to finish")
    assert _crashed(crash_at)
    wait_for(lambda: os.path.exists(tmp_path / "flushes"), 10, "the flushing hook to have run")
    wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), 10, "both processes to end")
    assert not os.path.exists(tmp_path / "hangs") and kv_record_keys() == []
    assert not [k for k in kv().keys("serve-cleanup-deadline-")]  # the deadlines went with the records
