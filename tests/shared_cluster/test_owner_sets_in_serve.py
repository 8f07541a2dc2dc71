"""Owner sets (issue 21) on a real cluster: an actor registered with several apps or
deployments is killed when the last of them is gone, not when the first one is.

Three Serve lifecycles (a deploy of two apps is the slow part here), each checking several
actors side by side:

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


def _two_apps(unique) -> tuple[str, str]:
    a, b = f"a-{unique}", f"b-{unique}"
    _deploy(a, b)
    return a, b


def _shared_by(actors, a: str, b: str):
    shared = actors()  # anonymous: the kill goes by the stored handle
    first = serve_cleanup.register(shared, scope="app", app=a)
    assert first.owners == (_app(a),)
    both = serve_cleanup.register(shared, scope="app", app=b)  # adds an owner, moves nothing
    assert set(both.owners) == {_app(a), _app(b)}
    assert _owners_in_kv(shared) == {_app(a), _app(b)}  # one key per pair, no serve key
    assert len(_keys_of(shared)) == 2
    return shared


# --- two apps share one actor --------------------------------------------------------------


def test_an_actor_of_two_apps_dies_with_the_second_also_across_a_controller_kill(durable_serve, actors, unique):
    """Deleting A kills what A alone owns and leaves the actor B still owns; the restarted
    controller reads the owner set back from the keys (A's deletion does not make the
    actor an orphan while B lives); deleting B kills it and its keys go. On the way: a
    repeat of a pair (a replica restart) stores nothing new, and the upstream method,
    which Ray's routers call again on every start, leaves the owners alone, before and
    after the restart."""
    a, b = _two_apps(unique)
    shared = _shared_by(actors, a, b)
    only_a, only_b = actors(), actors()
    serve_cleanup.register(only_a, scope="app", app=a)
    serve_cleanup.register(only_b, scope="app", app=b)

    keys = _keys_of(shared)
    again = serve_cleanup.register(shared, scope="app", app=a)  # a repeat of a pair
    assert set(again.owners) == {_app(a), _app(b)}
    assert _keys_of(shared) == keys  # the same keys, registration times kept
    ray.get(controller_handle()._register_shutdown_cleanup_actor.remote(shared))
    assert set(_record_of(shared).owners) == {_app(a), _app(b)}
    assert _keys_of(shared) == keys  # no serve key added, the apps' keys untouched

    serve.delete(a)
    wait_dead(only_a, 15)  # A's deletion was acted on ...
    assert_stays(lambda: _alive(shared), SURVIVES_S, "the actor B still owns alive")  # ... and spared it
    # A deleted owner's pair stays while another owner lives: the set is what was
    # registered, and the actor dies when none of it is alive.
    assert set(_record_of(shared).owners) == {_app(a), _app(b)}

    status = kill_controller_and_wait_restart()
    assert status["records"] == 2  # shared and only_b
    assert_stays(lambda: _alive(shared), SURVIVES_S, "the actor alive after the restart (B lives)")
    ray.get(controller_handle()._register_shutdown_cleanup_actor.remote(shared))
    assert _record_of(shared) is not None and records.SERVE_OWNER not in _owners_in_kv(shared)

    serve.delete(b)
    wait_dead(shared, 15)
    wait_dead(only_b, 15)
    wait_for(lambda: _keys_of(shared) == [] and _keys_of(only_b) == [], 10, "their keys to go")
    assert _record_of(shared) is None


# --- unregister with an owner --------------------------------------------------------------


def test_unregister_removes_one_owner_and_without_an_owner_every_key(durable_serve, actors, unique):
    """Removing A from one actor: A's deletion no longer matters, B still owns it; removing
    B, the last: the actor stays registered (scope serve), outlives B's deletion and dies
    at shutdown. The CLI removes one owner the same way. `unregister(actor)` without an
    owner removes every key: that actor outlives both apps and the shutdown."""
    a, b = _two_apps(unique)
    kept, by_cli, gone = (_shared_by(actors, a, b) for _ in range(3))

    assert serve_cleanup.unregister(kept, scope="app", app=f"no-such-{unique}") is False  # not an owner
    assert serve_cleanup.unregister(kept, scope="app", app=a) is True
    assert serve_cleanup.unregister(kept, scope="app", app=a) is False  # removed already
    assert _record_of(kept).owners == (_app(b),)
    assert _owners_in_kv(kept) == {_app(b)}

    out = run_cli("unregister", by_cli._actor_id.hex(), "--scope", "app", "--app", a)
    assert out.returncode == 0, out.stderr
    assert "Removed" in out.stdout and a in out.stdout, out.stdout
    assert _record_of(by_cli).owners == (_app(b),)
    again = run_cli("unregister", by_cli._actor_id.hex(), "--scope", "app", "--app", a)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr

    assert serve_cleanup.unregister(gone) is True
    assert _keys_of(gone) == [] and _record_of(gone) is None

    serve.delete(a)
    assert_stays(
        lambda: _alive(kept) and _alive(by_cli) and _alive(gone), SURVIVES_S,
        "the actors alive after their former owner's deletion",
    )

    assert serve_cleanup.unregister(kept._actor_id.hex(), scope="app", app=b) is True  # by id, the last
    record = _record_of(kept)
    assert record is not None and record.owners == () and record.scope == records.SCOPE_SERVE
    assert _owners_in_kv(kept) == {records.SERVE_OWNER}  # one serve key, no owner key left
    serve.delete(b)
    wait_dead(by_cli, 15)  # B's deletion was acted on ...
    assert_stays(lambda: _alive(kept) and _alive(gone), SURVIVES_S, "the actor waiting for shutdown alive")

    serve.shutdown()
    wait_dead(kept)
    assert _alive(gone)  # unregistered: nobody's to kill
    assert kv_record_keys() == []


# --- what every read shows -----------------------------------------------------------------


def test_every_read_shows_one_row_per_actor_with_its_owners_and_purge_removes_its_keys(
    durable_serve, actors, unique
):
    """`list_registrations`, `list`, `list --json`, `status` and the controller show one
    actor once, with its owners, and count pairs apart. Then, with Serve down (keys left
    behind the way a shutdown that gave up leaves them), `list` still reads an actor of
    two owners as one row and `purge` deletes both its keys and nothing of another."""
    a, b = _two_apps(unique)
    shared, alone = actors(f"shared-{unique}"), actors()
    serve_cleanup.register(shared, scope="app", app=a)
    serve_cleanup.register(shared, scope="deployment", app=b, deployment="Idle")
    serve_cleanup.register(alone)
    shared_id, alone_id = shared._actor_id.hex(), alone._actor_id.hex()
    both = {_app(a), (records.SCOPE_DEPLOYMENT, b, "Idle")}

    saved = {r.actor_id: r for r in serve_cleanup.list_registrations()}
    assert set(saved) == {shared_id, alone_id}
    assert set(saved[shared_id].owners) == both and len(saved[shared_id].pairs) == 2
    assert saved[alone_id].owners == () and saved[alone_id].scope == records.SCOPE_SERVE

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

    serve.shutdown()
    wait_dead(shared)
    wait_for(lambda: kv_record_keys() == [], 30, "the shutdown to clear the keys")
    for record in saved.values():
        ray_helpers._plant_record(record)
    shared_keys = sorted(saved[shared_id].keys())
    other_keys = sorted(saved[alone_id].keys())
    assert len(shared_keys) == 2 and sorted(kv_record_keys()) == sorted(shared_keys + other_keys)

    listed = run_cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(r["actor_id"] for r in json.loads(listed.stdout)) == sorted(saved)

    dry = run_cli("purge", "--dry-run", shared_id)
    assert dry.returncode == 0, dry.stderr
    assert all(k in dry.stdout for k in shared_keys), dry.stdout
    done = run_cli("purge", "--yes", shared_id)
    assert done.returncode == 0, done.stderr
    assert "Deleted 2 entries" in done.stdout, done.stdout
    assert kv_record_keys() == other_keys
    assert run_cli("purge", "--yes", "--all").returncode == 0
    assert kv_record_keys() == []
