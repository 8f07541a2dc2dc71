"""Odd but legal input, wrong types, and records of the first schema version."""

from __future__ import annotations

import time

import msgpack
import pytest
import ray
from ray import serve

import serve_cleanup
from ray_helpers import Aux, kv, kill_controller_and_wait_restart, kv_record_keys, wait_dead
from serve_cleanup.serve_adapter import _ray
from serve_cleanup.core import records

pytestmark = pytest.mark.ray


@pytest.mark.parametrize(
    "bad",
    [
        dict(scope=123),
        dict(scope="cluster"),
        dict(scope="app", app=object()),
        dict(scope="deployment", app="a"),
        dict(scope="app", deployment="d", app="a"),
        dict(timeout_s="soon"),
    ],
    ids=repr,
)
def test_wrong_arguments_are_refused_before_anything_is_stored(durable_serve, actors, bad):
    with pytest.raises((TypeError, ValueError)):
        serve_cleanup.register(actors(), **bad)
    assert kv_record_keys() == []


@pytest.mark.parametrize("not_a_handle", [None, 1, "actor", b"\x00", [1], {"a": 1}, Aux])
def test_non_handles_are_type_errors(durable_serve, not_a_handle):
    with pytest.raises(TypeError):
        serve_cleanup.register(not_a_handle)


@pytest.mark.parametrize(
    "name, namespace",
    [
        ("x" * 1000, "long-name"),
        ("名前 with spaces", "名前空間"),
        ("colons::in::name", "serve::app::deployment"),
        ("emoji-🦄", "ns with spaces and ✓"),
        ("SERVE_REPLICA::lookalike", "not-serve"),  # reserved prefix, but not in "serve"
    ],
    ids=["long", "unicode", "colons", "emoji", "lookalike"],
)
def test_odd_names_and_namespaces_round_trip_and_are_killed(durable_serve, name, namespace):
    actor = Aux.options(name=name, namespace=namespace, lifetime="detached").remote()
    ray.get(actor.ping.remote())
    record = serve_cleanup.register(actor)
    assert (record.name, record.namespace) == (name, namespace)
    kill_controller_and_wait_restart()
    (stored,) = serve_cleanup.list_registrations()
    assert (stored.name, stored.namespace) == (name, namespace)
    serve.shutdown()
    wait_dead(actor)


def test_v1_record_written_by_hand_is_honoured(durable_serve, actors):
    """A record laid out exactly as schema v1 documents it (not via today's encoder)."""
    aux = actors()
    actor_id = aux._actor_id.hex()
    v1 = msgpack.packb(
        {
            "v": 1,
            "actor_id": actor_id,
            "name": "",
            "namespace": "",
            "handle": _ray.handle_to_bytes(aux),
            "scope": "serve",
            "app": "",
            "deployment": "",
            "registered_at": time.time(),
        },
        use_bin_type=True,
    )
    key = records.KEY_PREFIX + actor_id
    kv().put(key, v1)
    status = kill_controller_and_wait_restart()
    assert status["records"] == 1 and status["set_aside"] == []
    serve.shutdown()
    wait_dead(aux)
    assert kv_record_keys() == []
