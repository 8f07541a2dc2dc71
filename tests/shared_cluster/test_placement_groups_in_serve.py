"""Placement groups (issue 22) on a real cluster: registered like actors, with the same
owners, and removed by their id when their last owner is gone or at ``serve.shutdown()``.

Two Serve lifecycles:

* a replica registers a detached placement group for its app and one serve-wide, a
  driver one for another app; the controller is killed; deleting the first app removes
  its placement group only (the others and an unregistered bystander stay CREATED); every
  read shows the kind; ``serve.shutdown()`` removes the rest, the bystander untouched;
* refusals and the commands: one of Serve's own replica placement groups and a removed
  placement group are refused with a one-line error and leave no key; ``unregister
  pg:<id>`` (CLI) and ``unregister(pg)`` leave the placement group alone; an actor id
  given without ``pg:`` does not touch a placement group's record; an unregistered one
  outlives ``serve.shutdown()``; ``purge`` plans ``pg:<id>`` and refuses an unknown kind
  with a one-line usage error.
"""

from __future__ import annotations

import json

import pytest
import ray
from ray import serve
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

import serve_cleanup
from ray_helpers import (
    DEPLOYMENT,
    assert_stays,
    kill_controller_and_wait_restart,
    kv_record_keys,
    run_cli,
    wait_for,
)
from serve_cleanup.core import records
from serve_cleanup.core.config import Config
from serve_cleanup.errors import DeadActorError, SystemActorError

pytestmark = pytest.mark.ray

SURVIVES_S = 2 * Config.reconcile_interval_s + 1.0
BUNDLE = [{"CPU": 0.01}]


def pg_state(pg: PlacementGroup) -> str:
    """GCS's state of the placement group: CREATED, PENDING, ..., REMOVED."""
    return ray.util.placement_group_table(pg)["state"]


def pg_keys(pg: PlacementGroup) -> list[str]:
    prefix = records.actor_prefix(pg.id.hex())
    return [k for k in kv_record_keys() if k.startswith(prefix)]


def new_pg(name: str = "") -> PlacementGroup:
    pg = placement_group(BUNDLE, name=name, lifetime="detached")
    ray.get(pg.ready(), timeout=30)
    return pg


def remove_quietly(*pgs: PlacementGroup) -> None:
    for pg in pgs:
        try:
            if pg_state(pg) != "REMOVED":
                remove_placement_group(pg)
        except Exception:
            pass


@serve.deployment(**DEPLOYMENT)
class Gang:
    """A deployment that gangs helpers in detached placement groups of its own and
    registers them: one for its app, one serve-wide."""

    def __init__(self) -> None:
        self.app_pg = placement_group(BUNDLE, lifetime="detached")
        self.serve_pg = placement_group(BUNDLE, lifetime="detached")
        serve_cleanup.register(self.app_pg, scope="app")
        serve_cleanup.register(self.serve_pg)

    def __call__(self) -> dict:
        return {"app": self.app_pg.id.hex(), "serve": self.serve_pg.id.hex()}


@serve.deployment(**DEPLOYMENT)
class Idle:
    def __call__(self) -> str:
        return "ok"


def _pg_of(pg_id: str) -> PlacementGroup:
    return PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id)))


