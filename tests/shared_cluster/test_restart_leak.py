"""The bug this package exists for: a controller restart makes Serve forget registrations."""

from __future__ import annotations

import pytest
import ray
from ray import serve

from ray_helpers import (
    DEPLOYMENT,
    crash_plain_controller_and_wait,
    TEST_NAMESPACE,
    Aux,
    actor_state,
    assert_stays,
    kill_controller_and_wait_restart,
    kv_record_keys,
    wait_dead,
)
from serve_cleanup.serve_adapter import _ray

pytestmark = pytest.mark.ray


@serve.deployment(num_replicas=2, **DEPLOYMENT)
class RegistersThroughUpstream:
    """Like PrefixCacheAffinityRouter: a shared named detached actor, registered by
    every replica with the controller's upstream method."""

    def __init__(self, name: str) -> None:
        aux = Aux.options(
            name=name, namespace=TEST_NAMESPACE, lifetime="detached", get_if_exists=True
        ).remote()
        ctrl = ray.get_actor(_ray.SERVE_CONTROLLER_NAME, namespace=_ray.SERVE_NAMESPACE)
        ray.get(ctrl._register_shutdown_cleanup_actor.remote(aux))

    def __call__(self) -> str:
        return "ok"


def _deploy_and_get_aux(name: str):
    serve.run(RegistersThroughUpstream.bind(name), name=f"app-{name}", route_prefix=None)
    return ray.get_actor(name, namespace=TEST_NAMESPACE)


@pytest.mark.smoke
def test_restart_then_shutdown_leaks_nothing(durable_serve, actors, unique):
    """Two controller restarts (each one rereads the records), then shutdown."""
    aux = _deploy_and_get_aux(f"aux-{unique}")
    bystander = actors(f"bystander-{unique}")
    assert len(kv_record_keys()) == 1  # two replicas registered it, stored once

    for _ in range(2):
        status = kill_controller_and_wait_restart()
        assert status["records"] == 1

    serve.shutdown()
    wait_dead(aux)
    assert actor_state(bystander._actor_id.hex()) == "ALIVE"
    assert kv_record_keys() == []


@pytest.mark.smoke
def test_plain_serve_leaks_after_restart(plain_serve, unique):
    """Regression guard: the same scenario on upstream Serve leaks the actor.

    If this starts failing, upstream fixed the bug (or the scenario no longer
    reproduces it, which would make the test above meaningless)."""
    aux = _deploy_and_get_aux(f"aux-{unique}")
    crash_plain_controller_and_wait()
    serve.shutdown()
    try:
        # A negative needs a window: upstream would have issued its kill before exiting.
        assert_stays(lambda: actor_state(aux._actor_id.hex()) == "ALIVE", 3.0, "plain Serve leaks")
    finally:
        ray.kill(aux, no_restart=True)


def test_plain_serve_without_restart_kills(plain_serve, unique):
    """Sanity check of the guard above: without a restart, upstream does kill it."""
    aux = _deploy_and_get_aux(f"aux-{unique}")
    serve.shutdown()
    wait_dead(aux)
