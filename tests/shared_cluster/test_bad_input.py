"""Bad and odd input, and bad state in the KV, on a real cluster.

* Wrong arguments, things that are not actor handles, dead actors and Serve's own actors
  are refused with a clear error, and nothing is stored;
* odd but legal names and namespaces round-trip through a restart and are killed;
* what is under the record prefix but is not a record this release reads (not msgpack, a
  newer schema, a key that is not UTF-8) is set aside: it never stops the controller (I4),
  stays untouched, and is reported (records written by hand as schema v1 documents them
  are read: test_upgrade.py);
* the record of a dead actor is dropped (I5), also under a live owner and after a refused
  owner addition;
* what the controller logs while it reads the records reaches the controller log.
"""

from __future__ import annotations

import os

import msgpack
import pytest
import ray
from ray import serve

import serve_cleanup
from ray_helpers import (
    DEPLOYMENT,
    Aux,
    controller_handle,
    controller_status,
    kill_controller_and_wait_restart,
    kv,
    kv_record_keys,
    run_cli,
    wait_dead,
    wait_for,
)
from serve_cleanup.core import records
from serve_cleanup.core.config import Config
from serve_cleanup.serve_adapter import _ray

pytestmark = pytest.mark.ray


@serve.deployment(**DEPLOYMENT)
class Idle:
    def __call__(self) -> str:
        return "ok"


# --- refused, nothing stored ---------------------------------------------------------------


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


@pytest.mark.parametrize("not_a_handle", [None, 1, "actor", "not-an-actor", b"\x00", [1], {"a": 1}, Aux])
def test_non_handles_are_type_errors(durable_serve, not_a_handle):
    with pytest.raises(TypeError, match="ActorHandle"):
        serve_cleanup.register(not_a_handle)
    assert kv_record_keys() == []


def test_the_upstream_method_refuses_a_non_handle(durable_serve):
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


def test_serve_system_actors_are_refused(fresh_durable_serve):
    """Serve's controller, a proxy and a replica: each refused, nothing stored (an
    instance of its own: the shared one runs no proxy)."""
    serve.run(Idle.bind(), name="idle", route_prefix="/idle")
    for which, handle in {
        "controller": controller_handle(),
        "proxy": _serve_actor("SERVE_PROXY_ACTOR"),
        "replica": _serve_actor("SERVE_REPLICA::"),
    }.items():
        with pytest.raises(serve_cleanup.SystemActorError, match="Serve"):
            serve_cleanup.register(handle)
        assert kv_record_keys() == [], which


# --- odd but legal -------------------------------------------------------------------------


ODD_NAMES = {  # id: (name, namespace)
    "long": ("x" * 1000, "long-name"),
    "unicode": ("名前 with spaces", "名前空間"),
    "colons": ("colons::in::name", "serve::app::deployment"),
    "emoji": ("emoji-🦄", "ns with spaces and ✓"),
    "lookalike": ("SERVE_REPLICA::lookalike", "not-serve"),  # reserved prefix, but not in "serve"
}


def test_odd_names_and_namespaces_round_trip_and_are_killed(durable_serve):
    """Each odd name and namespace is registered as given, kept exactly through a
    controller restart, and its actor killed at shutdown (all five in one Serve instance)."""
    made = {}
    for case, (name, namespace) in ODD_NAMES.items():
        actor = Aux.options(name=name, namespace=namespace, lifetime="detached").remote()
        ray.get(actor.ping.remote())
        record = serve_cleanup.register(actor)
        assert (record.name, record.namespace) == (name, namespace), case
        made[actor._actor_id.hex()] = (case, actor)
    kill_controller_and_wait_restart()
    stored = {r.actor_id: (r.name, r.namespace) for r in serve_cleanup.list_registrations()}
    assert stored == {actor_id: ODD_NAMES[case] for actor_id, (case, _) in made.items()}
    serve.shutdown()
    for case, actor in made.values():
        wait_dead(actor)


# --- bad state is set aside ----------------------------------------------------------------


def _plant(key_suffix: str, value: bytes) -> str:
    key = records.KEY_PREFIX + key_suffix
    kv().put(key, value)
    return key


def _plant_raw(suffix: bytes, value: bytes) -> bytes:
    key = records.KEY_PREFIX.encode() + suffix
    kv().put(key, value)
    return key


