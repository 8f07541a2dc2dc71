"""Unit tests for serve_cleanup.registry.Registry over InMemoryRecordStore. No Ray cluster."""

from __future__ import annotations

import dataclasses
from typing import Optional

import msgpack
import pytest

from serve_cleanup import records as rec
from serve_cleanup.errors import RecordDecodeError
from serve_cleanup.records import Record
from serve_cleanup.registry import Registry, SetAside
from serve_cleanup.store import InMemoryRecordStore


def aid(i: int) -> str:
    return f"{i:032x}"


def make(
    i: int,
    *,
    scope: str = rec.SCOPE_SERVE,
    app: str = "",
    deployment: str = "",
    name: str = "",
    namespace: str = "",
    registered_at: float = 1000.0,
) -> Record:
    return Record(
        actor_id=aid(i),
        name=name,
        namespace=namespace,
        handle=f"handle-{i}".encode(),
        scope=scope,
        app=app,
        deployment=deployment,
        registered_at=registered_at,
    )


@pytest.fixture
def store() -> InMemoryRecordStore:
    return InMemoryRecordStore()


@pytest.fixture
def registry(store: InMemoryRecordStore) -> Registry:
    return Registry(store, clock=lambda: 1234.5)


# --- add ---------------------------------------------------------------------------------


async def test_add_stores_one_entry_per_actor_under_record_key(store, registry):
    recs = [
        make(1),
        make(2, scope="app", app="shop"),
        make(3, scope="deployment", app="shop", deployment="D", name="n", namespace="ns"),
    ]
    for r in recs:
        assert await registry.add(r) is True

    assert store.puts == 3
    assert set(store.data) == {rec.record_key(r.actor_id) for r in recs}
    for r in recs:
        assert rec.decode(store.data[rec.record_key(r.actor_id)]) == r
        assert r.actor_id in registry
        assert registry.get(r.actor_id) == r
    assert len(registry) == 3
    assert sorted(registry.records(), key=lambda r: r.actor_id) == recs


async def test_add_same_registration_twice_writes_once(store, registry):
    r = make(7, scope="app", app="shop")
    assert await registry.add(r) is True
    assert await registry.add(r) is False
    assert store.puts == 1
    assert list(store.data) == [rec.record_key(r.actor_id)]
    assert len(registry) == 1


async def test_add_same_actor_same_owner_newer_record_is_not_rewritten(store, registry):
    first = make(7, scope="app", app="shop", registered_at=1.0)
    again = dataclasses.replace(first, registered_at=2.0)
    await registry.add(first)
    assert await registry.add(again) is False
    assert store.puts == 1
    assert registry.get(first.actor_id).registered_at == 1.0
    assert rec.decode(store.data[first.key]).registered_at == 1.0


async def test_add_same_actor_new_owner_overwrites_same_key(store, registry):
    first = make(7, scope="app", app="shop")
    moved = make(7, scope="deployment", app="shop", deployment="D")
    await registry.add(first)
    assert await registry.add(moved) is True
    assert store.puts == 2
    assert list(store.data) == [rec.record_key(aid(7))]
    assert rec.decode(store.data[rec.record_key(aid(7))]) == moved
    assert registry.get(aid(7)) == moved
    assert len(registry) == 1


async def test_failed_put_raises_and_changes_nothing(store, registry):
    store.fail_next = RuntimeError("GCS unavailable")
    with pytest.raises(RuntimeError, match="GCS unavailable"):
        await registry.add(make(1))
    assert store.data == {}
    assert store.puts == 0
    assert len(registry) == 0
    assert aid(1) not in registry
    assert registry.get(aid(1)) is None

    # The failure was one-shot: the retry goes through.
    assert await registry.add(make(1)) is True
    assert store.puts == 1
    assert aid(1) in registry


