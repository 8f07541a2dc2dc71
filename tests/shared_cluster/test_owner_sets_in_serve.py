"""Owner sets (issue 21) on a real cluster: an actor registered with several apps or
deployments is killed when the last of them is gone, not when the first one is.

* two apps share one actor: deleting one leaves it alive, deleting the other kills it and
  its keys go, also across a controller kill between the two deletes;
* unregister with an owner removes that owner only; the last one removed leaves the
  actor registered for ``serve.shutdown()``;
* the upstream method leaves the owners of a registered actor alone;
* ``list``, ``list --json``, ``status --detail`` and ``list_registrations`` show one
  actor once, with its owners; ``purge`` removes every key of an actor.
"""

from __future__ import annotations

import json

import pytest
import ray
from ray import serve

import serve_cleanup
import ray_helpers
from ray_helpers import (
    DEPLOYMENT,
    actor_state,
    assert_stays,
    controller_handle,
    controller_status,
    kill_controller_and_wait_restart,
    kv_record_keys,
    run_cli,
    wait_dead,
    wait_for,
)
from serve_cleanup.core import records
from serve_cleanup.core.config import Config

pytestmark = pytest.mark.ray

# How long an actor that must survive an owner's deletion is watched: a kill the deletion
# caused would follow at the first owner reconcile after Serve removed the app (every
# Config.reconcile_interval_s, 0.5 s), so two intervals and the kill's own time.
SURVIVES_S = 2 * Config.reconcile_interval_s + 1.0


@serve.deployment(**DEPLOYMENT)
class Idle:
    def __call__(self) -> str:
        return "ok"


def _deploy(*apps: str) -> None:
    for app in apps:
        serve.run(Idle.bind(), name=app, route_prefix=None)


def _app(app: str) -> records.Owner:
    return (records.SCOPE_APP, app, "")


def _record_of(actor):
    """The actor's record as ``list_registrations`` reads it from the KV (None if none)."""
    actor_id = actor._actor_id.hex()
    found = [r for r in serve_cleanup.list_registrations() if r.actor_id == actor_id]
    assert len(found) <= 1, found  # one record per actor, whatever its owners
    return found[0] if found else None


def _keys_of(actor) -> list[str]:
    """The actor's keys in the KV: one per (actor, owner) pair."""
    prefix = records.actor_prefix(actor._actor_id.hex())
    return [k for k in kv_record_keys() if k.startswith(prefix) or k == records.record_key(actor._actor_id.hex())]


def _owners_in_kv(actor) -> set[records.Owner]:
    return {records.parse_key(k.encode()).owner for k in _keys_of(actor)}


def _alive(actor) -> bool:
    return actor_state(actor._actor_id.hex()) == "ALIVE"


def _shared_by_two_apps(actors, unique):
    a, b = f"a-{unique}", f"b-{unique}"
    _deploy(a, b)
    shared = actors()  # anonymous: the kill goes by the stored handle
    first = serve_cleanup.register(shared, scope="app", app=a)
    assert first.owners == (_app(a),)
    both = serve_cleanup.register(shared, scope="app", app=b)  # adds an owner, moves nothing
    assert set(both.owners) == {_app(a), _app(b)}
    assert _owners_in_kv(shared) == {_app(a), _app(b)}  # one key per pair, no serve key
    assert len(_keys_of(shared)) == 2
    return shared, a, b


# --- two apps share one actor --------------------------------------------------------------


def test_an_actor_of_two_apps_dies_with_the_second(durable_serve, actors, unique):
    shared, a, b = _shared_by_two_apps(actors, unique)
    bystander = actors()
    serve_cleanup.register(bystander, scope="app", app=b)  # B's alone: dies with B too

    serve.delete(a)
    assert_stays(lambda: _alive(shared), SURVIVES_S, "the actor B still owns alive")
    assert _record_of(shared) is not None  # still registered

    serve.delete(b)
    wait_dead(shared, 15)
    wait_dead(bystander, 15)
    wait_for(lambda: _keys_of(shared) == [] and _keys_of(bystander) == [], 10, "their keys to go")
    assert _record_of(shared) is None


