"""Upgrade in place (issue 14, target 6; issue 21): records that serve_cleanup 0.1.0 wrote,
under the documented v1 key layout, are read, killed or rewritten, and cleared by this
release.

The records are seeded through raw GCS KV writes, laid out exactly as 0.1.0 documented
them (key ``ray-serve-serve-serve-cleanup-actor-<id>`` in KV namespace ``serve``, a msgpack
map of schema version 1), as an install of 0.1.x left them: while no Serve runs (0.1.x
crashed or gave up), or behind a running controller that is then restarted (the upgrade
of a controller in place). Since 0.2.0 (records v2, issue 21) they are read as before and
then killed or rewritten as v2 keys in the background: nothing is lost, and no v1 key is
left.
"""

from __future__ import annotations

import time

import msgpack
import pytest
import ray
from ray import serve

import serve_cleanup
from ray_helpers import (
    DEPLOYMENT,
    TEST_NAMESPACE,
    assert_stays,
    controller_status,
    kill_controller_and_wait_restart,
    kv_record_keys,
    wait_dead,
    wait_for,
)
from serve_cleanup.core import records
from serve_cleanup.core.config import Config
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


# The background rewrite of v1 records (Config.migrations_in_flight at a time, one per
# reconcile tick while any is left): a few records take a tick or two; allow for a busy
# machine and a sweep that drops records of gone actors meanwhile.
REWRITE_DEADLINE_S = 30.0


@serve.deployment(**DEPLOYMENT)
class Idle:
    def __call__(self) -> str:
        return "ok"


def _v1_keys() -> list[str]:
    """Record keys of the v1 layout: no ``/`` (a v2 key has eight)."""
    return [k for k in kv_record_keys() if "/" not in k]


def _v2_pairs() -> dict[str, set[tuple]]:
    """Per actor id, the (owner, name, namespace) of each of its v2 keys."""
    out: dict[str, set[tuple]] = {}
    for key in kv_record_keys():
        if "/" in key:
            k = records.parse_key(key.encode())
            out.setdefault(k.actor_id, set()).add((k.owner, k.name, k.namespace))
    return out


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
    # The records of actors that no longer exist are dropped by the first sweep; the two
    # Serve-wide ones are rewritten as v2 keys, name and namespace kept, and no v1 key is left.
    expected = {
        serve_wide._actor_id.hex(): {(records.SERVE_OWNER, "upgrade-serve-wide", "serve-cleanup-tests")},
        recent._actor_id.hex(): {(records.SERVE_OWNER, "", "")},
    }
    wait_for(lambda: _v1_keys() == [] and _v2_pairs() == expected, REWRITE_DEADLINE_S,
             "the orphans' and the gone actors' records to go, and the others to be rewritten as v2")
    assert controller_status()["v1_records"] == 0
    for aux in (serve_wide, recent):
        assert ray.get(aux.ping.remote()) == "pong"  # Serve-wide: lives until shutdown
    serve.shutdown()
    wait_dead(serve_wide)
    wait_dead(recent)
    assert kv_record_keys() == []
    assert ray.get(bystander.ping.remote()) == "pong"


def test_a_restarted_controller_rewrites_v1_records_and_loses_nothing(durable_serve, actors, unique):
    """The upgrade of a running instance: v1 records (one of each scope, a named and an
    anonymous actor) are in the KV when the controller restarts with this release. It
    reads them (nothing set aside, nothing killed while its owner lives), rewrites them
    as v2 keys in the background with their owners, names and namespaces, leaves no v1
    key, and then kills each actor when its owner goes, and the rest at shutdown."""
    app = f"upgrade-{unique}"
    serve.run(Idle.bind(), name=app, route_prefix=None)
    serve_wide = actors(f"upgrade-serve-{unique}")
    of_app = actors()  # anonymous: reached through the handle its v1 value holds
    of_deployment = actors(f"upgrade-deployment-{unique}")
    _put_v1(serve_wide._actor_id.hex(), _ray.handle_to_bytes(serve_wide),
            name=f"upgrade-serve-{unique}", namespace=TEST_NAMESPACE)
    _put_v1(of_app._actor_id.hex(), _ray.handle_to_bytes(of_app), scope="app", app=app)
    _put_v1(of_deployment._actor_id.hex(), _ray.handle_to_bytes(of_deployment), scope="deployment",
            app=app, deployment="Idle", name=f"upgrade-deployment-{unique}", namespace=TEST_NAMESPACE)
    assert len(_v1_keys()) == 3

    status = kill_controller_and_wait_restart()
    assert status["set_aside"] == [] and status["records"] == 3

    expected = {
        serve_wide._actor_id.hex(): {(records.SERVE_OWNER, f"upgrade-serve-{unique}", TEST_NAMESPACE)},
        of_app._actor_id.hex(): {((records.SCOPE_APP, app, ""), "", "")},
        of_deployment._actor_id.hex(): {
            ((records.SCOPE_DEPLOYMENT, app, "Idle"), f"upgrade-deployment-{unique}", TEST_NAMESPACE)},
    }
    wait_for(lambda: _v1_keys() == [] and _v2_pairs() == expected, REWRITE_DEADLINE_S,
             "the v1 records to be rewritten as v2 keys")
    status = controller_status()
    assert status["v1_records"] == 0 and status["records"] == 3 and status["set_aside"] == []
    by_id = {r.actor_id: r for r in serve_cleanup.list_registrations()}
    assert by_id[of_app._actor_id.hex()].owners == ((records.SCOPE_APP, app, ""),)
    for aux in (serve_wide, of_app, of_deployment):
        assert ray.get(aux.ping.remote()) == "pong"  # nothing killed while its owner lives

    # Nothing lost: a second restart reads the v2 keys alone, and the owners still act.
    assert kill_controller_and_wait_restart()["records"] == 3
    serve.delete(app)
    wait_dead(of_app, 15)
    wait_dead(of_deployment, 15)
    assert_stays(lambda: ray.get(serve_wide.ping.remote(), timeout=10) == "pong",
                 2 * Config.reconcile_interval_s + 1.0, "the Serve-wide actor alive until shutdown")
    serve.shutdown()
    wait_dead(serve_wide)
    assert kv_record_keys() == []