async def test_failed_overwrite_keeps_old_record_in_memory_and_store(store, registry):
    old = make(1, scope="app", app="shop")
    new = make(1, scope="serve")
    await registry.add(old)
    before = dict(store.data)

    store.fail_next = RuntimeError("timeout")
    with pytest.raises(RuntimeError):
        await registry.add(new)
    assert store.data == before
    assert registry.get(aid(1)) == old
    assert store.puts == 1


async def test_add_invalid_record_raises_before_writing(store, registry):
    bad = dataclasses.replace(make(1), scope="nope")
    with pytest.raises(RecordDecodeError):
        await registry.add(bad)
    assert store.data == {} and store.puts == 0
    assert len(registry) == 0


# --- remove ------------------------------------------------------------------------------


async def test_remove_deletes_from_store_and_memory(store, registry):
    await registry.add(make(1))
    await registry.add(make(2))
    assert await registry.remove(aid(1)) is True
    assert rec.record_key(aid(1)) not in store.data
    assert rec.record_key(aid(2)) in store.data
    assert aid(1) not in registry
    assert registry.get(aid(1)) is None
    assert [r.actor_id for r in registry.records()] == [aid(2)]


async def test_remove_deletes_from_store_before_memory():
    seen: list[bool] = []

    class ObservingStore(InMemoryRecordStore):
        registry: Optional[Registry] = None

        async def delete(self, key: str) -> None:
            # At the moment of the KV delete, memory still holds the record.
            seen.append(rec.actor_id_of_key(key) in self.registry)
            await super().delete(key)

    store = ObservingStore()
    registry = Registry(store)
    store.registry = registry
    await registry.add(make(1))
    assert await registry.remove(aid(1)) is True
    assert seen == [True]
    assert aid(1) not in registry
    assert store.data == {}


async def test_failed_delete_raises_and_keeps_record(store, registry):
    r = make(1)
    await registry.add(r)
    store.fail_next = ConnectionError("GCS gone")
    with pytest.raises(ConnectionError):
        await registry.remove(aid(1))
    assert registry.get(aid(1)) == r
    assert rec.decode(store.data[r.key]) == r

    # A later pass retries and succeeds.
    assert await registry.remove(aid(1)) is True
    assert aid(1) not in registry
    assert store.data == {}


async def test_remove_unknown_id_returns_false(store, registry):
    await registry.add(make(1))
    assert await registry.remove(aid(99)) is False
    assert len(registry) == 1
    assert list(store.data) == [rec.record_key(aid(1))]


async def test_remove_unknown_id_still_deletes_stray_store_key(store, registry):
    # A put whose outcome was unknown may have landed without memory knowing it.
    stray = make(5)
    store.data[stray.key] = rec.encode(stray)
    assert await registry.remove(aid(5)) is False
    assert store.data == {}


# --- load --------------------------------------------------------------------------------


async def test_load_rebuilds_from_store(store):
    writer = Registry(store)
    recs = [make(i, scope="app", app=f"app{i % 3}") for i in range(5)]
    for r in recs:
        await writer.add(r)

    reader = Registry(store)
    assert len(reader) == 0
    count, set_aside = reader.load()
    assert count == 5
    assert set_aside == []
    assert reader.set_aside() == []
    assert {r.actor_id: r for r in reader.records()} == {r.actor_id: r for r in recs}


