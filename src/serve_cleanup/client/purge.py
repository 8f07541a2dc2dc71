"""Operator actions straight on the GCS KV, for when no Serve controller runs.

Records left behind by a shutdown that gave up (an actor that could not be killed within
the grace), or set aside as unreadable, wait in the KV for the next durable controller.
``purge`` removes them without starting Serve. It refuses while a Serve controller runs:
the durable one holds the records in memory and must be asked instead
(``serve-cleanup unregister``, ``gc``), and any controller may turn into one that reads
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from serve_cleanup.serve_adapter import _ray
from serve_cleanup.serve_adapter.kv import KvStore
from serve_cleanup.core.records import KIND_ACTOR, parse_target
from serve_cleanup.errors import ControllerRunningError


@dataclass(frozen=True)
class PurgeItem:
    key: str  # printable
    raw_key: bytes
    what: str  # "record" or "set aside"
    actor_id: str = ""
    kind: str = KIND_ACTOR


def purge_plan(targets: Iterable["str | tuple[str, str]"] = (), *, set_aside: bool = False,
               everything: bool = False) -> list[PurgeItem]:
    """What ``purge`` would delete: the records of ``targets`` (ids as ``parse_target``
    reads them, or ``(kind, id)`` pairs), the set-aside entries if ``set_aside``, or
    every entry under the prefix if ``everything``. A record is purged only if it is of
    the kind named."""
    import asyncio

    from serve_cleanup.core.registry import read_keys

    wanted = {t if isinstance(t, tuple) else parse_target(t) for t in targets}
    loaded = asyncio.run(read_keys(KvStore(_ray.driver_gcs_client()).aio))
    plan = [  # every key of the actor: one per owner, a v1 key, keys a crash left (exact keys)
        PurgeItem(key.decode("utf-8", "backslashreplace"), key, "record", r.actor_id, r.kind)
        for r in sorted(loaded.records.values(), key=lambda r: (r.registered_at, r.actor_id))
        if everything or (r.kind, r.actor_id) in wanted
        for key in loaded.keys_of(r)
    ]
    if set_aside or everything:
        plan += [PurgeItem(s.key, s.raw_key, "set aside") for s in loaded.set_aside.values()]
    return plan


def purge_entries(plan: list[PurgeItem]) -> int:
    """Delete the planned entries. Refuses while a Serve controller runs."""
    from serve_cleanup.client.controller import controller_kind

    kind = controller_kind()
    if kind != "none":
        raise ControllerRunningError.for_kind(kind)
    kv = KvStore(_ray.driver_gcs_client())
    deleted = 0
    for item in plan:
        deleted += kv.delete(item.raw_key)
    return deleted

