"""The registry: the records' in-memory mirror of the store. No Ray imports.

Memory never claims a record the KV does not hold. Every change goes to the store first
and to memory only once the store call succeeded:

* ``add`` writes the record, then remembers it (a failed write raises; nothing kept);
* ``remove`` deletes the record, then forgets it (a failed delete raises; still kept, so
  a later pass retries);
* ``drop_bulk`` deletes many records with one prefix request per bucket, holding the
  write gate alone (see ``locks.WriteGate``), and forgets each bucket's records once its
  request succeeded;
* ``load`` rebuilds the map from the store, page by page. Entries that do not decode (a
  key that is not UTF-8, a value that is not a record of a known schema, a record under
  another actor's key) are *set aside*: left untouched in the KV, reported, never fatal.
  Only a failed read of the store raises.

The one exception runs the other way: ``set_memory`` shows a take-back whose KV write
failed at once (the engine retries the write), so memory then claims *less* than the KV.

Memory holds records *slim* (no handle bytes; ``records`` module docstring), an owner
index ``(scope, app, deployment) -> actor ids`` so that per-tick work grows with the
number of owners, not of records, and ``verified``: the actors this process checked
against the actor table.
"""

from __future__ import annotations

import asyncio
import gc
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from serve_cleanup.core import records as rec
from serve_cleanup.core.config import Config
from serve_cleanup.core.locks import WriteGate
from serve_cleanup.core.ports import RecordStore
from serve_cleanup.core.records import Record
from serve_cleanup.errors import RecordDecodeError

LOAD_PAGE = 2000  # keys per read at load: 100,000 records in ~0.4 s here (one read of all: 1.1 s)

Owner = tuple[str, str, str]  # (scope, app, deployment)


@dataclass(frozen=True)
class SetAside:
    """A KV entry under our prefix that could not be read as a record."""

    key: str  # printable (undecodable bytes shown as \\x escapes)
    reason: str
    size: int
    raw_key: bytes = b""  # the key as stored, below the store's prefix (to delete it)

    def to_dict(self) -> dict[str, object]:
        return {"key": self.key, "reason": self.reason, "size": self.size}


def read_entry(raw_key: bytes, value: bytes, *, slim: bool = False,
               shared: Optional[dict[str, str]] = None) -> "Record | SetAside":
    """One KV entry under the record prefix: its record, or why it is set aside."""
    try:
        try:
            key = raw_key.decode("utf-8")
        except UnicodeDecodeError as e:
            key = raw_key.decode("utf-8", "backslashreplace")
            raise RecordDecodeError(f"key is not UTF-8 ({e.reason} at byte {e.start})") from None
        record = rec.decode(value, slim=slim, shared=shared)
        if record.key != key:
            raise RecordDecodeError(f"record for actor {record.actor_id} is stored under another key")
        return record
    except Exception as e:  # never fatal, whatever the bytes
        return SetAside(key=key, reason=str(e) or type(e).__name__, size=len(value), raw_key=raw_key)


async def read_all(
    store: RecordStore, *, slim: bool = False, on_record: Optional[Callable[[int], None]] = None,
) -> tuple[dict[str, Record], dict[str, SetAside]]:
    """Every entry under the record prefix, read in pages; the next page is requested
    while this one is decoded. Raises only if the store does."""
    keys = sorted(await store.keys(rec.KEY_PREFIX))
    pages = [keys[i:i + LOAD_PAGE] for i in range(0, len(keys), LOAD_PAGE)]
    found: dict[str, Record] = {}
    set_aside: dict[str, SetAside] = {}
    shared: dict[str, str] = {}
    paused = gc.isenabled()
    gc.disable()  # 100,000 records are 100,000 long-lived objects: no GC passes over them
    try:
        pending = asyncio.ensure_future(store.get_many(pages[0])) if pages else None
        for i in range(len(pages)):
            assert pending is not None
            values = await pending
            pending = asyncio.ensure_future(store.get_many(pages[i + 1])) if i + 1 < len(pages) else None
            for raw_key, value in values.items():
                entry = read_entry(bytes(raw_key), value, slim=slim, shared=shared)
                if isinstance(entry, SetAside):
                    set_aside[entry.key] = entry
                    continue
                found[entry.actor_id] = entry
                if on_record is not None:
                    on_record(len(found))
    finally:
        if paused:
            gc.enable()
    return found, set_aside