@pytest.mark.smoke
def test_corrupt_and_future_records_are_set_aside(durable_serve, actors):
    """Not msgpack, a newer schema, a key that is not UTF-8 (which used to raise
    UnicodeDecodeError in the controller's __init__): each is set aside at the next start,
    reported by `status --detail`, skipped by readers, and left untouched, while the good
    record is acted on.

    Then a record whose key loads (the actor id is in it) but whose value is garbage by
    the time the shutdown needs the handle: that value is set aside and left too, and its
    anonymous actor (no handle, no name) is killed by the id in its key, through GCS
    (``_ray.kill_by_id``), on every supported Ray (a smoke test)."""
    good = actors()
    serve_cleanup.register(good)
    garbage = _plant("00" * 16, b"\xc1 not msgpack")
    future = _plant(
        "11" * 16,
        msgpack.packb({"v": records.SCHEMA_VERSION + 1, "actor_id": "11" * 16, "new": "field"}),
    )
    not_utf8 = _plant_raw(b"\xff\xfe\x00", b"\xc1 random bytes").decode("utf-8", "backslashreplace")

    status = kill_controller_and_wait_restart()  # rehydrate sees the bad entries
    assert status["records"] == 1
    reasons = {s["key"]: s["reason"] for s in status["set_aside"]}
    (shown_not_utf8,) = set(reasons) - {garbage, future}  # shown with backslash escapes
    assert set(reasons) == {garbage, future, shown_not_utf8} and "\\xff" in shown_not_utf8
    assert "newer serve_cleanup" in reasons[future]
    assert "UTF-8" in reasons[shown_not_utf8]

    assert len(serve_cleanup.list_registrations()) == 1  # readers skip them too
    listed = run_cli("list")
    assert listed.returncode == 0, listed.stderr
    assert good._actor_id.hex() in listed.stdout
    shown = run_cli("status", "--detail")  # set-aside entries need every record read
    assert shown.returncode == 0 and "set aside:       3" in shown.stdout, shown.stdout + shown.stderr

    anonymous = actors()
    serve_cleanup.register(anonymous)
    (unreadable,) = [k for k in kv_record_keys() if k.startswith(records.actor_prefix(anonymous._actor_id.hex()))]
    kv().put(unreadable, b"\xc1 not msgpack")  # memory holds no handle: the kill reads this value
    serve.shutdown()
    wait_dead(good)
    wait_dead(anonymous)
    # Set aside means untouched: the entries are still in the KV for a human (`serve-cleanup
    # purge`) or a newer serve_cleanup to deal with.
    wait_for(lambda: sorted(kv_record_keys()) == sorted([garbage, future, not_utf8, unreadable]), 10,
             "only bad entries left")


# --- dead actors' records are dropped ------------------------------------------------------

# I5's bound (docs/architecture.md): the liveness interval plus a reconcile tick after the
# actor died, plus the pass itself (two ticks here, and a second for the lookups). The
# controller's sweep runs on its own schedule, so the death may land anywhere in it.
I5_BOUND_S = Config.liveness_interval_s + 2 * Config.reconcile_interval_s + 1.0


def test_dead_actor_record_under_live_owner_is_dropped(durable_serve, actors):
    """A Serve-wide record and one owned by a deployment that lives on: both actors die,
    both records go within I5's bound, and the owner keeps running."""
    serve.run(Idle.bind(), name="live-app", route_prefix=None)
    serve_wide, owned = actors(), actors()
    serve_cleanup.register(serve_wide)
    serve_cleanup.register(owned, scope="deployment", app="live-app", deployment="Idle")
    for aux in (serve_wide, owned):
        ray.kill(aux, no_restart=True)
    for aux in (serve_wide, owned):
        wait_dead(aux)
    wait_for(lambda: kv_record_keys() == [], I5_BOUND_S, "the dead actors' records to be dropped")
    assert serve.status().applications["live-app"].status == "RUNNING"


@pytest.mark.parametrize("previous", ["serve", "app"])
def test_refused_owner_addition_keeps_the_previous_owners(slow_reconcile_serve, actors, previous):
    """Adding an owner to a (now dead) actor is refused, and the registration it had stays
    as it was, keys included: its serve key (which an accepted addition would have
    replaced), or its app owner (beside which the addition would have been a second
    owner). Until the liveness sweep, which this fixture slows down, drops it."""
    serve.run(Idle.bind(), name="owner-app", route_prefix=None)
    serve.run(Idle.bind(), name="other-app", route_prefix=None)
    aux = actors()
    if previous == "serve":
        serve_cleanup.register(aux)
        owners: tuple = ()
    else:
        serve_cleanup.register(aux, scope="app", app="owner-app")
        owners = (("app", "owner-app", ""),)
    (before,) = serve_cleanup.list_registrations()
    ray.kill(aux, no_restart=True)
    wait_dead(aux)
    with pytest.raises(serve_cleanup.DeadActorError):
        serve_cleanup.register(aux, scope="app", app="other-app")
    (kept,) = serve_cleanup.list_registrations()
    assert (kept.actor_id, kept.owners) == (aux._actor_id.hex(), owners)
    assert kv_record_keys() == sorted(before.keys())  # the same keys: no new one, none deleted
    serve.shutdown()  # the dead actor's record is dropped without error
    wait_for(lambda: kv_record_keys() == [], 30, "the dead actor's record to go")


# --- what the controller says while it starts ----------------------------------------------


def test_what_the_controller_logs_while_it_starts_lands_in_the_controller_log(durable_serve, actors):
    """The records are read before Serve sets up its controller log; the lines of that
    read are held and written there once it exists (they used to land in the worker's
    stderr file, where nobody looks)."""
    serve_cleanup.register(actors())
    pid = kill_controller_and_wait_restart()["pid"]
    session = ray._private.worker.global_worker.node.get_session_dir_path()
    path = os.path.join(session, "logs", "serve", f"controller_{pid}.log")

    def logged() -> bool:
        with open(path, errors="replace") as f:
            return "serve_cleanup: rehydrated 1 registration(s)" in f.read()

    wait_for(logged, 30, f"the rehydrate line in {path}")
