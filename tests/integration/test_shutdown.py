"""Shutdown finishes the job even when the controller dies in the middle of it."""

from __future__ import annotations

import time

import pytest
import ray
from ray import serve

import serve_cleanup
from ray_helpers import (
    actor_state,
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


@pytest.mark.parametrize("delay_s", [0.0, 0.3, 0.8])
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
