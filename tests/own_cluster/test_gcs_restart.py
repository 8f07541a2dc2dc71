"""GCS fault tolerance with a real Redis: registrations survive a GCS restart.

The head is started by ``ray.cluster_utils.Cluster`` (the same services ``ray start --head``
starts) with ``RAY_REDIS_ADDRESS`` pointing at a Redis server this fixture runs; the GCS
process is then killed and started again through the head node's own handle on it.
"""

from __future__ import annotations

import uuid

import pytest
import ray
from ray import serve

import serve_cleanup
from ray_helpers import TEST_NAMESPACE, Aux, kv_record_keys, own_cluster, wait_dead, wait_for

pytestmark = pytest.mark.ray


@pytest.fixture
def ft_cluster(redis_address, monkeypatch):
    monkeypatch.setenv("RAY_REDIS_ADDRESS", redis_address)
    monkeypatch.setenv("RAY_external_storage_namespace", f"sc-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("RAY_gcs_rpc_server_reconnect_timeout_s", "60")
    with own_cluster(num_cpus=2) as c:
        yield c


def test_registrations_survive_gcs_restart(ft_cluster):
    serve_cleanup.start()
    named = Aux.options(name="ft-named", namespace=TEST_NAMESPACE, lifetime="detached").remote()
    anon = Aux.options(lifetime="detached").remote()
    ray.get([named.ping.remote(), anon.ping.remote()])
    serve_cleanup.register(named)
    serve_cleanup.register(anon)
    before = sorted(kv_record_keys())
    assert len(before) == 2

    ft_cluster.head_node.kill_gcs_server()
    ft_cluster.head_node.start_gcs_server()
    # GCS is back once the KV answers; the records came back from Redis.
    wait_for(lambda: sorted(kv_record_keys()) == before, 60, "GCS to come back with the records")
    assert ray.get(named.ping.remote(), timeout=60) == "pong"

    serve.shutdown()
    wait_dead(named, 60)
    wait_dead(anon, 60)
    assert kv_record_keys() == []
