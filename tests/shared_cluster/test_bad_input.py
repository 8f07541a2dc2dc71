"""Bad input is refused with a clear error and stores nothing; bad state is set aside."""

from __future__ import annotations

import msgpack
import pytest
import ray
from ray import serve

import serve_cleanup
from ray_helpers import (
    kv,
    controller_handle,
    controller_status,
    kill_controller_and_wait_restart,
    kv_record_keys,
    wait_dead,
    wait_for,
)
from serve_cleanup.serve_adapter import _ray
from serve_cleanup.core import records

pytestmark = pytest.mark.ray


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Idle:
    def __call__(self) -> str:
        return "ok"


def test_not_a_handle_is_a_type_error(durable_serve):
    with pytest.raises(TypeError, match="ActorHandle"):
        serve_cleanup.register("not-an-actor")
    with pytest.raises(TypeError, match="ActorHandle"):
        ray.get(controller_handle()._register_shutdown_cleanup_actor.remote(42))
    assert kv_record_keys() == []


def test_dead_actor_is_refused_and_not_stored(durable_serve, actors):
    aux = actors()
    ray.kill(aux, no_restart=True)
    wait_dead(aux)
    with pytest.raises(serve_cleanup.DeadActorError, match="dead"):
        serve_cleanup.register(aux)
    assert kv_record_keys() == []
    assert controller_status()["records"] == 0


def test_the_upstream_method_accepts_a_dead_actor_as_plain_serve_and_the_sweep_drops_it(durable_serve, actors):
    """Upstream's `_register_shutdown_cleanup_actor` never refused a dead actor; the durable
    one keeps that (one KV put, no actor-table lookup) and the liveness sweep drops the
    record within I5's bound (liveness interval 5 s, after the 5 s unknown grace)."""
    aux = actors()
    ray.kill(aux, no_restart=True)
    wait_dead(aux)
    ray.get(controller_handle()._register_shutdown_cleanup_actor.remote(aux))
    wait_for(lambda: kv_record_keys() == [], 20, "the sweep to drop the dead actor's record")
    assert controller_status()["records"] == 0


def _serve_actor(prefix: str):
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] == _ray.SERVE_NAMESPACE and entry["name"].startswith(prefix):
            return ray.get_actor(entry["name"], namespace=_ray.SERVE_NAMESPACE)
    raise AssertionError(f"no Serve actor named {prefix}*")


@pytest.mark.parametrize("which", ["controller", "proxy", "replica"])
def test_serve_system_actors_are_refused(durable_serve, which):
    serve.run(Idle.bind(), name="idle", route_prefix="/idle")
    handle = {
        "controller": lambda: controller_handle(),
        "proxy": lambda: _serve_actor("SERVE_PROXY_ACTOR"),
        "replica": lambda: _serve_actor("SERVE_REPLICA::"),
    }[which]()
    with pytest.raises(serve_cleanup.SystemActorError, match="Serve"):
        serve_cleanup.register(handle)
    assert kv_record_keys() == []


def _plant(key_suffix: str, value: bytes) -> str:
    key = records.KEY_PREFIX + key_suffix
    kv().put(key, value)
    return key


def test_corrupt_and_future_records_are_set_aside(durable_serve, actors):
    good = actors()
    serve_cleanup.register(good)
    garbage = _plant("00" * 16, b"\xc1 not msgpack")
    future = _plant(
        "11" * 16,
        msgpack.packb({"v": records.SCHEMA_VERSION + 1, "actor_id": "11" * 16, "new": "field"}),
    )

    status = kill_controller_and_wait_restart()  # rehydrate sees the bad entries
    assert status["records"] == 1
    reasons = {s["key"]: s["reason"] for s in status["set_aside"]}
    assert set(reasons) == {garbage, future}
    assert "newer serve_cleanup" in reasons[future]

    assert len(serve_cleanup.list_registrations()) == 1  # readers skip them too
    serve.shutdown()
    wait_dead(good)
    # Set aside means untouched: both entries are still in the KV for a human (or a
    # newer serve_cleanup) to deal with.
    wait_for(lambda: sorted(kv_record_keys()) == sorted([garbage, future]), 10, "only bad entries left")


def test_refused_move_keeps_the_previous_registration(slow_reconcile_serve, actors):
    """Re-registering a (now dead) actor under another owner is refused, and the
    registration it had stays as it was (until the liveness sweep, which this fixture
    slows down, drops it)."""
    serve.run(Idle.bind(), name="owner-app", route_prefix=None)
    aux = actors()
    serve_cleanup.register(aux)
    ray.kill(aux, no_restart=True)
    wait_dead(aux)
    with pytest.raises(serve_cleanup.DeadActorError):
        serve_cleanup.register(aux, scope="app", app="owner-app")
    (kept,) = serve_cleanup.list_registrations()
    assert (kept.actor_id, kept.scope, kept.app) == (aux._actor_id.hex(), "serve", "")
    serve.shutdown()  # the dead actor's record is dropped without error
    wait_for(lambda: kv_record_keys() == [], 30, "the dead actor's record to go")
