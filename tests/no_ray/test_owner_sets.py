"""Records v2 without Ray: the key grammar, loads of mixed v1 and v2 keys, owner sets, the
upstream rule, and the keys a crash in the middle of an owner change leaves."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakes import Crash, World
from serve_cleanup.core import records as rec
from serve_cleanup.core.admission import Registration
from serve_cleanup.core.ports import ServeState
from serve_cleanup.core.records import SERVE_OWNER, Record
from serve_cleanup.core.registry import Registry
from serve_cleanup.errors import RecordDecodeError

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
AID = "5b2c8e1f0a9d4c7e6b3a21f0e8d7c6b5"
APP_A, APP_B = ("app", "A", ""), ("app", "B", "")


def owned(reg: Registration, scope: str, app: str = "", deployment: str = "") -> Registration:
    return dataclasses.replace(reg, scope=scope, app=app, deployment=deployment)


def upstream(reg: Registration) -> Registration:
    return dataclasses.replace(reg, ensure_only=True, check_actor=False)


# --- the key grammar ---------------------------------------------------------------------

texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=30)
names = st.one_of(texts, st.sampled_from(["", "/", "%", "%2F", "%25", "a/b%c", "//", "%%2F/"]))
owners = st.one_of(
    st.just(SERVE_OWNER),
    st.tuples(st.just("app"), names.filter(bool), st.just("")),
    st.tuples(st.just("deployment"), names.filter(bool), names.filter(bool)),
)
times = st.integers(-(4 * 10**15) + 1, 4 * 10**15 - 1).map(lambda us: us / 1_000_000)  # whole microseconds
ids = st.binary(min_size=1, max_size=20).map(bytes.hex)


@SETTINGS
@given(ids, owners, times, names, names, st.sampled_from(rec.KINDS))
def test_any_key_round_trips(actor_id, owner, t, name, namespace, kind):
    key = rec.pair_key(actor_id, owner, t, name, namespace, kind)
    assert key.startswith(rec.actor_prefix(actor_id)) and rec.bucket_of(key.encode()) == key.encode()[:22]
    assert rec.parse_key(key.encode()) == (actor_id, owner, float(t), name, namespace, kind)
    parsed = rec.parse_keys([key.encode()])  # the bulk path agrees
    assert (parsed.ids, parsed.owners, parsed.times, parsed.names, parsed.namespaces, parsed.kinds, parsed.bad) == (
        [actor_id], [owner], [float(t)], [name], [namespace], [kind], [])


@SETTINGS
@given(ids, names.filter(bool), names.filter(bool), times)
def test_an_app_never_matches_as_a_prefix_of_another(actor_id, a, b, t):
    """Each part ends at its own ``/``: the keys of app A start with no prefix that a
    key of another app AB (or of app A's deployment) starts with, part for part."""
    key_a = rec.pair_key(actor_id, ("app", a, ""), t, "", "")
    key_ab = rec.pair_key(actor_id, ("app", a + b, ""), t, "", "")
    owner_a = key_a.split("/", 4)[:4] + [rec.escape(a) + "/"]
    assert not key_ab.startswith("/".join(owner_a))


@SETTINGS
@given(st.lists(st.tuples(ids, owners, times, names, names), max_size=40), st.integers(0, 39))
def test_bulk_and_one_by_one_parsing_agree_and_a_bad_key_is_set_aside(items, bad_at):
    keys = [rec.pair_key(*item).encode() for item in items]
    if keys:
        keys[bad_at % len(keys)] += b"/extra"  # one field too many: set aside, the rest parsed
    parsed = rec.parse_keys(keys)
    good = [k for k in keys if not k.endswith(b"/extra")]
    assert parsed.raw == good and [k for k, _ in parsed.bad] == [k for k in keys if k not in good]
    assert parsed.ids == [rec.parse_key(k).actor_id for k in good]


@pytest.mark.parametrize("key, why", [
    (b"serve-cleanup-actor-ab/2/actor/app/A//1//\xff", "not UTF-8"),
    (b"serve-cleanup-actor-ab/3/actor/app/A//1//", "grammar version"),
    (b"serve-cleanup-actor-ab/2/job/app/A//1//", "kind"),
    (b"serve-cleanup-actor-ab/2/actor/job/J//1//", "scope"),
    (b"serve-cleanup-actor-ab/2/actor/app///1//", "needs app"),
    (b"serve-cleanup-actor-ab/2/actor/app/A//01//", "microseconds"),
    (b"serve-cleanup-actor-ab/2/actor/app/A//1.5//", "microseconds"),
    (b"serve-cleanup-actor-ab/2/actor/app/A//9000000000000000//", "microseconds"),
    (b"serve-cleanup-actor-AB/2/actor/app/A//1//", "actor id"),
    (b"serve-cleanup-actor-ab/2/actor/app/A%2//1//", "escape"),
    (b"serve-cleanup-actor-ab/2/actor/app/A/1//", "fields"),
])
def test_a_key_that_does_not_parse_says_why(key, why):
    with pytest.raises(RecordDecodeError, match=why):
        rec.parse_key(key)
    parsed = rec.parse_keys([key] * 3)
    assert parsed.ids == [] and len(parsed.bad) == 3


def test_v1_keys_are_told_apart_and_reserved_scopes_have_names():
    assert rec.parse_keys([rec.record_key(AID).encode()]).v1 == [rec.record_key(AID).encode()]
    assert (rec.SCOPE_JOB, rec.SCOPE_PLACEMENT_GROUP, rec.KIND_PLACEMENT_GROUP) == ("job", "pg", "pg")


# --- resolving the keys of one actor -----------------------------------------------------


def test_the_later_key_of_one_owner_wins_and_serve_only_when_latest():
    k = [b"k0", b"k1", b"k2"]
    assert rec.resolve_pairs([((APP_A, 1.0), k[0]), ((APP_A, 2.0), k[1])]) == ([((APP_A, 2.0), k[1])], [k[0]])
    # {} -> {A}: the A key is later: A (the serve key goes)
    assert rec.resolve_pairs([((SERVE_OWNER, 1.0), k[0]), ((APP_A, 2.0), k[1])]) == ([((APP_A, 2.0), k[1])], [k[0]])
    # {A} -> {}: the serve key is later: no owner (the A key goes)
    assert rec.resolve_pairs([((APP_A, 1.0), k[0]), ((SERVE_OWNER, 2.0), k[1])]) == (
        [((SERVE_OWNER, 2.0), k[1])], [k[0]])
    kept, stale = rec.resolve_pairs([((APP_A, 1.0), k[0]), ((APP_B, 3.0), k[1]), ((SERVE_OWNER, 2.0), k[2])])
    assert kept == [((APP_A, 1.0), k[0]), ((APP_B, 3.0), k[1])] and stale == [k[2]]


# --- loads --------------------------------------------------------------------------------


async def test_a_mixed_v1_and_v2_load_reads_v1_values_only_and_rewrites_them():
    w = World()
    w.owners.deploy("A", "D")
    core = await w.core()
    v2 = w.actor("n2")
    await core.registrar.register(owned(v2, "app", "A"))
    v1s = [w.actor(f"n{i}") for i in range(3)]
    for i, a in enumerate(v1s):  # as 0.1.0 wrote them
        r = Record(a.actor_id, a.name, a.namespace, a.handle, *(("app", "A", "") if i else rec.SERVE_OWNER),
                   registered_at=w.clock.time())
        w.store.data[rec.record_key(a.actor_id)] = rec.encode_v1(r)
    w.store.requests = 0
    core = await w.core()
    assert w.store.requests == 3  # one listing, one read of the three v1 values, the exits' listing
    assert core.status()["records"] == 4 and core.status()["v1_records"] == 3
    assert core.registry.get(v1s[1].actor_id).owners == (("app", "A", ""),)
    await w.ticks(core, 2)  # the background rewrite
    assert core.status()["v1_records"] == 0
    assert all(not k.endswith(a.actor_id.encode()) for a in v1s for k in w.store.keys_of(a.actor_id))
    assert {a: r.owners for a, r in w.store.records().items()} == {
        v2.actor_id: (APP_A,), v1s[0].actor_id: (), v1s[1].actor_id: (APP_A,), v1s[2].actor_id: (APP_A,)}
    assert all(r.handle for r in w.store.records().values())
    w.owners.delete_app("A")
    await w.ticks(core, 4)
    assert [w.table.alive(a.actor_id) for a in [v2] + v1s] == [False, True, False, False]


async def test_a_v1_key_beside_the_same_actors_v2_keys_is_deleted_by_its_exact_key():
    """A v1 key is a prefix of its actor's v2 keys: a bulk delete must not prefix-delete
    it, and dropping the actor deletes both."""
    w = World()
    core = await w.core()
    a, other = w.actor(), w.actor()
    await core.registrar.register(a)
    await core.registrar.register(other)
    r = w.store.records()[a.actor_id]
    w.store.data[rec.record_key(a.actor_id)] = rec.encode_v1(r.replace(pairs=((SERVE_OWNER, r.latest - 1),)))
    core = await w.core()
    assert core.status()["records"] == 2 and core.registry.get(a.actor_id) is not None
    registry: Registry = core.registry
    assert len(registry.keys_of(a.actor_id)) == 2  # its v2 key and, stale, its older v1 key
    await registry.drop_bulk([registry.get(a.actor_id)], lambda _: False)
    assert w.store.keys_of(a.actor_id) == [] and len(w.store.keys_of(other.actor_id)) == 1
    assert all(not p.endswith(a.actor_id.encode()) for p in w.store.prefix_deletes)


# --- owner sets -----------------------------------------------------------------------------


async def test_an_actor_dies_with_its_last_owner_never_before():
    w = World()
    w.owners.deploy("A", "D")
    w.owners.deploy("B", "D")
    core = await w.core()
    a = w.actor()
    first = await core.registrar.register(owned(a, "app", "A"))
    again = await core.registrar.register(owned(a, "app", "A"))  # the same pair: nothing new
    assert again.pairs == first.pairs and w.store.puts == 1
    both = await core.registrar.register(owned(a, "deployment", "B", "D"))
    assert set(both.owners) == {APP_A, ("deployment", "B", "D")} and both.time_of(APP_A) == first.latest
    assert len(w.store.keys_of(a.actor_id)) == 2 and core.status()["pairs"] == 2
    w.owners.delete_app("A")
    await w.ticks(core, 4)
    assert w.table.alive(a.actor_id)  # B's deployment still holds it
    w.owners.delete_app("B")
    await w.ticks(core, 10)
    assert not w.table.alive(a.actor_id) and w.store.keys_of(a.actor_id) == []


async def test_an_owner_added_to_an_actor_without_owners_replaces_its_serve_key():
    w = World()
    w.owners.deploy("A", "D")
    core = await w.core()
    a = w.actor()
    await core.registrar.register(a)
    record = await core.registrar.register(owned(a, "app", "A"))
    assert record.owners == (APP_A,) and len(w.store.keys_of(a.actor_id)) == 1
    w.owners.delete_app("A")
    await w.ticks(core, 4)
    assert not w.table.alive(a.actor_id)


@pytest.mark.parametrize("how", ["upstream", "scope serve"])
async def test_the_upstream_method_and_scope_serve_leave_the_owners_alone(how):
    """A router's prefix tree that a user scoped to an app dies with its app, whatever
    the router calls afterwards."""
    w = World()
    w.owners.deploy("A", "D")
    core = await w.core()
    a = w.actor("tree")
    await core.registrar.register(owned(a, "app", "A"))
    puts = w.store.puts
    for _ in range(3):
        record = await core.registrar.register(upstream(a) if how == "upstream" else a)
        assert record.owners == (APP_A,)
    assert w.store.puts == puts
    w.owners.delete_app("A")
    await w.ticks(core, 4)
    assert not w.table.alive(a.actor_id)
    b = w.actor()  # not registered yet: registered, with no owner
    assert (await core.registrar.register(upstream(b))).owners == ()


async def test_unregistering_owners_then_the_registration():
    w = World()
    w.owners.deploy("A", "D")
    w.owners.deploy("B", "D")
    core = await w.core()
    a = w.actor()
    await core.registrar.register(owned(a, "app", "A"))
    await core.registrar.register(owned(a, "app", "B"))
    assert await core.unregister(a.actor_id, ("app", "C", "")) is False
    assert await core.unregister(a.actor_id, APP_A) is True
    assert w.store.records()[a.actor_id].owners == (APP_B,)
    assert await core.unregister(a.actor_id, APP_B) is True  # the last: registered for shutdown
    record = w.store.records()[a.actor_id]
    assert record.owners == () and record.handle == a.handle and len(w.store.keys_of(a.actor_id)) == 1
    w.owners.delete_app("B")
    await w.ticks(core, 4)
    assert w.table.alive(a.actor_id)
    with pytest.raises(ValueError):
        await core.unregister(a.actor_id, SERVE_OWNER)
    assert await core.unregister(a.actor_id) is True
    assert w.store.keys_of(a.actor_id) == []
    w.owners.serve_state = ServeState.SHUTTING_DOWN
    await w.shutdown(core)
    assert w.table.alive(a.actor_id)


# --- a crash in the middle of an owner change ----------------------------------------------


@pytest.mark.parametrize("change", ["add the first owner", "remove the last owner"])
async def test_a_crash_between_the_put_and_the_delete_leaves_the_new_set(change):
    w = World()
    w.owners.deploy("A", "D")
    core = await w.core()
    a = w.actor()
    await core.registrar.register(a if change == "add the first owner" else owned(a, "app", "A"))
    w.crash_at.add("after_record_write")
    with pytest.raises(Crash):
        if change == "add the first owner":
            await core.registrar.register(owned(a, "app", "A"))
        else:
            await core.unregister(a.actor_id, APP_A)
    assert len(w.store.keys_of(a.actor_id)) == 2  # the old key and the new one
    core = await w.core()
    expected = (APP_A,) if change == "add the first owner" else ()
    assert core.registry.get(a.actor_id).owners == expected
    await w.ticks(core, 1)  # the loader's loser is deleted
    assert len(w.store.keys_of(a.actor_id)) == 1 and w.store.records()[a.actor_id].owners == expected
    w.owners.delete_app("A")
    await w.ticks(core, 4)
    assert w.table.alive(a.actor_id) is (change == "remove the last owner")


async def test_a_loader_that_kept_the_older_key_would_be_caught(monkeypatch):
    """The check above fails on a broken loader (it keeps the older of two keys)."""
    resolve = rec.resolve_pairs

    def broken(pairs):
        kept, stale = resolve([((o, -t), k) for (o, t), k in pairs])
        return [((o, -t), k) for (o, t), k in kept], stale

    monkeypatch.setattr(rec, "resolve_pairs", broken)
    with pytest.raises(AssertionError):
        await test_a_crash_between_the_put_and_the_delete_leaves_the_new_set("add the first owner")


async def test_an_unreadable_value_found_at_kill_time_is_set_aside_and_its_actor_found_by_name():
    w = World()
    w.owners.deploy("A", "D")
    core = await w.core()
    a = w.actor("named")
    await core.registrar.register(owned(a, "app", "A"))
    (key,) = w.store.keys_of(a.actor_id)
    w.store.data[key.decode()] = b"\xc1 not msgpack"
    core = await w.core()  # loads from the key: fine
    assert core.status()["records"] == 1 and core.status()["set_aside"] == []
    w.owners.delete_app("A")
    await w.ticks(core, 4)
    assert not w.table.alive(a.actor_id)  # reached by the name and id its key carries
    assert [s["key"] for s in core.status()["set_aside"]] == [key.decode()]
    assert key.decode() in w.store.data  # left untouched


async def test_a_load_of_actors_with_several_owners_matches_the_resolving_path():
    """The load's shortcut for actors whose keys are one per owner (no serve key, no v1
    key) builds the record ``resolve_pairs`` would: pairs by time then owner, the name
    of the newest key; an actor with a crash's leftovers still goes through it."""
    from serve_cleanup.core.registry import read_keys
    from fakes import InMemoryRecordStore

    a, b, c = "ab" * 16, "cd" * 16, "ef" * 16
    app_b, app_c = (rec.SCOPE_APP, "B", ""), (rec.SCOPE_APP, "C", "")
    keys = [rec.pair_key(a, app_b, 3.0, "n-new", "ns"), rec.pair_key(a, APP_A, 3.0, "n-new", "ns"),
            rec.pair_key(a, app_c, 1.0, "n-old", "ns"),
            rec.pair_key(b, APP_A, 1.0, "", ""), rec.pair_key(b, APP_A, 2.0, "", ""),  # two of one owner
            rec.pair_key(c, SERVE_OWNER, 5.0, "x", "ns"), rec.pair_key(c, APP_A, 4.0, "x", "ns")]
    loaded = await read_keys(InMemoryRecordStore({k: b"" for k in keys}))
    ra, rb, rc = (loaded.records[x] for x in (a, b, c))
    assert ra.pairs == ((app_c, 1.0), (APP_A, 3.0), (app_b, 3.0)) and ra.name == "n-new"
    kept, stale = rec.resolve_pairs([(p, rec.pair_key(a, p[0], p[1], "", "").encode()) for p in ra.pairs])
    assert tuple(p for p, _ in kept) == ra.pairs and not stale
    assert a not in loaded.stale and a not in loaded.odd
    assert rb.pairs == ((APP_A, 2.0),) and loaded.stale[b] == {keys[3].encode()}
    assert rc.pairs == ((SERVE_OWNER, 5.0),) and loaded.stale[c] == {keys[6].encode()}


def test_to_dict_reads_the_pairs_directly():
    """``to_dict`` (``list``'s rows) gives what the properties give (``read_kv``'s order,
    which needs the Ray-side client: tests/ray_no_cluster/test_client_args.py)."""
    one = Record("ab" * 16, "n", "ns", pairs=((APP_A, 5.0),))
    two = Record("cd" * 16, "", "", pairs=(((rec.SCOPE_APP, "B", ""), 7.0), (APP_A, 3.0)))
    for r in (one, two, Record("ef" * 16, "", "", registered_at=1.0)):
        d = r.to_dict()
        assert (d["scope"], d["app"], d["deployment"], d["registered_at"]) == (r.scope, r.app, r.deployment, r.registered_at)
    assert two.to_dict()["registered_at"] == 3.0 and len(two.to_dict()["owners"]) == 2
