"""Shutdown finishes the job even when the controller dies in the middle of it.

From Ray 2.56 Serve itself resumes an interrupted shutdown (``SHUTDOWN_IN_PROGRESS_KEY``);
before that the durable controller does it from its own flag (see ``_compat``). The
``wait=False`` test below fails on 2.54/2.55 without that flag.
"""

from __future__ import annotations

import threading
import time

import pytest
import ray
from ray import serve

import serve_cleanup
from ray_helpers import (
    _teardown_serve,
    actor_state,
    assert_stays,
    controller_status,
    controller_handle,
    kv_record_keys,
    wait_dead,
    wait_for,
)
from serve_cleanup import _compat, client

pytestmark = pytest.mark.ray


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0})
class Slow:
    def __call__(self) -> str:
        return "ok"


@pytest.mark.parametrize("delay_s", [0.0, pytest.param(0.3, marks=pytest.mark.smoke), 0.8])
def test_controller_killed_mid_shutdown(durable_serve, actors, unique, delay_s):
    serve.run(Slow.bind(), name="slow", route_prefix=None)  # makes shutdown take a while
    registered = [actors(f"mid-{unique}-{i}") for i in range(3)] + [actors()]
    for a in registered:
        serve_cleanup.register(a)
    bystander = actors(f"by-{unique}")

    ctrl = controller_handle()
    ctrl_id = ctrl._actor_id.hex()
    ray.get(ctrl.graceful_shutdown.remote(wait=False))
    time.sleep(delay_s)  # not synchronisation: the point at which the crash is injected
    ray.kill(ctrl, no_restart=False)

    # The restarted controller finds Serve's shutdown flag and our records, finishes
    # the shutdown, kills every registered actor, and exits for good.
    wait_for(lambda: client.find_controller() is None, 60, "the controller to finish shutdown")
    # The crash did land mid-shutdown: the controller was restarted once before it exited.
    info = _compat.lookup_actor_sync(_compat.driver_gcs_client(), ctrl_id, 5.0)
    assert info.num_restarts == 1, "the kill landed after shutdown finished: the test proved nothing"
    for a in registered:
        wait_dead(a)
    assert kv_record_keys() == []
    assert actor_state(bystander._actor_id.hex()) == "ALIVE"
    serve.shutdown()  # no-op; keeps the client state clean


@pytest.mark.smoke
def test_controller_killed_during_a_serve_shutdown_call(durable_serve, actors, unique):
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

    wait_for(lambda: client.find_controller() is None, 60, "the controller to finish shutdown")
    caller.join(timeout=60)
    assert not caller.is_alive(), "serve.shutdown() did not return"
    info = _compat.lookup_actor_sync(_compat.driver_gcs_client(), ctrl_id, 5.0)
    assert info.num_restarts == 1, "the kill landed after shutdown finished: the test proved nothing"
    for a in registered:
        wait_dead(a)
    assert kv_record_keys() == []


@pytest.mark.smoke
@pytest.mark.skipif(_compat.SERVE_RESUMES_SHUTDOWN, reason="Ray >= 2.56 resumes a shutdown itself")
def test_a_stale_shutdown_flag_does_not_stop_a_new_controller(ray_cluster):
    """Before 2.56 the durable controller's own shutdown flag names the controller actor
    that wrote it: a new controller ignores (and deletes) a flag some other one left."""
    _teardown_serve()
    gcs = _compat.driver_gcs_client()
    key = (_compat.serve_kv_key_prefix() + _compat.SHUTDOWN_FLAG_KEY).encode()
    gcs.internal_kv_put(key, b"ff" * 16, True, _compat.SERVE_INTERNAL_KV_NAMESPACE)
    serve_cleanup.start()
    assert controller_status()["shutting_down"] is False
    assert_stays(lambda: client.find_controller() is not None, 2.0, "the new controller to keep running")
    assert gcs.internal_kv_get(key, _compat.SERVE_INTERNAL_KV_NAMESPACE) is None
    _teardown_serve()