async def test_load_sets_aside_unreadable_entries_and_keeps_good_ones(store):
    good = [make(1), make(2, scope="app", app="shop", name="w", namespace="ns")]
    for r in good:
        store.data[r.key] = rec.encode(r)

    garbage_key = rec.record_key(aid(10))
    future_key = rec.record_key(aid(11))
    wrong_key = rec.record_key(aid(12))
    future = msgpack.unpackb(rec.encode(make(11)), raw=False)
    future["v"] = rec.SCHEMA_VERSION + 1
    store.data[garbage_key] = b"\xc1 definitely not a record"
    store.data[future_key] = msgpack.packb(future, use_bin_type=True)
    store.data[wrong_key] = rec.encode(make(13))  # record of actor 13 under actor 12's key
    # Outside our prefix: not ours, neither loaded nor set aside.
    store.data["some-other-serve-key"] = b"\xc1"
    snapshot = dict(store.data)

    registry = Registry(store)
    count, set_aside = registry.load()

    assert count == 2
    assert {r.actor_id: r for r in registry.records()} == {r.actor_id: r for r in good}
    assert aid(12) not in registry and aid(13) not in registry
    assert aid(10) not in registry and aid(11) not in registry

    by_key = {s.key: s for s in registry.set_aside()}
    assert set(by_key) == {garbage_key, future_key, wrong_key}
    assert {s.key: s for s in set_aside} == by_key
    for s in by_key.values():
        assert isinstance(s, SetAside)
        assert s.reason
        assert s.size == len(snapshot[s.key])
    assert "msgpack" in by_key[garbage_key].reason
    assert "upgrade" in by_key[future_key].reason
    assert "another key" in by_key[wrong_key].reason

    # Nothing touched in the store.
    assert store.data == snapshot
    assert store.puts == 0


async def test_load_replaces_previous_view(store):
    registry = Registry(store)
    await registry.add(make(1))
    await registry.add(make(2))
    store.data[rec.record_key(aid(3))] = b"junk"
    registry.load()
    assert len(registry.set_aside()) == 1

    # The store changes behind the registry's back (e.g. another controller's writes).
    del store.data[rec.record_key(aid(1))]
    del store.data[rec.record_key(aid(3))]
    store.data[make(4).key] = rec.encode(make(4))

    count, set_aside = registry.load()
    assert count == 2
    assert {r.actor_id for r in registry.records()} == {aid(2), aid(4)}
    assert set_aside == [] and registry.set_aside() == []


def test_load_of_empty_store():
    registry = Registry(InMemoryRecordStore())
    assert registry.load() == (0, [])
    assert registry.records() == []


async def test_thousand_records_add_and_load_round_trip(store):
    scopes = [
        dict(scope="serve"),
        dict(scope="app", app="shop"),
        dict(scope="deployment", app="shop", deployment="Checkout"),
    ]
    writer = Registry(store)
    recs = [
        make(i, name=f"actor-{i}" if i % 2 else "", namespace="ns" if i % 2 else "",
             registered_at=1000.0 + i, **scopes[i % 3])
        for i in range(1000)
    ]
    for r in recs:
        assert await writer.add(r) is True
    assert store.puts == 1000
    assert len(store.data) == 1000

    reader = Registry(store)
    count, set_aside = reader.load()
    assert count == 1000
    assert set_aside == []
    assert len(reader) == 1000
    for r in recs:
        assert reader.get(r.actor_id) == r
    assert len(reader.select(scope="serve")) == 334  # i % 3 == 0
    assert len(reader.select(scope="app")) == 333
    assert len(reader.select(scope="deployment")) == 333


# --- select ------------------------------------------------------------------------------


async def test_select_filters_by_scope_and_predicate(registry):
    s1 = make(1)
    a1 = make(2, scope="app", app="shop")
    a2 = make(3, scope="app", app="blog")
    d1 = make(4, scope="deployment", app="shop", deployment="D")
    for r in (s1, a1, a2, d1):
        await registry.add(r)

    assert registry.select(scope="serve") == [s1]
    assert sorted(registry.select(scope="app"), key=lambda r: r.actor_id) == [a1, a2]
    assert registry.select(scope="deployment") == [d1]
    assert registry.select(scope="nonexistent") == []
    assert len(registry.select()) == 4
    assert {r.actor_id for r in registry.select(predicate=lambda r: r.app == "shop")} == {
        a1.actor_id,
        d1.actor_id,
    }
    assert registry.select(scope="app", predicate=lambda r: r.app == "shop") == [a1]