@pytest.mark.smoke  # the placement group table and removal by id, on every supported Ray
def test_a_replicas_placement_groups_are_removed_by_app_delete_and_shutdown_after_a_controller_kill(
        durable_serve, unique):
    a, b = f"gang-{unique}", f"other-{unique}"
    handle = serve.run(Gang.bind(), name=a, route_prefix=None)
    serve.run(Idle.bind(), name=b, route_prefix=None)
    ids = handle.remote().result(timeout_s=30)
    app_pg, serve_pg = _pg_of(ids["app"]), _pg_of(ids["serve"])
    b_pg = new_pg(f"b-{unique}")
    bystander = new_pg(f"bystander-{unique}")
    try:
        record = serve_cleanup.register(b_pg, scope="app", app=b)
        assert record.kind == records.KIND_PLACEMENT_GROUP and record.name == f"b-{unique}"
        assert record.owners == ((records.SCOPE_APP, b, ""),)
        for pg in (app_pg, serve_pg, b_pg):
            wait_for(lambda pg=pg: pg_state(pg) == "CREATED", 30, "the placement group created")
            assert len(pg_keys(pg)) == 1 and "/2/pg/" in pg_keys(pg)[0]

        status = kill_controller_and_wait_restart()
        assert status["records_by_kind"] == {"pg": 3}

        serve.delete(a)
        wait_for(lambda: pg_state(app_pg) == "REMOVED", 15, "the app's placement group removed")
        wait_for(lambda: not pg_keys(app_pg), 10, "its record gone")
        assert_stays(lambda: all(pg_state(pg) == "CREATED" for pg in (serve_pg, b_pg, bystander)),
                     SURVIVES_S, "the serve-wide, the other app's and the bystander placement groups")

        rows = {r["actor_id"]: r for r in json.loads(run_cli("list", "--json").stdout)}
        assert {rows[i]["kind"] for i in (serve_pg.id.hex(), b_pg.id.hex())} == {"pg"}
        assert rows[b_pg.id.hex()]["state"] == "CREATED"
        table = run_cli("list").stdout
        assert "pg:" + b_pg.id.hex() in table and f"b-{unique}" in table
        detail = json.loads(run_cli("status", "--detail", "--json").stdout)
        assert detail["records_by_kind"] == {"pg": 2}
        assert {r.kind for r in serve_cleanup.list_registrations()} == {"pg"}

        serve.shutdown()
        for pg in (serve_pg, b_pg):
            assert pg_state(pg) == "REMOVED", "serve.shutdown() returned before removing it"
            assert not pg_keys(pg)
        assert pg_state(bystander) == "CREATED"  # never registered: never touched
    finally:
        remove_quietly(app_pg, serve_pg, b_pg, bystander)


@serve.deployment(**{**DEPLOYMENT, "placement_group_bundles": [{"CPU": 0.01}]})
class WithItsOwnPg:
    def __call__(self) -> str:
        return "ok"


def test_refusals_unregister_and_purge_of_placement_groups(durable_serve, unique):
    app = f"own-pg-{unique}"
    serve.run(WithItsOwnPg.bind(), name=app, route_prefix=None)
    serves = [pg_id for pg_id, e in ray.util.placement_group_table().items()
              if e["name"].startswith("SERVE_REPLICA::") and app in e["name"] and e["state"] != "REMOVED"]
    assert serves, "Serve made no placement group for its replica"
    with pytest.raises(SystemActorError, match="one of Serve's own"):
        serve_cleanup.register(_pg_of(serves[0]))
    assert not pg_keys(_pg_of(serves[0]))

    removed = new_pg()
    remove_placement_group(removed)
    wait_for(lambda: pg_state(removed) == "REMOVED", 10, "the placement group removed")
    with pytest.raises(DeadActorError, match="placement group .* is removed"):
        serve_cleanup.register(removed)
    assert not pg_keys(removed)

    kept = new_pg()
    try:
        serve_cleanup.register(kept)
        assert not serve_cleanup.unregister(kept.id.hex())  # a bare id is an actor's: not this one
        assert pg_keys(kept)
        out = run_cli("unregister", f"pg:{kept.id.hex()}")
        assert out.returncode == 0 and "the placement group was not removed" in out.stdout, out
        assert not pg_keys(kept)
        serve_cleanup.register(kept)
        assert serve_cleanup.unregister(kept) and not pg_keys(kept)
        serve.shutdown()
        assert pg_state(kept) == "CREATED"  # unregistered: the shutdown left it alone
    finally:
        remove_quietly(kept)


def test_purge_takes_pg_ids(durable_serve, unique):
    pg = new_pg()
    try:
        serve_cleanup.register(pg)
        bare = run_cli("purge", "--dry-run", pg.id.hex())  # an actor id: no such record
        assert "no record" in bare.stderr
        dry = run_cli("purge", "--dry-run", f"pg:{pg.id.hex()}")
        assert dry.returncode == 0 and pg_keys(pg)[0] in dry.stdout, dry
        bad = run_cli("purge", "--dry-run", "job:00ff")
        assert bad.returncode == 2 and "unknown kind" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        remove_quietly(pg)
