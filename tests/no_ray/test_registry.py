"""The registry over an in-memory store: the mirror rule, loading in pages, bulk deletes.
No Ray."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from fakes import InMemoryRecordStore, replace_record
from serve_cleanup.core import records as rec
from serve_cleanup.core import registry as registry_module
from serve_cleanup.core.records import Record
from serve_cleanup.core.registry import Registry, SetAside
from serve_cleanup.errors import RecordDecodeError


def aid(i: int) -> str:
    return f"{i:032x}"


def make(i: int, *, scope: str = rec.SCOPE_SERVE, app: str = "", deployment: str = "",
         name: str = "", namespace: str = "", registered_at: float = 1000.0) -> Record:
    return Record(actor_id=aid(i), name=name, namespace=namespace, handle=f"handle-{i}".encode(),
                  scope=scope, app=app, deployment=deployment, registered_at=registered_at)


def slim(r: Record) -> Record:
    return replace_record(r, handle=b"")


@pytest.fixture
def store() -> InMemoryRecordStore:
    return InMemoryRecordStore()


@pytest.fixture
def registry(store: InMemoryRecordStore) -> Registry:
    return Registry(store, clock=lambda: 1234.5)


def never_busy(actor_id: str) -> bool:
    return False


# --- add and remove ----------------------------------------------------------------------


async def test_add_stores_one_entry_per_actor_and_memory_keeps_it_without_the_handle(store, registry):
    recs = [make(1), make(2, scope="app", app="shop"),
            make(3, scope="deployment", app="shop", deployment="D", name="n", namespace="ns")]
    for r in recs:
        await registry.add(r)
    assert store.puts == 3
    assert set(store.data) == {r.key for r in recs}  # one v2 key per (actor, owner) pair
    for r in recs:
        assert rec.decode(store.data[r.key]) == r  # the KV has the handle
        assert registry.get(r.actor_id) == slim(r)  # memory does not
    assert len(registry) == 3


async def test_add_of_another_owner_overwrites_the_same_key(store, registry):
    await registry.add(make(7, scope="app", app="shop"))
    moved = make(7, scope="deployment", app="shop", deployment="D")
    await registry.add(moved)
    assert list(store.data) == [moved.key]
    assert rec.decode(store.data[moved.key]) == moved
    assert registry.counts_by_scope() == {"serve": 0, "app": 0, "deployment": 1, "job": 0}
    assert registry.orphans({"shop"}, set()) == [slim(moved)]


async def test_failed_put_raises_and_changes_nothing(store, registry):
    store.fail_next = TimeoutError("GCS gone")
    with pytest.raises(TimeoutError):
        await registry.add(make(1))
    assert store.data == {} and len(registry) == 0


async def test_failed_overwrite_keeps_the_old_record_in_memory_and_store(store, registry):
    first = make(1, scope="app", app="a")
    await registry.add(first)
    store.fail_next = TimeoutError("GCS gone")
    with pytest.raises(TimeoutError):
        await registry.add(make(1, scope="app", app="b"))
    assert registry.get(aid(1)) == slim(first)
    assert rec.decode(store.data[first.key]) == first


async def test_invalid_record_is_refused_before_writing(store, registry):
    with pytest.raises(RecordDecodeError):
        await registry.add(replace_record(make(1), scope="global"))
    assert store.requests == 0


async def test_remove_deletes_from_the_store_before_memory(store, registry):
    await registry.add(make(1))
    seen = []
    delete = store.delete

    async def observing(key):
        seen.append(aid(1) in registry)
        await delete(key)

    store.delete = observing
    assert await registry.remove(aid(1)) is True
    assert seen == [True] and aid(1) not in registry and store.data == {}


async def test_failed_delete_raises_and_keeps_the_record(store, registry):
    await registry.add(make(1))
    store.fail_next = ConnectionError("GCS gone")
    with pytest.raises(ConnectionError):
        await registry.remove(aid(1))
    assert aid(1) in registry and make(1).key in store.data
    assert await registry.remove(aid(1)) is True


async def test_remove_of_an_unknown_id_still_deletes_a_stray_key(store, registry):
    stray = make(5)  # a put whose outcome was unknown may have landed
    store.data[stray.key] = rec.encode(stray)
    store.data[rec.record_key(aid(5))] = rec.encode_v1(stray)
    store.data[make(50).key] = rec.encode(make(50))  # id 5 is a prefix of id 50: kept
    assert await registry.remove(aid(5)) is False
    assert list(store.data) == [make(50).key]


async def test_verified_marks_are_forgotten_with_the_record(registry):
    await registry.add(make(1))
    registry.verified.add(aid(1))
    assert registry.unverified() == 0
    await registry.remove(aid(1))
    assert registry.verified == set()


async def test_full_reads_the_handles_back(store, registry):
    a, b = make(1), make(2)
    await registry.add(a)
    await registry.add(b)
    full = await registry.full([registry.get(aid(1)), registry.get(aid(2))])
    assert full == {aid(1): a, aid(2): b}


# --- load --------------------------------------------------------------------------------


async def test_load_rebuilds_from_the_store(store):
    writer = Registry(store, clock=lambda: 1.0)
    recs = [make(i, scope="app", app=f"app{i % 3}") for i in range(5)]
    for r in recs:
        await writer.add(r)
    reader = Registry(store, clock=lambda: 1.0)
    assert await reader.load() == (5, [])
    assert {r.actor_id: r for r in reader.records()} == {r.actor_id: slim(r) for r in recs}


async def test_load_reads_in_pages_and_shares_repeated_strings(store, monkeypatch):
    monkeypatch.setattr(registry_module, "LOAD_PAGE", 7)
    recs = [make(i, scope="deployment", app="shop", deployment="Checkout", name=f"a{i}", namespace="ns")
            for i in range(50)]
    for r in recs:  # written by 0.1.0: the v1 values are read, in pages
        store.data[rec.record_key(r.actor_id)] = rec.encode_v1(r)
    reader = Registry(store, clock=lambda: 1.0)
    assert (await reader.load())[0] == 50
    assert store.requests == 1 + 8 + 1  # one listing, then ceil(50 / 7) reads, the exits' listing
    assert len(reader.odd_ids()) == 50  # to rewrite as v2
    for r in recs[:10]:  # v2 keys: the listing alone
        store.data[r.key] = rec.encode(r)
        del store.data[rec.record_key(r.actor_id)]
    store.requests = 0
    assert (await Registry(store, clock=lambda: 1.0).load())[0] == 50
    assert store.requests == 1 + 6 + 1
    loaded = reader.records()
    assert len({id(r.app) for r in loaded}) == 1 and len({id(r.namespace) for r in loaded}) == 1


async def test_load_sets_aside_unreadable_entries_untouched(store):
    good = [make(1), make(2, scope="app", app="shop", name="w", namespace="ns")]
    for r in good:
        store.data[r.key] = rec.encode(r)
    future = msgpack.unpackb(rec.encode(make(11)), raw=False)
    future["v"] = rec.SCHEMA_VERSION + 1
    store.data[rec.record_key(aid(10))] = b"\xc1 definitely not a record"
    store.data[rec.record_key(aid(11))] = msgpack.packb(future, use_bin_type=True)
    store.data[rec.record_key(aid(12))] = rec.encode(make(13))  # actor 13's record under 12's key
    store.data[rec.KEY_PREFIX.encode() + b"\xff\xfe"] = rec.encode(make(14))  # not UTF-8
    store.data["some-other-serve-key"] = b"\xc1"  # outside our prefix: not ours
    snapshot = dict(store.data)

    registry = Registry(store, clock=lambda: 1.0)
    count, set_aside = await registry.load()
    assert count == 2 and {r.actor_id for r in registry.records()} == {aid(1), aid(2)}
    by_key = {s.key: s for s in set_aside}
    assert len(by_key) == 4 and all(isinstance(s, SetAside) and s.reason for s in set_aside)
    assert "msgpack" in by_key[rec.record_key(aid(10))].reason
    assert "upgrade" in by_key[rec.record_key(aid(11))].reason
    assert "another key" in by_key[rec.record_key(aid(12))].reason
    assert any("not UTF-8" in s.reason and s.raw_key.endswith(b"\xff\xfe") for s in set_aside)
    assert store.data == snapshot and store.puts == 0


async def test_load_sets_aside_a_record_with_whitespace_in_its_actor_id():
    spaced = aid(1)[:16] + "  " + aid(1)[16:]
    key = rec.KEY_PREFIX + spaced
    value = msgpack.packb({"v": 1, **{**make(1).to_dict(), "handle": b"h", "actor_id": spaced}}, use_bin_type=True)
    registry = Registry(InMemoryRecordStore({key: value}), clock=lambda: 1.0)
    count, set_aside = await registry.load()
    assert count == 0 and [s.key for s in set_aside] == [key]


async def test_a_failed_load_raises_and_keeps_the_view(store, registry):
    await registry.add(make(1))
    store.fail_next = TimeoutError("GCS gone")
    with pytest.raises(TimeoutError):
        await registry.load()
    assert aid(1) in registry


# --- bulk deletes ------------------------------------------------------------------------


async def test_bulk_drop_of_every_record_is_one_prefix_delete(store, registry):
    for i in range(300):
        await registry.add(make(i))
    dropped = await registry.drop_bulk(registry.records(), never_busy)
    assert len(dropped) == 300 and len(registry) == 0 and store.data == {}
    assert store.prefix_deletes == [rec.KEY_PREFIX.encode()]


async def test_bulk_drop_spares_other_records_and_foreign_keys_and_deletes_the_rest(store, registry):
    def spread(i: int) -> Record:  # actor ids over all 256 buckets
        return replace_record(make(i), actor_id=f"{i % 256:02x}{i:030x}")

    for i in range(600):
        await registry.add(spread(i))
    keep = registry.get(spread(5).actor_id)  # bucket "05"
    junk = rec.KEY_PREFIX.encode() + b"07\xff junk"  # bucket "07"
    store.data[junk] = b"\xc1"
    doomed = [r for r in registry.records() if r is not keep]
    dropped = await registry.drop_bulk(doomed, never_busy)
    assert dropped == {r.actor_id for r in doomed}
    assert set(store.data) == {keep.key, junk}
    assert registry.records() == [keep]
    # 254 clean buckets went in one request each; the two others key by key.
    assert len(store.prefix_deletes) == 254
    assert not any(keep.key.encode().startswith(p) or junk.startswith(p) for p in store.prefix_deletes)


async def test_bulk_drop_leaves_superseded_and_busy_records(store, registry):
    for i in range(100):
        await registry.add(make(i))
    old = registry.get(aid(1))
    await registry.add(make(1, scope="app", app="a"))  # moved: `old` is no longer current
    doomed = [r for r in registry.records() if r.actor_id != aid(1)] + [old]
    dropped = await registry.drop_bulk(doomed, lambda a: a == aid(2))
    assert aid(1) not in dropped and aid(2) not in dropped
    assert {r.actor_id for r in registry.records()} == {aid(1), aid(2)}
    assert set(store.data) == {make(1, scope="app", app="a").key, make(2).key}


async def test_bulk_drop_waits_for_writes_under_way_and_holds_new_ones(store, registry):
    """The write gate: no put lands between the listing and the deletes."""
    import asyncio

    for i in range(100):
        await registry.add(make(i))
    started = asyncio.Event()
    release = asyncio.Event()
    put = store.put

    async def slow_put(key, value):
        started.set()
        await release.wait()
        await put(key, value)

    store.put = slow_put
    writer = asyncio.ensure_future(registry.add(make(500)))
    await started.wait()
    drop = asyncio.ensure_future(registry.drop_bulk(registry.records(), never_busy))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not drop.done()  # it waits for the put under way
    release.set()
    await writer
    await drop
    assert set(store.data) == {make(500).key} and [r.actor_id for r in registry.records()] == [aid(500)]


# --- new_record and orphans --------------------------------------------------------------


def test_new_record_blanks_the_namespace_of_an_anonymous_actor(registry):
    r = registry.new_record(actor_id=aid(1), name="", namespace="some-ns", handle=b"h")
    assert (r.name, r.namespace, r.registered_at) == ("", "", 1234.5)


@pytest.mark.parametrize("kwargs", [dict(actor_id="XYZ"), dict(scope="global"), dict(scope="app"),
                                    dict(scope="serve", app="shop")])
def test_new_record_validates(registry, kwargs):
    with pytest.raises(RecordDecodeError):
        registry.new_record(**{**dict(actor_id=aid(1), name="n", namespace="ns", handle=b"h"), **kwargs})


def test_new_record_with_a_non_finite_clock_is_refused(store):
    with pytest.raises(RecordDecodeError):
        Registry(store, clock=lambda: float("nan")).new_record(actor_id=aid(1), name="", namespace="", handle=b"h")


async def test_orphans_follow_owner_liveness(registry):
    def scoped(i, scope, app="", deployment=""):
        return registry.new_record(actor_id=aid(i), name=f"a{i}", namespace="ns", handle=b"h",
                                   scope=scope, app=app, deployment=deployment)

    serve_wide, app_a = scoped(1, "serve"), scoped(2, "app", "A")
    dep_a_x, dep_b_y = scoped(3, "deployment", "A", "X"), scoped(4, "deployment", "B", "Y")
    for r in (serve_wide, app_a, dep_a_x, dep_b_y):
        await registry.add(r)
    assert registry.orphans({"A", "B"}, {("A", "X"), ("B", "Y")}) == []
    assert {r.actor_id for r in registry.orphans({"A"}, {("A", "Z")})} == {aid(3), aid(4)}
    assert {r.actor_id for r in registry.orphans(set(), set())} == {aid(2), aid(3), aid(4)}
    assert slim(dep_a_x) in registry.orphans({"A", "B"}, {("B", "X"), ("B", "Y")})
    assert registry.owner_apps() == {"A", "B"}


async def test_orphans_come_in_registration_order_whatever_the_hash_seed(registry):
    """A pass kills in this order; were it the iteration order of a set of str (the
    interpreter's hash seed), a simulation seed would not replay in another process."""
    order = [aid(i) for i in (7, 3, 42, 1, 19, 8, 30, 2, 11, 25, 5, 16)]
    for actor_id in order:
        await registry.add(replace_record(make(0, scope=rec.SCOPE_APP, app="A"), actor_id=actor_id))
    assert [r.actor_id for r in registry.orphans(set(), set())] == order
