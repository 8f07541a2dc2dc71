"""Registering through every door, and what each registration promises."""

from __future__ import annotations

import threading

import pytest
import ray
from ray import serve

import serve_cleanup
from ray_helpers import (
    DEPLOYMENT,
    TEST_NAMESPACE,
    Aux,
    actor_state,
    assert_stays,
    controller_handle,
    kill_controller_and_wait_restart,
    kv_record_keys,
    wait_dead,
    wait_for,
)
from serve_cleanup.core import records

pytestmark = pytest.mark.ray


@serve.deployment(**DEPLOYMENT)
class RegistersWithClient:
    """A replica registering through the package API: a named and an anonymous actor."""

    def __init__(self, name: str) -> None:
        named = Aux.options(
            name=name, namespace=TEST_NAMESPACE, lifetime="detached", get_if_exists=True
        ).remote()
        self.anon = Aux.options(lifetime="detached").remote()
        serve_cleanup.register(named)
        serve_cleanup.register(self.anon)

    def anon_id(self) -> str:
        return self.anon._actor_id.hex()


def test_register_from_replica_named_and_anonymous(durable_serve, unique):
    handle = serve.run(RegistersWithClient.bind(f"named-{unique}"), name="reg", route_prefix=None)
    anon_id = handle.anon_id.remote().result()
    named = ray.get_actor(f"named-{unique}", namespace=TEST_NAMESPACE)
    by_id = {r.actor_id: r for r in serve_cleanup.list_registrations()}
    assert set(by_id) == {anon_id, named._actor_id.hex()}
    assert by_id[named._actor_id.hex()].name == f"named-{unique}"
    assert by_id[named._actor_id.hex()].namespace == TEST_NAMESPACE
    assert by_id[anon_id].name == "" and by_id[anon_id].namespace == ""

    kill_controller_and_wait_restart()
    serve.shutdown()
    wait_dead(named)
    wait_for(lambda: actor_state(anon_id) == "DEAD", 30, "the anonymous actor to die")
    assert kv_record_keys() == []


def test_register_from_driver_returns_durable_record(durable_serve, actors, unique):
    aux = actors(f"drv-{unique}")
    record = serve_cleanup.register(aux)
    assert isinstance(record, serve_cleanup.Record)
    assert record.actor_id == aux._actor_id.hex()
    assert record.scope == records.SCOPE_SERVE and record.owners == ()
    assert kv_record_keys() == [record.key]  # one v2 key: the actor's serve pair
    assert records.parse_key(record.key.encode()).owner == records.SERVE_OWNER
    # Killed at shutdown: the test below, and test_scopes' unregister test (no restart).


def test_dedupe_upstream_and_client_store_once(durable_serve, actors, unique):
    aux = actors(f"dup-{unique}")
    ctrl = controller_handle()
    ray.get(ctrl._register_shutdown_cleanup_actor.remote(aux))
    first = serve_cleanup.register(aux)
    second = serve_cleanup.register(aux)
    ray.get(ctrl._register_shutdown_cleanup_actor.remote(aux))
    assert first == second
    assert kv_record_keys() == [first.key]  # one serve key, its time kept by the repeats
    assert len(serve_cleanup.list_registrations()) == 1


def test_named_and_anonymous_registrations_survive_a_restart_and_bystanders_survive_shutdown(
    durable_serve, actors, unique
):
    registered = [actors(f"reg-{unique}"), actors()]  # named, anonymous
    bystander_named = actors(f"by-{unique}")
    bystander_anon = actors()
    for a in registered:
        serve_cleanup.register(a)
    status = kill_controller_and_wait_restart()
    assert status["records"] == 2
    serve.shutdown()
    for a in registered:
        wait_dead(a)
    assert actor_state(bystander_named._actor_id.hex()) == "ALIVE"
    assert actor_state(bystander_anon._actor_id.hex()) == "ALIVE"
    assert kv_record_keys() == []


def test_actor_that_later_took_the_name_is_not_killed(durable_serve, actors, unique):
    name = f"taken-{unique}"
    original = actors(name)
    serve_cleanup.register(original)
    ray.kill(original, no_restart=True)
    wait_dead(original)
    impostor = actors(name)  # same name and namespace, different actor id
    assert impostor._actor_id != original._actor_id
    kill_controller_and_wait_restart()
    serve.shutdown()
    wait_for(lambda: kv_record_keys() == [], 30, "the dead original's record to be dropped")
    assert_stays(lambda: actor_state(impostor._actor_id.hex()) == "ALIVE", 2.0, "impostor alive")


def test_restarted_actor_keeps_id_and_is_killed(durable_serve, actors, unique):
    """An actor Ray restarts keeps its id, so its registration still applies."""
    aux = actors(f"restartable-{unique}", max_restarts=-1)
    serve_cleanup.register(aux)
    ray.kill(aux, no_restart=False)
    wait_for(lambda: ray.get(aux.ping.remote(), timeout=10) == "pong", 30, "the actor to restart")
    serve.shutdown()
    wait_dead(aux)


def test_register_while_controller_restarts(durable_serve, actors):
    """A registration in flight across a controller crash is retried until it lands."""
    aux = [actors() for _ in range(3)]
    ctrl = controller_handle()
    results: dict = {}

    def register_all():
        try:
            results["records"] = [serve_cleanup.register(a, timeout_s=60) for a in aux]
        except BaseException as e:  # surfaced by the assertion below
            results["error"] = e

    ray.kill(ctrl, no_restart=False)
    t = threading.Thread(target=register_all)
    t.start()
    t.join(90)
    assert "error" not in results, results.get("error")
    assert len(results["records"]) == 3
    assert len(kv_record_keys()) == 3
    serve.shutdown()
    for a in aux:
        wait_dead(a)


def test_register_times_out_without_serve(no_serve, actors):
    aux = actors()
    with pytest.raises(serve_cleanup.ControllerUnavailableError, match="serve_cleanup.start"):
        serve_cleanup.register(aux, timeout_s=1)
