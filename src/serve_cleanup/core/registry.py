"""The registry: the records' in-memory mirror of the store. No Ray imports.

Memory never claims a record the KV does not hold. Every change goes to the store first
and to memory only once the store call succeeded (keys and their grammar: ``records``):

* ``put_pairs`` writes keys of (actor, owner) pairs, then remembers the record; the keys
  of the actor's previous record that the new one does not keep become *stale* (the new
  keys are later, so a load reads the new record already) and ``delete_stale`` deletes
  them. A put that failed may have landed: its key is stale too (deleted later), and
  memory keeps the previous record;
* ``remove`` deletes every key of an actor, then forgets it; ``remove_pair`` one pair;
  ``restore`` makes the KV hold an earlier record again (a take-back);
* ``drop_bulk`` deletes many records with one prefix request per bucket, holding the
  write gate alone (see ``locks.WriteGate``), and forgets each bucket's records once its
  request succeeded;
* ``load`` rebuilds the map from the *keys* (``records.parse_keys``); only v1 keys
  (0.1.0's layout) have their values read. Keys that do not parse, v1 values that do
  not decode or sit under another actor's key are *set aside*: left untouched in the
  KV, reported, never fatal. Two keys of one owner, or a ``serve`` key beside owner keys
  (a crash in the middle of an owner change), resolve to the newer set
  (``records.resolve_pairs``); the other keys are stale. Only a failed read raises.

The one exception runs the other way: ``set_memory`` shows a take-back whose KV write
failed at once (the engine retries the write), so memory then claims *less* than the KV.

Memory holds records *slim* (no handle bytes), an owner index ``(scope, app,
deployment) -> actor ids`` for app and deployment owners only (per-tick work grows with
the owners, not the records; actors without owners cost no index entry), the stale keys
per actor, the pairs whose stored key is not their v2 key (v1 records: ``odd``, until
``migrate`` rewrote them), and ``verified``: the actors this process checked against the
actor table.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from dataclasses import dataclass
from itertools import repeat
from typing import Callable, Iterable, Optional

from serve_cleanup.core import records as rec
from serve_cleanup.core.config import Config
from serve_cleanup.core.locks import WriteGate
from serve_cleanup.core.ports import RecordStore
from serve_cleanup.core.records import SERVE_OWNER, Owner, Record
from serve_cleanup.errors import RecordDecodeError

LOAD_PAGE = 2000  # v1 values per read at load
TIME_STEP = 1e-6  # a new pair is at least this much later than the actor's other pairs


@dataclass(frozen=True)
class SetAside:
    """A KV entry under our prefix that could not be read as a record."""

    key: str  # printable (undecodable bytes shown as \\x escapes)
    reason: str
    size: int  # of the value; 0 when only the key was read
    raw_key: bytes = b""  # the key as stored, below the store's prefix (to delete it)

    def to_dict(self) -> dict[str, object]:
        return {"key": self.key, "reason": self.reason, "size": self.size}


def _printable(raw: bytes) -> str:
    return bytes(raw).decode("utf-8", "backslashreplace")


def read_entry(raw_key: bytes, value: bytes, *, slim: bool = False,
               shared: Optional[dict] = None) -> "Record | SetAside":
    """One KV entry (key and value): its one-pair record, or why it is set aside. A v1
    value must sit under its actor's v1 key, a v2 value under a key of the same actor
    and owner."""
    try:
        raw_key = bytes(raw_key)
        try:
            raw_key.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecordDecodeError(f"key is not UTF-8 ({e.reason} at byte {e.start})") from None
        record = rec.decode(value, slim=slim, shared=shared)
        if rec.is_v1_key(raw_key):
            if rec.record_key(record.actor_id).encode() != raw_key:
                raise RecordDecodeError(f"record for actor {record.actor_id} is stored under another key")
        else:
            k = rec.parse_key(raw_key)
            if (k.actor_id, k.owner) != (record.actor_id, record.owner):
                raise RecordDecodeError(f"record for actor {record.actor_id} is stored under another key")
        return record
    except Exception as e:  # never fatal, whatever the bytes
        return SetAside(key=_printable(raw_key), reason=str(e) or type(e).__name__, size=len(value), raw_key=raw_key)


@dataclass
class Loaded:
    """What ``read_keys`` found: records (slim), set-aside entries, and per actor the keys
    that are stale (to delete) and the pairs stored under a key that is not their v2 key
    (v1 keys)."""

    records: dict[str, Record]
    set_aside: dict[str, SetAside]
    stale: dict[str, set[bytes]]
    odd: dict[str, dict[Owner, bytes]]
    owned: bool = True  # some record may have an owner (False: every one waits for shutdown)
    mixed: bool = True  # some record may not be an actor's (False: every one is)

    def keys_of(self, record: Record) -> list[bytes]:
        odd = self.odd.get(record.actor_id, {})
        return [odd.get(o) or rec.pair_key(record.actor_id, o, t, record.name, record.namespace, record.kind).encode()
                for o, t in record.pairs] + sorted(self.stale.get(record.actor_id, ()))


async def read_keys(store: RecordStore, *, on_record: Optional[Callable[[int], None]] = None,
                    shared: Optional[dict] = None) -> Loaded:
    """Every record under the record prefix, from its keys (v1 keys: from their values,
    read in pages, the next requested while one is decoded). Raises only if the store
    does."""
    shared = {SERVE_OWNER: SERVE_OWNER} if shared is None else shared
    shared.setdefault(SERVE_OWNER, SERVE_OWNER)
    keys = await store.keys(rec.KEY_PREFIX)
    paused = gc.isenabled()
    gc.disable()  # 100,000 records are 100,000 long-lived objects: no GC passes over them
    try:
        parsed = rec.parse_keys(list(map(bytes, keys)), shared)
        set_aside = {_printable(raw): SetAside(_printable(raw), why, 0, bytes(raw)) for raw, why in parsed.bad}
        ids = parsed.ids
        found: dict[str, Record] = dict(zip(ids, map(tuple.__new__, repeat(Record), zip(
            ids, parsed.names, parsed.namespaces, repeat(b""), zip(parsed.owners, parsed.times),
            parsed.kinds, repeat(0.0)))))  # one pair each; the grace is in the values
        loaded = Loaded(found, set_aside, {}, {})
        loaded.owned = parsed.owners.count(SERVE_OWNER) != len(parsed.owners)  # (identity first: fast)
        loaded.mixed = parsed.kinds.count(rec.KIND_ACTOR) != len(parsed.kinds)
        if on_record is not None and found:
            on_record(len(found))
        v1 = await _read_v1(store, parsed.v1, set_aside, shared, on_record)
        if len(found) != len(ids) or v1:
            _merge(loaded, parsed, v1)
            loaded.owned = True
    finally:
        if paused:
            gc.enable()
    return loaded


async def _read_v1(store: RecordStore, keys: list[bytes], set_aside: dict[str, SetAside],
                   shared: dict, on_record: Optional[Callable[[int], None]]) -> list[tuple[bytes, Record]]:
    keys = sorted(keys)
    pages = [keys[i:i + LOAD_PAGE] for i in range(0, len(keys), LOAD_PAGE)]
    out: list[tuple[bytes, Record]] = []
    pending = asyncio.ensure_future(store.get_many(pages[0])) if pages else None
    for i in range(len(pages)):
        assert pending is not None
        values = await pending
        pending = asyncio.ensure_future(store.get_many(pages[i + 1])) if i + 1 < len(pages) else None
        for raw_key, value in values.items():
            entry = read_entry(bytes(raw_key), value, slim=True, shared=shared)
            if isinstance(entry, SetAside):
                set_aside[entry.key] = entry
                continue
            out.append((bytes(raw_key), entry))
            if on_record is not None:
                on_record(len(out))
    return out


def _merge(loaded: Loaded, parsed: rec.ParsedKeys, v1: list[tuple[bytes, Record]]) -> None:
    """The slow path of a load: actors with more than one key (several owners, a crash in
    the middle of an owner change, a v1 record) or a v1 key."""
    v1_only = [(raw, r) for raw, r in v1 if r.actor_id not in loaded.records]
    if len(v1_only) == len(v1) and len(loaded.records) == len(parsed.ids):
        if len({r.actor_id for _, r in v1}) == len(v1):  # the usual case: one key per actor
            for raw, r in v1:
                loaded.records[r.actor_id] = r
                loaded.odd[r.actor_id] = {r.pairs[0][0]: raw}
            return
    ids, owners, times = parsed.ids, parsed.owners, parsed.times
    counts = Counter(ids)
    by_actor: dict[str, list[int]] = {}
    for i in [i for i, n in enumerate(map(counts.__getitem__, ids)) if n > 1]:
        by_actor.setdefault(ids[i], []).append(i)
    in_v1 = {r.actor_id for _, r in v1}
    groups: dict[str, list[tuple[rec.Pair, bytes, str, str]]] = {}
    records = loaded.records
    for actor_id, idx in by_actor.items():
        own = set(map(owners.__getitem__, idx))
        if len(own) == len(idx) and SERVE_OWNER not in own and actor_id not in in_v1:
            # The usual case of several keys: one v2 key per owner, no serve key. Nothing
            # to resolve (resolve_pairs would keep them all, by time then owner); a parsed
            # v2 key is its pair's key (the fast path of read_keys relies on it too).
            idx.sort(key=lambda i: (times[i], owners[i]))
            newest = max(idx, key=times.__getitem__)
            records[actor_id] = tuple.__new__(Record, (
                actor_id, parsed.names[newest], parsed.namespaces[newest], b"",
                rec.stored_pairs([(owners[i], times[i]) for i in idx]), parsed.kinds[newest], 0.0))
            continue
        groups[actor_id] = [((owners[i], times[i]), parsed.raw[i], parsed.names[i], parsed.namespaces[i],
                             parsed.kinds[i]) for i in idx]
    for raw, r in v1:
        if r.actor_id in loaded.records and r.actor_id not in groups:
            only = loaded.records[r.actor_id]
            groups[r.actor_id] = [(only.pairs[0], loaded.keys_of(only)[0], only.name, only.namespace, only.kind)]
        groups.setdefault(r.actor_id, []).append((r.pairs[0], raw, r.name, r.namespace, r.kind))
    for actor_id, items in groups.items():
        by_key = {raw: (name, ns, kind) for _, raw, name, ns, kind in items}
        kept, stale = rec.resolve_pairs([(pair, raw) for pair, raw, _, _, _ in items])
        newest = max(kept, key=lambda item: item[0][1])
        name, namespace, kind = by_key[newest[1]]
        record = Record(actor_id, name, namespace, b"", pairs=tuple(pair for pair, _ in kept), kind=kind)
        loaded.records[actor_id] = record
        if stale:
            loaded.stale[actor_id] = set(stale)
        odd = {pair[0]: raw for pair, raw in kept
               if raw != rec.pair_key(actor_id, pair[0], pair[1], name, namespace, kind).encode()}
        if odd:
            loaded.odd[actor_id] = odd


async def read_all(
    store: RecordStore, *, slim: bool = False, on_record: Optional[Callable[[int], None]] = None,
) -> tuple[dict[str, Record], dict[str, SetAside]]:
    """Every record under the record prefix and every set-aside entry. ``slim``: from
    the keys alone; else the handle bytes are read too (one value per record, in pages).
    Raises only if the store does."""
    loaded = await read_keys(store, on_record=on_record)
    if slim:
        return loaded.records, loaded.set_aside
    out: dict[str, Record] = {}
    records = list(loaded.records.values())
    for i in range(0, len(records), LOAD_PAGE):
        page = records[i:i + LOAD_PAGE]
        first = {loaded.keys_of(r)[0]: r for r in page}
        values = await store.get_many(list(first))
        for raw, r in first.items():
            entry = read_entry(raw, values[raw]) if raw in values else None
            out[r.actor_id] = r.replace(handle=entry.handle) if isinstance(entry, Record) else r
    return out, loaded.set_aside


class Registry:
    def __init__(self, store: RecordStore, clock: Callable[[], float],
                 deletes_in_flight: int = Config.deletes_in_flight) -> None:
        self._store = store
        self._clock = clock
        self._deletes_in_flight = deletes_in_flight
        self._records: dict[str, Record] = {}
        self._set_aside: dict[str, SetAside] = {}
        self._aside_raw: set[bytes] = set()  # set aside at kill time: never deleted by us
        self._by_owner: dict[Owner, dict[str, None]] = {}  # app/deployment owners; ids in order
        self._stale: dict[str, set[bytes]] = {}
        self._odd: dict[str, dict[Owner, bytes]] = {}
        self._shared: dict = {SERVE_OWNER: SERVE_OWNER}
        self._others: dict[str, str] = {}  # id -> kind of every record that is not an actor's
        # Graceful exits under way: id -> (deadline, where its process answers), as stored
        # under DEADLINE_PREFIX; None until listed (once a process, at its first kill pass).
        self._deadlines: Optional[dict[str, tuple[float, str]]] = None
        self.verified: set[str] = set()
        self.gate = WriteGate()

    # --- reading ------------------------------------------------------------------

    async def load(self, on_record: Optional[Callable[[int], None]] = None) -> tuple[int, list[SetAside]]:
        """Replace the in-memory view with what the store holds now (slim, from the keys).
        Raises if the store cannot be read; then the view is unchanged."""
        loaded = await read_keys(self._store, on_record=on_record, shared=self._shared)
        self._records, self._set_aside = loaded.records, loaded.set_aside
        self._stale, self._odd = loaded.stale, loaded.odd
        self._aside_raw = set()
        self._by_owner = {}
        self.verified = set()
        # The graceful exits a crashed controller started (their actors are DEAD in the
        # table already, their processes may still run): one listing, at every start.
        self._deadlines = None
        await self.deadlines()
        if loaded.owned:
            for record in self._records.values():
                if record.pairs[0][0] is not SERVE_OWNER:
                    self._index(record)
        self._others = ({a: r.kind for a, r in self._records.items() if r.kind != rec.KIND_ACTOR}
                        if loaded.mixed else {})
        return len(self._records), list(self._set_aside.values())

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, actor_id: object) -> bool:
        return actor_id in self._records

    def get(self, actor_id: str) -> Optional[Record]:
        return self._records.get(actor_id)

    def records(self) -> list[Record]:
        return list(self._records.values())

    def counts_by_scope(self) -> dict[str, int]:
        """(actor, owner) pairs per scope; an actor without owners counts as ``serve``."""
        counts = {scope: 0 for scope in rec.SCOPES}
        owned: set[str] = set()
        for owner, ids in self._by_owner.items():
            counts[owner[0]] += len(ids)
            owned.update(ids)
        counts[rec.SCOPE_SERVE] = len(self._records) - len(owned)
        return counts

    def pairs(self) -> int:
        return sum(self.counts_by_scope().values())

    def counts_by_kind(self) -> dict[str, int]:
        """Records per kind (``records.KINDS``)."""
        counts = dict.fromkeys(rec.KINDS, 0)
        for kind in self._others.values():
            counts[kind] += 1
        counts[rec.KIND_ACTOR] = len(self._records) - len(self._others)
        return counts

    def counts_by_kind_and_scope(self) -> dict[tuple[str, str], int]:
        """``counts_by_scope`` split by kind: ``(kind, scope) -> pairs``. Costs the
        records that are not actors' (few), not all of them."""
        counts = {(rec.KIND_ACTOR, scope): n for scope, n in self.counts_by_scope().items()}
        for kind in rec.KINDS[1:]:
            for scope in rec.SCOPES:
                counts[(kind, scope)] = 0
        for actor_id, kind in self._others.items():
            owners = self._records[actor_id].owners
            for scope in [o[0] for o in owners] or [rec.SCOPE_SERVE]:
                counts[(rec.KIND_ACTOR, scope)] -= 1
                counts[(kind, scope)] += 1
        return counts

    def kind_of(self, actor_id: str) -> str:
        return self._others.get(actor_id, rec.KIND_ACTOR)

    def set_aside(self) -> list[SetAside]:
        return list(self._set_aside.values())

    def unverified(self) -> int:
        return len(self._records) - len(self.verified)

    def stale_ids(self) -> list[str]:
        """Actors with keys to delete (superseded, or written by a put that failed)."""
        return list(self._stale)

    def has_stale(self, actor_id: str) -> bool:
        return actor_id in self._stale

    def odd_ids(self) -> list[str]:
        """Actors with a pair stored under a key that is not its v2 key (v1 records)."""
        return list(self._odd)

    def odd_ids_set(self) -> "dict[str, dict[Owner, bytes]]":
        return self._odd

    def keys_of(self, actor_id: str) -> list[bytes]:
        """Every key the KV may hold for ``actor_id`` (its pairs' and its stale keys), but
        those set aside."""
        record = self._records.get(actor_id)
        keys = [self._key(record, o, t) for o, t in record.pairs] if record is not None else []
        keys += sorted(self._stale.get(actor_id, ()))
        return [k for k in keys if k not in self._aside_raw] if self._aside_raw else keys

    def _key(self, record: Record, owner: Owner, t: float) -> bytes:
        odd = self._odd.get(record.actor_id)
        if odd is not None and owner in odd:
            return odd[owner]
        return rec.pair_key(record.actor_id, owner, t, record.name, record.namespace, record.kind).encode()

    def orphans(self, live_apps: set[str], live_deployments: set[tuple[str, str]],
                ended_jobs: "frozenset[str] | set[str]" = frozenset()) -> list[Record]:
        """Actors whose every owner is gone: the Kubernetes-GC rule, level-triggered, over
        owner sets. ``live_deployments`` holds ``(app, deployment)`` pairs; a job owner is
        gone if it is in ``ended_jobs``. Actors without owners are never orphans (they go
        at shutdown); an actor keeps living while any of its owners does."""
        def alive(owner: Owner) -> bool:
            return owner_alive(owner, live_apps, live_deployments, ended_jobs)

        dead = [owner for owner in self._by_owner if not alive(owner)]
        if not dead:
            return []
        out: dict[str, Record] = {}
        for owner in dead:
            for actor_id in self._by_owner[owner]:
                record = self._records[actor_id]
                if actor_id not in out and not any(alive(o) for o in record.owners):
                    out[actor_id] = record
        return sorted(out.values(), key=lambda r: r.latest)

    def owner_apps(self) -> set[str]:
        """Apps that own at least one record (as an app, or through a deployment)."""
        return {owner[1] for owner in self._by_owner if owner[0] != rec.SCOPE_JOB}

    def owner_jobs(self) -> set[str]:
        """Ray jobs that own at least one record."""
        return {owner[1] for owner in self._by_owner if owner[0] == rec.SCOPE_JOB}

    async def full(self, records: list[Record]) -> dict[str, Record]:
        """The records of ``records`` with their handle bytes and grace period, read in
        one request (the value of every key of each record: the handle of the newest, the
        largest grace of all). A value that does not read is set aside (reported; its
        key is left alone); a record none of whose values reads comes back without a
        handle, so the killer finds the actor by the id, name and namespace of its key.
        An id the store no longer holds is left out."""
        wanted: dict[bytes, Record] = {}
        for r in records:
            for owner, t in sorted(r.pairs, key=lambda p: p[1]):  # the newest last
                wanted[self._key(r, owner, t)] = r
        values = await self._store.get_many(list(wanted))
        out: dict[str, Record] = {}
        for raw, r in wanted.items():  # each record's keys oldest first
            if raw not in values:
                continue
            entry = read_entry(raw, values[raw])
            before = out.get(r.actor_id)
            if isinstance(entry, SetAside) or entry.actor_id != r.actor_id:
                if isinstance(entry, SetAside):
                    self._set_aside[entry.key] = entry
                    self._aside_raw.add(raw)
                out.setdefault(r.actor_id, r)
                continue
            grace = max(entry.grace_s, before.grace_s if before is not None else 0.0)
            out[r.actor_id] = r.replace(handle=entry.handle or (before.handle if before is not None else b""),
                                        grace_s=grace)
        return out

    # --- graceful exits' deadlines (keys of their own, not records) ---------------

    async def deadlines(self) -> dict[str, tuple[float, str]]:
        """The graceful exits under way: id -> (deadline, where its process answers).
        Listed from the store once a process (one listing, one read); kept up to date by
        ``put_deadline``/``delete_deadlines`` after that. Stored deadlines of actors this
        registry holds no record of (their exit ended, the delete was lost) are deleted,
        and unreadable ones ignored (a new one replaces it). Raises if the store does."""
        if self._deadlines is not None:
            return self._deadlines
        keys = [bytes(k) for k in await self._store.keys(rec.DEADLINE_PREFIX)]
        n = len(rec.DEADLINE_PREFIX)
        by_id = {k[n:].decode("utf-8", "replace"): k for k in keys}
        for actor_id, key in by_id.items():
            if actor_id not in self._records:
                await self._store.delete(key)
        wanted = {a: k for a, k in by_id.items() if a in self._records}
        values = await self._store.get_many(list(wanted.values())) if wanted else {}
        found: dict[str, tuple[float, str]] = {}
        for actor_id, key in wanted.items():
            try:
                when, _, where = values[key].decode().partition(" ")
                found[actor_id] = (float(when), where)
            except (KeyError, ValueError, UnicodeDecodeError):
                continue
        self._deadlines = found
        return found

    async def put_deadline(self, actor_id: str, deadline: float, where: str) -> None:
        await self._store.put(rec.deadline_key(actor_id), f"{float(deadline)!r} {where}".encode())
        if self._deadlines is not None:
            self._deadlines[actor_id] = (deadline, where)

    def known_deadlines(self) -> dict[str, tuple[float, str]]:
        """``deadlines()`` as far as listed (empty before the first listing)."""
        return self._deadlines or {}

    def has_deadline(self, actor_id: str) -> bool:
        return bool(self._deadlines) and actor_id in self._deadlines  # type: ignore[operator]

    async def delete_deadlines(self, ids: list[str]) -> None:
        for actor_id in ids:
            await self._store.delete(rec.deadline_key(actor_id))
            if self._deadlines is not None:
                self._deadlines.pop(actor_id, None)

    # --- writing ------------------------------------------------------------------

    def next_time(self, previous: Optional[Record]) -> float:
        """A registration time later than every pair of ``previous`` (the loader keeps
        the later key of a crash's two, so times of one actor must grow)."""
        now = rec.in_micros(self._clock())
        if previous is not None and now <= previous.latest:
            now = rec.in_micros(previous.latest + TIME_STEP)
        return now

    def new_record(
        self, *, actor_id: str, name: str, namespace: str, handle: bytes,
        scope: str = rec.SCOPE_SERVE, app: str = "", deployment: str = "",
    ) -> Record:
        record = Record(actor_id, name, namespace if name else "", handle, scope, app, deployment,
                        rec.in_micros(self._clock()))
        rec.validate(record)
        return record

    async def add(self, record: Record) -> None:
        """Make the KV hold ``record`` (every pair; its previous keys are deleted): the
        put of each new key, then the delete of the old ones."""
        await self.put_pairs(record)
        await self.delete_stale(record.actor_id)

    async def put_new(self, record: Record) -> None:
        """``put_pairs`` of a one-pair record of an actor the registry does not hold
        (no record, no stale key), for the upstream method's fast path: the key, the one
        put under the shared gate, then memory. Raises if the put failed (its key is
        then stale: it may have landed) or if the gate is not open (``gate.enter``:
        asked with no await since, so the caller checked it); memory is then unchanged."""
        actor_id = record.actor_id
        (owner, t), = record.pairs
        key = rec.pair_key(actor_id, owner, t, record.name, record.namespace, record.kind)
        value = rec.encode(record, owner)
        if not self.gate.enter():
            raise RuntimeError("the write gate is closed: use put_pairs")
        try:
            await self._store.put(key, value)
        except BaseException:
            self._stale.setdefault(actor_id, set()).add(key.encode())  # a failed put may have landed
            raise
        finally:
            self.gate.leave()
        self._set(actor_id, self._slim(record))

    async def put_pairs(self, record: Record, *, rewrite_odd: bool = False) -> None:
        """Write the keys of ``record``'s pairs that the KV does not hold yet, then
        remember ``record``. Keys of the previous record that ``record`` does not keep
        become stale (``delete_stale``). A pair kept from the previous record under its
        v1 key stays there unless ``rewrite_odd``. Raises if a put failed; then memory
        keeps the previous record and the keys written meanwhile are stale."""
        rec.validate(record)
        actor_id = record.actor_id
        old = self._records.get(actor_id)
        old_odd = self._odd.get(actor_id, {})
        held = set(self.keys_of(actor_id))
        keys: dict[Owner, bytes] = {}
        odd: dict[Owner, bytes] = {}
        todo: list[tuple[Owner, bytes]] = []
        for owner, t in record.pairs:
            kept = old_odd.get(owner)
            if (not rewrite_odd and kept is not None and kept in held and old is not None
                    and old.time_of(owner) == t):
                keys[owner] = odd[owner] = kept
                continue
            key = keys[owner] = rec.pair_key(actor_id, owner, t, record.name, record.namespace, record.kind).encode()
            if key not in held:
                todo.append((owner, key))
        written: list[bytes] = []
        try:
            for owner, key in todo:
                async with self.gate.shared():
                    written.append(key)
                    await self._store.put(key.decode(), rec.encode(record, owner))
        except BaseException:
            self._stale.setdefault(actor_id, set()).update(written)  # a failed put may have landed
            raise
        stale = held - set(keys.values())
        self._set(actor_id, self._slim(record))
        if odd:
            self._odd[actor_id] = odd
        else:
            self._odd.pop(actor_id, None)
        if stale:
            self._stale[actor_id] = stale
        else:
            self._stale.pop(actor_id, None)

    async def delete_stale(self, actor_id: str) -> None:
        """Delete the stale keys of ``actor_id``; raises if a delete failed (the rest stay
        stale, retried later)."""
        for key in sorted(self._stale.get(actor_id, ())):
            if key not in self._aside_raw:
                await self._store.delete(key)
            keys = self._stale.get(actor_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._stale[actor_id]

    async def remove(self, actor_id: str) -> bool:
        """Delete every key of the actor, then forget it. False if memory held no record.
        Raises on a failed delete; memory then holds what is left.

        The actor's keys are deleted even if memory holds none: a write whose outcome was
        unknown (a timed-out put) may have landed, and deleting an absent key is
        harmless."""
        record = self._records.get(actor_id)
        await self.delete_stale(actor_id)
        if record is None:  # by prefix: only this actor's v2 keys (its v1 key by its exact key)
            await self._store.delete(rec.record_key(actor_id))
            await self._store.delete_prefix(rec.actor_prefix(actor_id))
            return False
        for owner, t in record.pairs:
            key = self._key(record, owner, t)
            if key not in self._aside_raw:
                await self._store.delete(key)
            self._drop_pair(actor_id, owner)
        return True

    async def remove_pair(self, actor_id: str, owner: Owner) -> None:
        """Delete the key of one pair of an actor with other pairs, then forget the pair."""
        record = self._records[actor_id]
        t = record.time_of(owner)
        assert t is not None and len(record.pairs) > 1
        key = self._key(record, owner, t)
        if key not in self._aside_raw:
            await self._store.delete(key)
        self._drop_pair(actor_id, owner)

    async def restore(self, actor_id: str, previous: Optional[Record]) -> None:
        """Make the KV hold ``previous`` again (None: nothing): puts for its keys the KV
        does not hold (``previous`` must carry its handle then), then deletes the others.
        Raises if a request failed."""
        if previous is None:
            await self.remove(actor_id)
            return
        held = set(self.keys_of(actor_id))
        v1 = rec.record_key(actor_id).encode()
        (owner, t), = previous.pairs if len(previous.pairs) == 1 else ((None, 0.0),)
        if (owner is not None and v1 in held
                and rec.pair_key(actor_id, owner, t, previous.name, previous.namespace, previous.kind).encode()
                not in held):
            self._set(actor_id, self._slim(previous))  # it was a v1 record, and its key is there
            self._odd[actor_id] = {owner: v1}
            self._stale[actor_id] = held - {v1}
            if not self._stale[actor_id]:
                del self._stale[actor_id]
        else:
            await self.put_pairs(previous)
        await self.delete_stale(actor_id)

    async def drop_bulk(self, records: Iterable[Record], busy: Callable[[str], bool]) -> set[str]:
        """Delete the records of ``records`` that are still current and whose actor has no
        call in flight (``busy``), with one prefix request per bucket whose every key is
        one of theirs, and exact deletes elsewhere (a bucket that also holds another
        record, a set-aside entry or a key written by someone else; a v1 key is never
        deleted by prefix but in such a bucket). Holds the write gate alone: no write of
        ours can land between the listing and the deletes. Returns the ids dropped;
        raises if the store fails (what was deleted by then is forgotten)."""
        async with self.gate.alone():
            doomed = {r.actor_id: r for r in records if self._records.get(r.actor_id) is r and not busy(r.actor_id)}
            if not doomed:
                return set()
            keys = await self._store.keys(rec.KEY_PREFIX)
            buckets: dict[bytes, list[bytes]] = {}
            for key in keys:
                buckets.setdefault(rec.bucket_of(bytes(key)), []).append(bytes(key))
            id_of = {key: actor_id for actor_id in doomed for key in self.keys_of(actor_id)}
            clean = [b for b, ks in buckets.items() if all(k in id_of for k in ks)]
            dropped: set[str] = set()
            if len(clean) == len(buckets):  # the common case: one request
                await self._store.delete_prefix(rec.KEY_PREFIX)
                self._forget_all(doomed)
                return set(doomed)
            for bucket in clean:
                await self._store.delete_prefix(bucket)
                ids = {id_of[k] for k in buckets[bucket]}
                self._forget_all(ids)
                dropped |= ids
            rest = [actor_id for actor_id in doomed if actor_id not in dropped]
            for i in range(0, len(rest), self._deletes_in_flight):
                chunk = rest[i:i + self._deletes_in_flight]
                results = await asyncio.gather(*(self._delete_keys(a) for a in chunk), return_exceptions=True)
                done = [a for a, result in zip(chunk, results) if not isinstance(result, BaseException)]
                self._forget_all(done)
                dropped.update(done)
                errors = [e for e in results if isinstance(e, BaseException)]
                if errors:
                    raise next((e for e in errors if not isinstance(e, Exception)), errors[0])
            return dropped

    async def _delete_keys(self, actor_id: str) -> None:
        for key in self.keys_of(actor_id):
            await self._store.delete(key)

    def set_memory(self, actor_id: str, record: Optional[Record]) -> None:
        """Make memory hold ``record`` (None: nothing) for ``actor_id`` *without* touching
        the store: for a take-back whose write failed and is retried. Memory then claims
        less than the KV holds, never more; the keys memory no longer shows stay stale."""
        stale = set(self.keys_of(actor_id)) | self._stale.get(actor_id, set())
        self._set(actor_id, self._slim(record) if record is not None else None)
        if record is not None:
            stale -= set(self.keys_of(actor_id))
        if stale:
            self._stale[actor_id] = stale

    # --- memory ---------------------------------------------------------------------

    def _slim(self, record: Record) -> Record:
        share = self._shared.setdefault
        pairs = rec.stored_pairs([(share(o, o), t) for o, t in record.pairs])
        return tuple.__new__(Record, (record.actor_id, record.name, share(record.namespace, record.namespace),
                                      b"", pairs, record.kind, record.grace_s or 0.0))

    def _index(self, record: Record) -> None:
        for owner, _ in record.pairs:
            if owner[0] != rec.SCOPE_SERVE:
                self._by_owner.setdefault(owner, {})[record.actor_id] = None

    def _unindex(self, record: Record) -> None:
        for owner, _ in record.pairs:
            ids = self._by_owner.get(owner)
            if ids is not None:
                ids.pop(record.actor_id, None)
                if not ids:
                    del self._by_owner[owner]

    def _set(self, actor_id: str, record: Optional[Record]) -> None:
        old = self._records.pop(actor_id, None)
        if old is not None:
            self._unindex(old)
            if old.kind != rec.KIND_ACTOR:
                self._others.pop(actor_id, None)
        if record is None:
            self.verified.discard(actor_id)
            self._odd.pop(actor_id, None)
            return
        self._records[actor_id] = record
        self._index(record)
        if record.kind != rec.KIND_ACTOR:
            self._others[actor_id] = record.kind

    def _drop_pair(self, actor_id: str, owner: Owner) -> None:
        record = self._records[actor_id]
        pairs = tuple(p for p in record.pairs if p[0] != owner)
        odd = self._odd.get(actor_id)
        if odd is not None:
            odd.pop(owner, None)
            if not odd:
                del self._odd[actor_id]
        self._set(actor_id, record.replace(pairs=pairs) if pairs else None)

    def _forget_all(self, ids: Iterable[str]) -> None:
        for actor_id in ids:
            self._set(actor_id, None)
            self._stale.pop(actor_id, None)


def owner_alive(owner: Owner, live_apps: set[str], live_deployments: set[tuple[str, str]],
                ended_jobs: "frozenset[str] | set[str]" = frozenset()) -> bool:
    scope, app, deployment = owner
    if scope == rec.SCOPE_APP:
        return app in live_apps
    if scope == rec.SCOPE_DEPLOYMENT:
        return (app, deployment) in live_deployments
    if scope == rec.SCOPE_JOB:
        return app not in ended_jobs
    return True
