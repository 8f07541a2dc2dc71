"""Shutdown finishes the job even when the controller dies in the middle of it.

From Ray 2.56 Serve itself resumes an interrupted shutdown (``SHUTDOWN_IN_PROGRESS_KEY``);
before that the durable controller does it from its own flag (see ``_compat``). The
``wait=False`` test below fails on 2.54/2.55 without that flag.

Each kill lands at an observed step of the shutdown, not after a sleep: the test polls
(with a deadline, and no pause between tries: the reaping step lasts ~0.1 s) until the
step is visible from outside, then kills the controller.
"""

from __future__ import annotations

import threading
import pytest
import ray
from ray import serve

import serve_cleanup
from serve_cleanup.serve_adapter.controller import ShutdownFlag
from ray_helpers import (
    kv,
    actor_state,
    assert_stays,
    controller_handle,
    controller_status,
    kv_record_keys,
    wait_dead,
    wait_for,
)
from ray.serve._private.common import REPLICA_ID_FULL_ID_STR_PREFIX
from serve_cleanup.serve_adapter import _ray
from serve_cleanup.client.controller import find_controller

pytestmark = pytest.mark.ray


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0})
class Slow:
    def __call__(self) -> str:
        return "ok"


def _replica_ids(app: str) -> list[str]:
    prefix = f"{REPLICA_ID_FULL_ID_STR_PREFIX}{app}#"
    return [
        ray.get_actor(e["name"], namespace=e["namespace"])._actor_id.hex()
        for e in ray.util.list_named_actors(all_namespaces=True)
        if e["namespace"] == _ray.SERVE_NAMESPACE and e["name"].startswith(prefix)
    ]


def _shutting_down() -> bool:
    return controller_status()["shutting_down"]


# The observed step after which the controller is killed:
#   flag      the controller reports it is shutting down (the apps are still there);
#   app_gone  every replica of the app is dead (apps torn down; the cleanup has not run);
#   reaping   the first registered actor is dead (the cleanup pass is under way).
@pytest.mark.parametrize("step", ["flag", "app_gone", pytest.param("reaping", marks=pytest.mark.smoke)])
def test_controller_killed_mid_shutdown(fresh_durable_serve, actors, unique, step):
    serve.run(Slow.bind(), name="slow", route_prefix=None)  # makes shutdown take a while
    replicas = _replica_ids("slow")
    assert len(replicas) == 2
    registered = [actors(f"mid-{unique}-{i}") for i in range(3)] + [actors()]
    for a in registered:
        serve_cleanup.register(a)
    bystander = actors(f"by-{unique}")
    registered_ids = [a._actor_id.hex() for a in registered]

    ctrl = controller_handle()
    ctrl_id = ctrl._actor_id.hex()
    assert not _shutting_down()
    ray.get(ctrl.graceful_shutdown.remote(wait=False))
    if step == "flag":
        wait_for(_shutting_down, 30, "the controller to report that it is shutting down", interval_s=0)
        assert all(actor_state(r) == "ALIVE" for r in replicas), "the app was already gone"
    elif step == "app_gone":
        wait_for(lambda: all(actor_state(r) == "DEAD" for r in replicas), 60, "the replicas to die", interval_s=0)
    else:
        wait_for(lambda: any(actor_state(a) == "DEAD" for a in registered_ids), 60,
                 "the first registered actor to die", interval_s=0)
    ray.kill(ctrl, no_restart=False)

    # The restarted controller finds Serve's shutdown flag and our records, finishes
    # the shutdown, kills every registered actor, and exits for good.
    wait_for(lambda: find_controller() is None, 60, "the controller to finish shutdown")
    # The crash did land mid-shutdown: the controller was restarted once before it exited.
    info = _ray.actor_entry(ctrl_id)
    assert info.num_restarts == 1, "the kill landed after shutdown finished: the test proved nothing"
    for a in registered:
        wait_dead(a)
    assert kv_record_keys() == []
    assert actor_state(bystander._actor_id.hex()) == "ALIVE"
    serve.shutdown()  # no-op; keeps the client state clean


@pytest.mark.smoke
def test_controller_killed_during_a_serve_shutdown_call(fresh_durable_serve, actors, unique):
    """``serve.shutdown()`` is waiting when the controller dies: Ray retries its
    ``graceful_shutdown`` call on the restarted controller (max_task_retries=-1), which
    finishes the shutdown on every supported release; the call returns."""
    serve.run(Slow.bind(), name="slow", route_prefix=None)
    registered = [actors(f"inflight-{unique}"), actors()]
    for a in registered:
        serve_cleanup.register(a)
    ctrl = controller_handle()
    ctrl_id = ctrl._actor_id.hex()
    caller = threading.Thread(target=serve.shutdown, daemon=True)
    caller.start()
    wait_for(
        lambda: ray.get(ctrl.serve_cleanup_status.remote(), timeout=5)["shutting_down"],
        30, "the shutdown to start",
    )
    ray.kill(ctrl, no_restart=False)

    wait_for(lambda: find_controller() is None, 60, "the controller to finish shutdown")
    caller.join(timeout=60)
    assert not caller.is_alive(), "serve.shutdown() did not return"
    info = _ray.actor_entry(ctrl_id)
    assert info.num_restarts == 1, "the kill landed after shutdown finished: the test proved nothing"
    for a in registered:
        wait_dead(a)
    assert kv_record_keys() == []


@pytest.mark.smoke
@pytest.mark.skipif(_ray.SERVE_RESUMES_SHUTDOWN, reason="Ray >= 2.56 resumes a shutdown itself")
def test_a_stale_shutdown_flag_does_not_stop_a_new_controller(no_serve):
    """Before 2.56 the durable controller's own shutdown flag names the controller actor
    that wrote it: a new controller ignores (and deletes) a flag some other one left."""
    kv().put(ShutdownFlag.KEY, b"ff" * 16)
    serve_cleanup.start()
    assert controller_status()["shutting_down"] is False
    assert_stays(lambda: find_controller() is not None, 2.0, "the new controller to keep running")
    assert kv().get(ShutdownFlag.KEY) is None
