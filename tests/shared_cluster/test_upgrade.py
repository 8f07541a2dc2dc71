"""Upgrade in place (issue 14, target 6): records that serve_cleanup 0.1.0 wrote, under the
documented v1 key layout, are read, killed and cleared by this release.

The records are seeded through raw GCS KV writes, laid out exactly as 0.1.0 documented
them (key ``ray-serve-serve-serve-cleanup-actor-<id>`` in KV namespace ``serve``, a msgpack
map of schema version 1), while no Serve runs, as an install of 0.1.0 that crashed or gave
up would leave them. This release still writes that layout (the key layout and schema did
not change), so nothing needs migrating; this test holds the next release to it.
"""

from __future__ import annotations

import time

import msgpack
import pytest
import ray
from ray import serve

import serve_cleanup
from ray_helpers import controller_status, kv_record_keys, wait_dead, wait_for
from serve_cleanup.serve_adapter import _ray

pytestmark = pytest.mark.ray

# A deliberate format pin: the whole key and the raw GCS KV call, as 0.1.0's docs give
# them, NOT composed through serve_adapter.kv.KvStore (as every other test does): if the
# store's layout ever changes, this test must fail rather than follow it.
V1_KEY = b"ray-serve-serve-serve-cleanup-actor-"


def _put_v1(actor_id: str, handle: bytes, scope: str = "serve", app: str = "", deployment: str = "",
            name: str = "", namespace: str = "", registered_at: float = 0.0) -> None:
    value = msgpack.packb(
        {"v": 1, "actor_id": actor_id, "name": name, "namespace": namespace, "handle": handle,
         "scope": scope, "app": app, "deployment": deployment,
         "registered_at": registered_at or time.time() - 3600},
        use_bin_type=True,
    )
    _ray.driver_gcs_client().internal_kv_put(V1_KEY + actor_id.encode(), value, True, b"serve")


def test_records_written_by_0_1_0_are_read_killed_and_cleared(no_serve, actors):
    # No Serve: 0.1.0's controller is gone; its records are not.
    serve_wide = actors("upgrade-serve-wide")
    of_app = actors("upgrade-of-app")
    of_deployment = actors()  # anonymous
    bystander = actors("upgrade-bystander")
    recent = actors()  # anonymous, Serve-wide, registered a moment ago
    _put_v1(serve_wide._actor_id.hex(), _ray.handle_to_bytes(serve_wide),
            name="upgrade-serve-wide", namespace="serve-cleanup-tests")
    _put_v1(of_app._actor_id.hex(), _ray.handle_to_bytes(of_app), scope="app", app="old-app",
            name="upgrade-of-app", namespace="serve-cleanup-tests")
    _put_v1(of_deployment._actor_id.hex(), _ray.handle_to_bytes(of_deployment), scope="deployment",
            app="old-app", deployment="Old")
    _put_v1(recent._actor_id.hex(), _ray.handle_to_bytes(recent), registered_at=time.time())
    # Records of actors long gone (a cluster restarted since): enough for a bulk drop.
    template = _ray.handle_to_bytes(bystander)
    gone = [f"{i % 256:02x}{i:06x}" + "ab" * 12 for i in range(300)]
    for actor_id in gone:
        _put_v1(actor_id, template)

    listed = {r.actor_id for r in serve_cleanup.list_registrations()}  # read with Serve down
    assert listed == {serve_wide._actor_id.hex(), of_app._actor_id.hex(), of_deployment._actor_id.hex(),
                      recent._actor_id.hex(), *gone}

    serve_cleanup.start()
    assert controller_status()["set_aside"] == []  # every v1 entry was read as a record
    # The owner of the app- and deployment-scoped records does not exist: killed at once.
    wait_dead(of_app)
    wait_dead(of_deployment)
    # The records of actors that no longer exist are dropped by the first sweep.
    serve_wide_keys = {"serve-cleanup-actor-" + a._actor_id.hex() for a in (serve_wide, recent)}
    wait_for(lambda: set(kv_record_keys()) == serve_wide_keys, 30, "the orphans' and the gone actors' records to go")
    for aux in (serve_wide, recent):
        assert ray.get(aux.ping.remote()) == "pong"  # Serve-wide: lives until shutdown
    serve.shutdown()
    wait_dead(serve_wide)
    wait_dead(recent)
    assert kv_record_keys() == []
    assert ray.get(bystander.ping.remote()) == "pong"
