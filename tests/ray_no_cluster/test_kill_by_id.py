"""RayKiller without a cluster: the ways it reaches exactly the recorded actor id, in
order (the stored handle, the name, the id alone through GCS), and the GCS request the
kill by id sends. Whether GCS kills the actor is for a real cluster (see the module
docstring of serve_adapter/_ray.py, "killing an actor by its id alone")."""

from __future__ import annotations

import logging

import pytest

from serve_cleanup.core.records import Record
from serve_cleanup.serve_adapter import _ray, ports

ACTOR = "ab" * 16


class FakeChannel:
    def __init__(self, code: int = 0) -> None:
        self.sent: list = []
        self.closed = False
        self.code = code

    def unary_unary(self, method, request_serializer=None, response_deserializer=None, **_):
        from ray.core.generated import gcs_service_pb2

        def call(request, timeout=None):
            self.sent.append((method, request, timeout))
            reply = gcs_service_pb2.KillActorViaGcsReply()
            reply.status.code = self.code
            return reply

        return call

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("code, accepted", [(0, True), (5, False)])
def test_kill_by_id_sends_what_ray_kill_sends(monkeypatch, code, accepted):
    channel = FakeChannel(code)
    opened = []
    monkeypatch.setattr(_ray, "_init_grpc_channel", lambda: lambda address: opened.append(address) or channel)
    assert _ray.kill_by_id(ACTOR, "10.0.0.1:6379") is accepted
    assert opened == ["10.0.0.1:6379"] and channel.closed
    [(method, request, timeout)] = channel.sent
    assert method.endswith("ActorInfoGcsService/KillActorViaGcs")
    assert (request.actor_id, request.force_kill, request.no_restart) == (bytes.fromhex(ACTOR), True, True)
    assert timeout == _ray.KILL_BY_ID_TIMEOUT_S


def test_the_grpc_channel_helper_exists_on_the_installed_ray():
    assert callable(_ray._init_grpc_channel())
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    assert hasattr(gcs_service_pb2_grpc.ActorInfoGcsServiceStub, "__init__")
    fields = {f.name for f in gcs_service_pb2.KillActorViaGcsRequest.DESCRIPTOR.fields}
    assert {"actor_id", "force_kill", "no_restart"} <= fields


class Handle:
    def __init__(self, actor_id: str) -> None:
        self.actor_id = actor_id


@pytest.fixture
def killer(monkeypatch):
    done = {"ray.kill": [], "by_id": []}
    monkeypatch.setattr(ports.ray, "kill", lambda h, no_restart: done["ray.kill"].append(h.actor_id))
    monkeypatch.setattr(_ray, "actor_id_hex", lambda h: h.actor_id)
    monkeypatch.setattr(_ray, "kill_by_id", lambda actor_id, address: done["by_id"].append((actor_id, address)) or True)
    k = ports.RayKiller(logging.getLogger("test"), gcs_address="gcs:1")
    k.done = done
    return k


async def test_an_unreadable_value_of_an_anonymous_actor_is_killed_by_its_id(killer):
    assert await killer.kill(Record(ACTOR, "", "", b""))  # what registry.full gives back
    assert killer.done == {"ray.kill": [], "by_id": [(ACTOR, "gcs:1")]}


async def test_a_name_held_by_no_actor_falls_back_to_the_id(killer, monkeypatch):
    def gone(name, namespace):
        raise ValueError("no such actor")

    monkeypatch.setattr(ports.ray, "get_actor", gone)
    assert await killer.kill(Record(ACTOR, "router", "prod", b""))
    assert killer.done["by_id"] == [(ACTOR, "gcs:1")]


async def test_a_name_held_by_another_actor_is_not_killed(killer, monkeypatch):
    monkeypatch.setattr(ports.ray, "get_actor", lambda name, namespace: Handle("cd" * 16))
    assert await killer.kill(Record(ACTOR, "router", "prod", b""))
    assert killer.done == {"ray.kill": [], "by_id": [(ACTOR, "gcs:1")]}


async def test_the_stored_handle_comes_first(killer, monkeypatch):
    monkeypatch.setattr(_ray, "handle_from_bytes", lambda data: Handle(ACTOR))
    assert await killer.kill(Record(ACTOR, "", "", b"bytes"))
    assert killer.done == {"ray.kill": [ACTOR], "by_id": []}