class Registry:
    def __init__(self, store: RecordStore, clock: Callable[[], float],
                 deletes_in_flight: int = Config.deletes_in_flight) -> None:
        self._store = store
        self._clock = clock
        self._deletes_in_flight = deletes_in_flight
        self._records: dict[str, Record] = {}
        self._set_aside: dict[str, SetAside] = {}
        self._by_owner: dict[Owner, dict[str, None]] = {}  # ids in registration order
        self._shared: dict[str, str] = {}
        self.verified: set[str] = set()
        self.gate = WriteGate()

    # --- reading ------------------------------------------------------------------

    async def load(self, on_record: Optional[Callable[[int], None]] = None) -> tuple[int, list[SetAside]]:
        """Replace the in-memory view with what the store holds now (slim). Raises if
        the store cannot be read; then the view is unchanged."""
        found, set_aside = await read_all(self._store, slim=True, on_record=on_record)
        self._records, self._by_owner, self._set_aside = {}, {}, set_aside
        self.verified = set()
        for record in found.values():
            self._remember(record)
        return len(found), list(set_aside.values())

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, actor_id: object) -> bool:
        return actor_id in self._records

    def get(self, actor_id: str) -> Optional[Record]:
        return self._records.get(actor_id)

    def records(self) -> list[Record]:
        return list(self._records.values())

    def counts_by_scope(self) -> dict[str, int]:
        counts = {scope: 0 for scope in rec.SCOPES}
        for owner, ids in self._by_owner.items():
            counts[owner[0]] += len(ids)
        return counts

    def set_aside(self) -> list[SetAside]:
        return list(self._set_aside.values())

    def unverified(self) -> int:
        return len(self._records) - len(self.verified)

    def orphans(self, live_apps: set[str], live_deployments: set[tuple[str, str]]) -> list[Record]:
        """Records whose owner is gone: the Kubernetes-GC rule, level-triggered.

        ``live_deployments`` holds ``(app, deployment)`` pairs. Serve-wide records have
        no owner but Serve itself and are never orphans (they go at shutdown).
        """
        return [
            self._records[actor_id]
            for owner, ids in self._by_owner.items()
            if not owner_alive(owner, live_apps, live_deployments)
            for actor_id in ids
        ]

    def owner_apps(self) -> set[str]:
        """Apps that own at least one record."""
        return {owner[1] for owner in self._by_owner if owner[1]}

    async def full(self, records: list[Record]) -> dict[str, Record]:
        """The stored records (handle bytes included) of ``records``, in one read; an id
        the store no longer holds is left out."""
        values = await self._store.get_many([r.key.encode() for r in records])
        out: dict[str, Record] = {}
        for raw_key, value in values.items():
            entry = read_entry(bytes(raw_key), value)
            if isinstance(entry, Record):
                out[entry.actor_id] = entry
        return out

    # --- writing ------------------------------------------------------------------

    def new_record(
        self, *, actor_id: str, name: str, namespace: str, handle: bytes,
        scope: str = rec.SCOPE_SERVE, app: str = "", deployment: str = "",
    ) -> Record:
        record = Record(
            actor_id=actor_id, name=name, namespace=namespace if name else "", handle=handle,
            scope=scope, app=app, deployment=deployment, registered_at=self._clock(),
        )
        rec.validate(record)
        return record

    async def add(self, record: Record) -> None:
        """Store ``record`` durably (overwriting the actor's previous record), then
        remember it without its handle."""
        data = rec.encode(record)
        async with self.gate.shared():
            await self._store.put(record.key, data)
        self._forget(record.actor_id)
        self._remember(self._slim(record))

    async def remove(self, actor_id: str) -> bool:
        """Delete the record durably, then forget it. False if memory held none.

        The KV delete is issued even then: a write whose outcome was unknown (a timed-out
        put) may have landed, and deleting an absent key is harmless.
        """
        await self._store.delete(rec.record_key(actor_id))
        return self._forget(actor_id)

    async def drop_bulk(self, records: Iterable[Record], busy: Callable[[str], bool]) -> set[str]:
        """Delete the records of ``records`` that are still current and whose actor has no
        call in flight (``busy``), with one prefix request per bucket whose every key is
        one of them, and one delete per key elsewhere (a bucket that also holds another
        record, a set-aside entry or a key written by someone else). Holds the write gate
        alone: no write of ours can land between the listing and the deletes. Returns the
        ids dropped; raises if the store fails (what was deleted by then is forgotten)."""
        async with self.gate.alone():
            doomed = {r.actor_id: r for r in records if self._records.get(r.actor_id) is r and not busy(r.actor_id)}
            if not doomed:
                return set()
            keys = await self._store.keys(rec.KEY_PREFIX)
            buckets: dict[bytes, list[bytes]] = {}
            for key in keys:
                buckets.setdefault(rec.bucket_of(key), []).append(key)
            id_of = {r.key.encode(): actor_id for actor_id, r in doomed.items()}
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
            rest = [r for actor_id, r in doomed.items() if actor_id not in dropped]
            for i in range(0, len(rest), self._deletes_in_flight):
                chunk = rest[i:i + self._deletes_in_flight]
                results = await asyncio.gather(*(self._store.delete(r.key) for r in chunk), return_exceptions=True)
                done = [r.actor_id for r, result in zip(chunk, results) if not isinstance(result, BaseException)]
                self._forget_all(done)
                dropped.update(done)
                errors = [e for e in results if isinstance(e, BaseException)]
                if errors:
                    raise next((e for e in errors if not isinstance(e, Exception)), errors[0])
            return dropped

    def set_memory(self, actor_id: str, record: Optional[Record]) -> None:
        """Make memory hold ``record`` (None: nothing) for ``actor_id`` *without* touching
        the store: for a take-back whose write failed and is retried. Memory then claims
        less than the KV holds, never more."""
        self._forget(actor_id)
        if record is not None:
            self._remember(self._slim(record))

    def _slim(self, record: Record) -> Record:
        if not record.handle:
            return record
        share = self._shared.setdefault
        return Record(
            actor_id=record.actor_id, name=record.name, namespace=share(record.namespace, record.namespace),
            handle=b"", scope=share(record.scope, record.scope), app=share(record.app, record.app),
            deployment=share(record.deployment, record.deployment), registered_at=record.registered_at,
        )

    def _remember(self, record: Record) -> None:
        self._records[record.actor_id] = record
        self._by_owner.setdefault(record.owner, {})[record.actor_id] = None

    def _forget(self, actor_id: str) -> bool:
        record = self._records.pop(actor_id, None)
        self.verified.discard(actor_id)
        if record is None:
            return False
        ids = self._by_owner[record.owner]
        ids.pop(actor_id, None)
        if not ids:
            del self._by_owner[record.owner]
        return True

    def _forget_all(self, ids: Iterable[str]) -> None:
        for actor_id in ids:
            self._forget(actor_id)


def owner_alive(owner: Owner, live_apps: set[str], live_deployments: set[tuple[str, str]]) -> bool:
    scope, app, deployment = owner
    if scope == rec.SCOPE_APP:
        return app in live_apps
    if scope == rec.SCOPE_DEPLOYMENT:
        return (app, deployment) in live_deployments
    return True
