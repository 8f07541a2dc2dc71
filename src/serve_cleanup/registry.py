"""The registry: pure bookkeeping over a ``RecordStore``. No Ray imports.

The in-memory map mirrors the store and is only changed *after* the store call
succeeded, so memory never claims something the KV does not hold:

* ``add`` writes the record, then remembers it (a failed write raises; nothing kept);
* ``remove`` deletes the record, then forgets it (a failed delete raises; still kept,
  so a later pass retries);
* ``load`` rebuilds the map from the store on every controller start. Entries that do
  not decode (a key that is not UTF-8, a value that is not a record of a known schema,
  a record under another actor's key) are *set aside*: left untouched in the KV,
  reported, never fatal. Only a failed scan (the store unreachable) raises.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Callable, Optional

from serve_cleanup import records as rec
from serve_cleanup.errors import RecordDecodeError
from serve_cleanup.records import Record
from serve_cleanup.store import RecordStore


@dataclass(frozen=True)
class SetAside:
    """A KV entry under our prefix that could not be read as a record."""

    key: str  # printable (undecodable bytes shown as \\x escapes)
    reason: str
    size: int
    raw_key: bytes = b""  # the key as stored, below the store's prefix (to delete it)

    def to_dict(self) -> dict[str, object]:
        return {"key": self.key, "reason": self.reason, "size": self.size}


class Registry:
    def __init__(self, store: RecordStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._records: dict[str, Record] = {}
        self._set_aside: dict[str, SetAside] = {}
        # Owner index, so per-tick work is O(owners), not O(records).
        self._by_owner: dict[Owner, set[str]] = {}

    # --- reading ------------------------------------------------------------------

    def load(self, on_record: Optional[Callable[[int], None]] = None) -> tuple[int, list[SetAside]]:
        """Replace the in-memory view with what the store holds now.

        ``on_record(n)`` is called after the n-th record is read (crash-point tests).
        """
        return self.load_from(self._store.scan(rec.KEY_PREFIX), on_record)

    def load_from(
        self, found: dict[bytes, bytes], on_record: Optional[Callable[[int], None]] = None
    ) -> tuple[int, list[SetAside]]:
        """``load`` from a scan's result (the controller scans off its event loop)."""
        paused = gc.isenabled()
        gc.disable()  # 100,000 records are 100,000 long-lived objects: no GC passes over them
        try:
            return self._load_from(found, on_record)
        finally:
            if paused:
                gc.enable()

    def _load_from(
        self, found: dict[bytes, bytes], on_record: Optional[Callable[[int], None]]
    ) -> tuple[int, list[SetAside]]:
        loaded: dict[str, Record] = {}
        set_aside: dict[str, SetAside] = {}
        for raw_key, value in found.items():
            raw_key = bytes(raw_key)
            try:
                try:
                    key = raw_key.decode("utf-8")
                except UnicodeDecodeError as e:
                    key = raw_key.decode("utf-8", "backslashreplace")
                    raise RecordDecodeError(f"key is not UTF-8 ({e.reason} at byte {e.start})") from None
                record = rec.decode(value)
                if record.key != key:
                    raise RecordDecodeError(
                        f"record for actor {record.actor_id} is stored under another key"
                    )
            except Exception as e:  # never fatal, whatever the bytes
                set_aside[key] = SetAside(
                    key=key, reason=str(e) or type(e).__name__, size=len(value), raw_key=raw_key
                )
                continue
            loaded[record.actor_id] = record
            if on_record is not None:
                on_record(len(loaded))
        self._records = {}
        self._by_owner = {}
        for record in loaded.values():
            self._remember(record)
        self._set_aside = set_aside
        return len(loaded), list(set_aside.values())

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, actor_id: object) -> bool:
        return actor_id in self._records

    def get(self, actor_id: str) -> Optional[Record]:
        return self._records.get(actor_id)

    def records(self) -> list[Record]:
        return list(self._records.values())

    def ids(self) -> list[str]:
        return list(self._records)

    def counts_by_scope(self) -> dict[str, int]:
        counts = {scope: 0 for scope in rec.SCOPES}
        for owner, ids in self._by_owner.items():
            counts[owner[0]] += len(ids)
        return counts

    def set_aside(self) -> list[SetAside]:
        return list(self._set_aside.values())

    def select(
        self,
        *,
        scope: Optional[str] = None,
        predicate: Optional[Callable[[Record], bool]] = None,
    ) -> list[Record]:
        return [
            r
            for r in self._records.values()
            if (scope is None or r.scope == scope) and (predicate is None or predicate(r))
        ]

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

    # --- writing ------------------------------------------------------------------

    def new_record(
        self,
        *,
        actor_id: str,
        name: str,
        namespace: str,
        handle: bytes,
        scope: str = rec.SCOPE_SERVE,
        app: str = "",
        deployment: str = "",
    ) -> Record:
        record = Record(
            actor_id=actor_id,
            name=name,
            namespace=namespace if name else "",
            handle=handle,
            scope=scope,
            app=app,
            deployment=deployment,
            registered_at=self._clock(),
        )
        rec.validate(record)
        return record

    async def add(self, record: Record, *, replace: bool = False) -> bool:
        """Store ``record`` durably. False (and no write) if a registration of the same
        actor with the same owner exists, unless ``replace``."""
        existing = self._records.get(record.actor_id)
        if not replace and existing is not None and _same_owner(existing, record):
            return False
        await self._store.put(record.key, rec.encode(record))
        self._forget(record.actor_id)
        self._remember(record)
        return True

    async def remove(self, actor_id: str) -> bool:
        """Delete the record durably, then forget it. False if memory held none.

        The KV delete is issued even then: a write whose outcome was unknown (a timed-out
        put) may have landed, and deleting an absent key is harmless.
        """
        await self._store.delete(rec.record_key(actor_id))
        return self._forget(actor_id)

    def set_memory(self, actor_id: str, record: Optional[Record]) -> None:
        """Make memory hold ``record`` (None: nothing) for ``actor_id`` *without* touching
        the store: for a take-back whose write failed and is retried. Memory then claims
        less than the KV holds, never more."""
        self._forget(actor_id)
        if record is not None:
            self._remember(record)

    def _remember(self, record: Record) -> None:
        self._records[record.actor_id] = record
        self._by_owner.setdefault(owner_of(record), set()).add(record.actor_id)

    def _forget(self, actor_id: str) -> bool:
        record = self._records.pop(actor_id, None)
        if record is None:
            return False
        owner = owner_of(record)
        ids = self._by_owner[owner]
        ids.discard(actor_id)
        if not ids:
            del self._by_owner[owner]
        return True


Owner = tuple[str, str, str]  # (scope, app, deployment)


def owner_of(record: Record) -> Owner:
    return (record.scope, record.app, record.deployment)


def _same_owner(a: Record, b: Record) -> bool:
    return owner_of(a) == owner_of(b)


def owner_alive(owner: Owner, live_apps: set[str], live_deployments: set[tuple[str, str]]) -> bool:
    scope, app, deployment = owner
    if scope == rec.SCOPE_APP:
        return app in live_apps
    if scope == rec.SCOPE_DEPLOYMENT:
        return (app, deployment) in live_deployments
    return True