# --- new_record --------------------------------------------------------------------------


def test_new_record_blanks_namespace_for_anonymous_actor(registry):
    r = registry.new_record(actor_id=aid(1), name="", namespace="some-ns", handle=b"h")
    assert r.name == ""
    assert r.namespace == ""
    assert r.display_name.startswith("<anonymous ")


def test_new_record_keeps_namespace_for_named_actor(registry):
    r = registry.new_record(actor_id=aid(1), name="worker", namespace="some-ns", handle=b"h")
    assert (r.name, r.namespace) == ("worker", "some-ns")


def test_new_record_uses_injected_clock(store):
    ticks = iter([10.0, 20.5])
    registry = Registry(store, clock=lambda: next(ticks))
    r1 = registry.new_record(actor_id=aid(1), name="a", namespace="n", handle=b"h")
    r2 = registry.new_record(
        actor_id=aid(2), name="b", namespace="n", handle=b"h", scope="app", app="shop"
    )
    assert r1.registered_at == 10.0
    assert r2.registered_at == 20.5
    assert (r2.scope, r2.app, r2.deployment) == ("app", "shop", "")
    assert r1.handle == b"h"
    assert store.puts == 0  # building a record writes nothing


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(actor_id="XYZ"),
        dict(scope="global"),
        dict(scope="app"),  # no app
        dict(scope="serve", app="shop"),
    ],
)
def test_new_record_validates(registry, kwargs):
    args = dict(actor_id=aid(1), name="n", namespace="ns", handle=b"h")
    args.update(kwargs)
    with pytest.raises(RecordDecodeError):
        registry.new_record(**args)


def test_new_record_with_non_finite_clock_is_refused(store):
    registry = Registry(store, clock=lambda: float("nan"))
    with pytest.raises(RecordDecodeError):
        registry.new_record(actor_id=aid(1), name="", namespace="", handle=b"h")


def test_load_sets_aside_record_with_whitespace_in_actor_id():
    spaced = dataclasses.replace(make(1), actor_id=aid(1)[:16] + "  " + aid(1)[16:])
    key = rec.KEY_PREFIX + spaced.actor_id
    store = InMemoryRecordStore({key: msgpack.packb(
        {"v": 1, **dataclasses.asdict(spaced)}, use_bin_type=True
    )})
    registry = Registry(store)
    count, set_aside = registry.load()
    assert count == 0
    assert [s.key for s in set_aside] == [key]


async def test_orphans_follow_owner_liveness():
    store = InMemoryRecordStore()
    registry = Registry(store, clock=lambda: 1.0)

    def make_scoped(i, scope, app="", deployment=""):
        return registry.new_record(
            actor_id=aid(i), name=f"a{i}", namespace="ns", handle=b"h",
            scope=scope, app=app, deployment=deployment,
        )

    serve_wide = make_scoped(1, "serve")
    app_a = make_scoped(2, "app", "A")
    dep_a_x = make_scoped(3, "deployment", "A", "X")
    dep_b_y = make_scoped(4, "deployment", "B", "Y")
    for r in (serve_wide, app_a, dep_a_x, dep_b_y):
        await registry.add(r)

    everything = registry.orphans({"A", "B"}, {("A", "X"), ("B", "Y")})
    assert everything == []
    # Deployment X of A was dropped by a redeploy; app B deleted entirely.
    gone = {r.actor_id for r in registry.orphans({"A"}, {("A", "Z")})}
    assert gone == {dep_a_x.actor_id, dep_b_y.actor_id}
    # No apps at all: every scoped record is an orphan; Serve-wide never is.
    assert {r.actor_id for r in registry.orphans(set(), set())} == {
        app_a.actor_id, dep_a_x.actor_id, dep_b_y.actor_id
    }
    # A deployment with the same name in another app does not keep it alive.
    assert dep_a_x in registry.orphans({"A", "B"}, {("B", "X"), ("B", "Y")})