def test_an_actor_of_two_apps_dies_with_the_second_across_a_controller_kill(durable_serve, actors, unique):
    """The owner set is read back from the keys by the restarted controller: the deleted
    app's owner does not make the actor an orphan while the other app lives, and the
    other app's deletion kills it."""
    shared, a, b = _shared_by_two_apps(actors, unique)
    serve.delete(a)
    assert_stays(lambda: _alive(shared), SURVIVES_S, "the actor B still owns alive")

    status = kill_controller_and_wait_restart()
    assert status["records"] == 1
    assert_stays(lambda: _alive(shared), SURVIVES_S, "the actor alive after the restart (B lives)")
    assert _record_of(shared) is not None

    serve.delete(b)
    wait_dead(shared, 15)
    wait_for(lambda: _keys_of(shared) == [], 10, "its keys to go")


def test_an_app_re_registering_its_actor_keeps_the_other_owner(durable_serve, actors, unique):
    """A repeat of a pair stores nothing new: app A registering again (a replica
    restart) neither drops B nor makes A the only owner."""
    shared, a, b = _shared_by_two_apps(actors, unique)
    keys = _keys_of(shared)
    again = serve_cleanup.register(shared, scope="app", app=a)
    assert set(again.owners) == {_app(a), _app(b)}
    assert _keys_of(shared) == keys  # the same keys, registration times kept
    serve.delete(b)
    assert_stays(lambda: _alive(shared), SURVIVES_S, "the actor A still owns alive")
    serve.delete(a)
    wait_dead(shared, 15)


# --- unregister with an owner --------------------------------------------------------------


def test_unregister_one_owner_then_the_last(durable_serve, actors, unique):
    """Removing A: deleting A no longer matters, B still owns it. Removing B, the last:
    the actor stays registered (scope serve), outlives B's deletion, dies at shutdown."""
    shared, a, b = _shared_by_two_apps(actors, unique)
    assert serve_cleanup.unregister(shared, scope="app", app=f"no-such-{unique}") is False  # not an owner
    assert serve_cleanup.unregister(shared, scope="app", app=a) is True
    assert serve_cleanup.unregister(shared, scope="app", app=a) is False  # removed already
    assert _record_of(shared).owners == (_app(b),)
    assert _owners_in_kv(shared) == {_app(b)}

    serve.delete(a)
    assert_stays(lambda: _alive(shared), SURVIVES_S, "the actor alive after its former owner's deletion")

    assert serve_cleanup.unregister(shared._actor_id.hex(), scope="app", app=b) is True  # by id
    record = _record_of(shared)
    assert record is not None and record.owners == () and record.scope == records.SCOPE_SERVE
    assert _owners_in_kv(shared) == {records.SERVE_OWNER}  # one serve key, no owner key left
    serve.delete(b)
    assert_stays(lambda: _alive(shared), SURVIVES_S, "the actor alive: it waits for shutdown")

    serve.shutdown()
    wait_dead(shared)
    assert kv_record_keys() == []


def test_unregister_without_an_owner_removes_every_key(durable_serve, actors, unique):
    shared, a, b = _shared_by_two_apps(actors, unique)
    assert serve_cleanup.unregister(shared) is True
    assert _keys_of(shared) == [] and _record_of(shared) is None
    serve.delete(a)
    serve.delete(b)
    assert_stays(lambda: _alive(shared), SURVIVES_S, "the unregistered actor alive")


def test_cli_unregister_removes_one_owner(durable_serve, actors, unique):
    shared, a, b = _shared_by_two_apps(actors, unique)
    out = run_cli("unregister", shared._actor_id.hex(), "--scope", "app", "--app", a)
    assert out.returncode == 0, out.stderr
    assert "Removed" in out.stdout and a in out.stdout, out.stdout
    assert _record_of(shared).owners == (_app(b),)
    again = run_cli("unregister", shared._actor_id.hex(), "--scope", "app", "--app", a)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr
    serve.delete(b)
    wait_dead(shared, 15)


# --- the upstream method -------------------------------------------------------------------


def test_the_upstream_method_leaves_an_app_owner_alone(durable_serve, actors, unique):
    """Ray's routers call `_register_shutdown_cleanup_actor` again on every start: for an
    actor registered with an app it ensures a registration and changes nothing, before
    and after a controller restart (a record read back from the keys)."""
    app = f"up-{unique}"
    _deploy(app)
    aux = actors()
    serve_cleanup.register(aux, scope="app", app=app)
    keys = _keys_of(aux)
    ray.get(controller_handle()._register_shutdown_cleanup_actor.remote(aux))
    assert _record_of(aux).owners == (_app(app),)
    assert _keys_of(aux) == keys  # no serve key added, the app's key untouched
    kill_controller_and_wait_restart()
    ray.get(controller_handle()._register_shutdown_cleanup_actor.remote(aux))
    assert _record_of(aux).owners == (_app(app),)
    assert _keys_of(aux) == keys
    serve.delete(app)
    wait_dead(aux, 15)
    wait_for(lambda: _keys_of(aux) == [], 10, "its key to go")


