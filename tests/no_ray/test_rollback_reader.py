"""Rollback: serve_cleanup 0.1.x's reader (tests/no_ray/frozen_v1_reader.py, frozen from
d119014) meets the v2 entries this release writes. It sets each aside (never fails) and
its deletes never reach one (never deletes): a v2 key starts with its actor's v1 key, but
0.1.x deletes a record by its exact key, and by prefix only a bucket whose every key is a
record it drops."""

from __future__ import annotations

import frozen_v1_reader as old
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_cleanup.core import records

NOW = 1_714_000_000.5


def v2_entries(record: records.Record) -> dict[bytes, bytes]:
    return {k.encode(): records.encode(record, owner) for k, (owner, _) in zip(record.keys(), record.pairs)}


def v1_entry(actor_id: str, scope: str = "serve", app: str = "") -> tuple[bytes, bytes]:
    record = old.Record(actor_id, "", "", b"handle", scope, app, "", NOW)
    return record.key.encode(), old.encode(record)


SHARED = records.Record("ab" * 16, "tree", "llm", b"handle", pairs=(
    (("app", "A", ""), NOW), (("deployment", "B", "router/x"), NOW + 1)))


def test_the_old_reader_sets_every_v2_entry_aside_and_names_the_newer_schema():
    entries = v2_entries(SHARED)
    assert len(entries) == 2
    for key, value in entries.items():
        assert key.startswith(old.record_key(SHARED.actor_id).encode() + b"/")  # the v1 key is a prefix
        entry = old.read_entry(key, value)
        assert isinstance(entry, old.SetAside), entry
        assert entry.raw_key == key and entry.size == len(value)
        assert "schema version 2" in entry.reason and "newer serve_cleanup" in entry.reason


def test_a_v2_key_with_a_value_it_cannot_parse_is_set_aside_too():
    key = next(iter(v2_entries(SHARED)))
    for value in (b"", b"\xff\x00", records.encode_v1(SHARED.replace(pairs=((records.SERVE_OWNER, NOW),)))):
        assert isinstance(old.read_entry(key, value), old.SetAside)  # a v1 value under a v2 key: wrong key


def test_v1_records_beside_v2_entries_still_read_as_before():
    key, value = v1_entry("cd" * 16, "app", "A")
    record = old.read_entry(key, value)
    assert isinstance(record, old.Record) and (record.scope, record.app) == ("app", "A")


def test_the_old_bulk_delete_never_reaches_a_v2_key():
    """The old controller dropping its v1 records while v2 keys share their buckets: the
    v1 key of the same actor (a crash mid-rewrite left both), and another actor's."""
    v1_same, _ = v1_entry(SHARED.actor_id)
    v1_other, _ = v1_entry("ab" + "01" * 15)  # same bucket "ab"
    v1_alone, _ = v1_entry("ef" * 16)  # a bucket of its own
    keys = [*v2_entries(SHARED), v1_same, v1_other, v1_alone]
    doomed = {r.actor_id: r for r in (old.Record(k.decode()[len(old.KEY_PREFIX):], "", "", b"") for k in
                                      (v1_same, v1_other, v1_alone))}
    prefixes, exact = old.drop_bulk_requests(keys, doomed)
    assert prefixes == [b"serve-cleanup-actor-ef"]
    assert sorted(exact) == sorted([v1_same.decode(), v1_other.decode()])


_ids = st.text("0123456789abcdef", min_size=2, max_size=6).map(lambda s: s if len(s) % 2 == 0 else s + "0")
_owner = st.sampled_from([records.SERVE_OWNER, ("app", "A", ""), ("app", "AB", ""), ("deployment", "A", "d")])


@settings(max_examples=200, deadline=None)
@given(v2=st.dictionaries(_ids, st.lists(_owner, min_size=1, max_size=3, unique=True), max_size=6),
       v1=st.lists(_ids, max_size=6, unique=True), drop=st.data())
def test_whatever_the_mix_the_old_reader_sets_v2_aside_and_deletes_only_v1(v2, v1, drop):
    store: dict[bytes, bytes] = {}
    for actor_id, owners in v2.items():
        if records.SERVE_OWNER in owners:
            owners = [records.SERVE_OWNER]
        record = records.Record(actor_id, "", "", b"h", pairs=tuple((o, NOW + i) for i, o in enumerate(owners)))
        store.update(v2_entries(record))
    for actor_id in v1:
        key, value = v1_entry(actor_id)
        store[key] = value
    read = {k: old.read_entry(k, v) for k, v in store.items()}
    v2_keys = {k for k in store if b"/" in k}
    assert all(isinstance(read[k], old.SetAside) for k in v2_keys)
    loaded = {e.actor_id: e for e in read.values() if isinstance(e, old.Record)}
    assert set(loaded) == set(v1)
    doomed_ids = drop.draw(st.lists(st.sampled_from(sorted(loaded)), unique=True)) if loaded else []
    prefixes, exact = old.drop_bulk_requests(list(store), {i: loaded[i] for i in doomed_ids})
    for key in v2_keys:
        assert not any(key.startswith(p) for p in prefixes), (key, prefixes)
        assert key.decode() not in exact