# --- what every read shows -----------------------------------------------------------------


def test_list_shows_one_row_per_actor_with_its_owners(durable_serve, actors, unique):
    a, b = f"a-{unique}", f"b-{unique}"
    _deploy(a, b)
    shared, alone = actors(f"shared-{unique}"), actors()
    serve_cleanup.register(shared, scope="app", app=a)
    serve_cleanup.register(shared, scope="deployment", app=b, deployment="Idle")
    serve_cleanup.register(alone)
    shared_id, alone_id = shared._actor_id.hex(), alone._actor_id.hex()
    both = {_app(a), (records.SCOPE_DEPLOYMENT, b, "Idle")}

    by_id = {r.actor_id: r for r in serve_cleanup.list_registrations()}
    assert set(by_id) == {shared_id, alone_id}
    assert set(by_id[shared_id].owners) == both and len(by_id[shared_id].pairs) == 2
    assert by_id[alone_id].owners == () and by_id[alone_id].scope == records.SCOPE_SERVE

    out = run_cli("list", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert sorted(r["actor_id"] for r in rows) == sorted([shared_id, alone_id])  # each actor once
    rows = {r["actor_id"]: r for r in rows}
    assert {(o["scope"], o["app"], o["deployment"]) for o in rows[shared_id]["owners"]} == both
    assert rows[shared_id]["name"] == f"shared-{unique}" and rows[shared_id]["state"] == "ALIVE"
    assert rows[alone_id]["owners"] == [] and rows[alone_id]["scope"] == "serve"

    table = run_cli("list")
    assert table.returncode == 0, table.stderr
    (shared_line,) = [line for line in table.stdout.splitlines() if shared_id in line]
    assert "(+1 more)" in shared_line
    (alone_line,) = [line for line in table.stdout.splitlines() if alone_id in line]
    assert "more)" not in alone_line

    assert json.loads(run_cli("status", "--json").stdout)["records"] == 3  # keys: one per pair
    detail = json.loads(run_cli("status", "--json", "--detail").stdout)  # actors and pairs
    assert (detail["records"], detail["pairs"]) == (2, 3)
    assert detail["records_by_scope"] == {"serve": 1, "app": 1, "deployment": 1}
    status = controller_status()
    assert (status["records"], status["pairs"]) == (2, 3)


def test_purge_removes_every_key_of_an_actor(durable_serve, actors, unique):
    """With Serve down, `list` reads an actor of two owners as one row and `purge` deletes
    both its keys, and nothing of another actor."""
    a, b = f"a-{unique}", f"b-{unique}"
    _deploy(a, b)
    shared, other = actors(), actors()
    serve_cleanup.register(shared, scope="app", app=a)
    serve_cleanup.register(shared, scope="app", app=b)
    serve_cleanup.register(other)
    saved = {r.actor_id: r for r in serve_cleanup.list_registrations()}
    # Leave the keys behind the way a shutdown that gave up does: Serve gone, keys kept.
    serve.shutdown()
    wait_dead(shared)
    wait_for(lambda: kv_record_keys() == [], 30, "the shutdown to clear the keys")
    for record in saved.values():
        ray_helpers._plant_record(record)
    shared_keys = sorted(saved[shared._actor_id.hex()].keys())
    other_keys = sorted(saved[other._actor_id.hex()].keys())
    assert len(shared_keys) == 2 and sorted(kv_record_keys()) == sorted(shared_keys + other_keys)

    listed = run_cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(r["actor_id"] for r in json.loads(listed.stdout)) == sorted(saved)

    dry = run_cli("purge", "--dry-run", shared._actor_id.hex())
    assert dry.returncode == 0, dry.stderr
    assert all(k in dry.stdout for k in shared_keys), dry.stdout
    done = run_cli("purge", "--yes", shared._actor_id.hex())
    assert done.returncode == 0, done.stderr
    assert "Deleted 2 entries" in done.stdout, done.stdout
    assert kv_record_keys() == other_keys
    assert run_cli("purge", "--yes", "--all").returncode == 0
    assert kv_record_keys() == []
