"""FROZEN: serve_cleanup 0.1.x's reader of the KV (v1), as main had it at d119014. Do not
edit: it stands for the older controller, ``list`` and ``purge`` after a rollback.

Copied verbatim: core/records.py (whole, below this docstring's end marker), then from
core/registry.py ``SetAside``, ``read_entry`` and the bucket rule of
``Registry.drop_bulk`` (its lines that choose what to delete, as a function
``drop_bulk_requests``; ``Registry.remove`` deletes ``record_key(actor_id)`` exactly).
The only changes: the two error classes are defined here instead of imported from
serve_cleanup.errors (a later change there cannot change this reader), and read_entry
calls ``decode`` instead of ``rec.decode`` (one module here).
"""

from __future__ import annotations


class RecordDecodeError(ValueError):
    """Bytes in the KV are not a registration record this code can read."""


class UnknownSchemaVersionError(RecordDecodeError):
    """A record was written by a newer serve_cleanup (a schema version we do not know)."""


# ---- core/records.py at d119014 ------------------------------------------------------


import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import msgpack

# (RecordDecodeError, UnknownSchemaVersionError: defined above)

SCHEMA_VERSION = 1
KEY_PREFIX = "serve-cleanup-actor-"
BUCKET_CHARS = 2

SCOPE_SERVE = "serve"
SCOPE_APP = "app"
SCOPE_DEPLOYMENT = "deployment"
SCOPES = (SCOPE_SERVE, SCOPE_APP, SCOPE_DEPLOYMENT)

# Ray actor ids are 16 bytes; accept any even-length hex so a future id size still parses.
_MAX_ID_HEX = 256
_HEX_ID = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True, slots=True)
class Record:
    """One durable registration: which actor to kill, and when."""

    actor_id: str
    name: str
    namespace: str
    handle: bytes = field(repr=False)
    scope: str = SCOPE_SERVE
    app: str = ""
    deployment: str = ""
    registered_at: float = 0.0

    @property
    def key(self) -> str:
        return record_key(self.actor_id)

    @property
    def owner(self) -> tuple[str, str, str]:
        return (self.scope, self.app, self.deployment)

    @property
    def display_name(self) -> str:
        return f"{self.namespace}/{self.name}" if self.name else f"<anonymous {self.actor_id[:12]}>"

    @property
    def owner_label(self) -> str:
        if self.scope == SCOPE_SERVE:
            return "serve"
        if self.scope == SCOPE_APP:
            return f"app {self.app!r}"
        return f"deployment {self.app!r}/{self.deployment!r}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the handle bytes left out)."""
        return {
            "actor_id": self.actor_id, "name": self.name, "namespace": self.namespace,
            "scope": self.scope, "app": self.app, "deployment": self.deployment,
            "registered_at": self.registered_at,
        }


def record_key(actor_id: str) -> str:
    return KEY_PREFIX + actor_id


def bucket_of(key: bytes) -> bytes:
    """The bucket prefix of a key below the store's prefix (see "Buckets")."""
    return key[: len(KEY_PREFIX) + BUCKET_CHARS]


def normalize_actor_id(value: object) -> str:
    """An actor id as callers may type it (hex, any case, surrounding blanks) in the one
    form records use. Raises ``TypeError``/``ValueError`` with a message for a person."""
    if not isinstance(value, str):
        raise TypeError(f"expected an actor id (hex str), got {type(value).__name__}")
    actor_id = value.strip().lower()
    if not _valid_id(actor_id):
        raise ValueError(
            f"{value!r} is not an actor id: expected hex digits, such as the ACTOR ID "
            "column of `serve-cleanup list`."
        )
    return actor_id


def check_owner_shape(scope: object, app: str, deployment: str) -> None:
    """The owner rule every registration keeps: ``serve`` names no app or deployment,
    ``app`` names its app only, ``deployment`` its app and deployment. Raises
    ``ValueError`` saying what to pass."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; use one of {SCOPES}.")
    if scope == SCOPE_SERVE and (app or deployment):
        raise ValueError("scope='serve' takes no app or deployment; use scope='app' or 'deployment'.")
    if scope == SCOPE_APP and (not app or deployment):
        raise ValueError("scope='app' needs app=... and takes no deployment; use scope='deployment'.")
    if scope == SCOPE_DEPLOYMENT and not (app and deployment):
        raise ValueError("scope='deployment' needs app=... and deployment=....")


def records_by_scope(counts: Iterable[tuple[str, int]]) -> dict[str, int]:
    """How many records each scope holds, as ``status`` shows them (the controller's and
    ``serve-cleanup status --detail``'s ``records_by_scope``): summed from ``(scope, n)``
    pairs (one per owner with its count, or one per record read from the KV), in
    ``SCOPES`` order, a scope that holds none left out."""
    totals = dict.fromkeys(SCOPES, 0)
    for scope, n in counts:
        totals[scope] = totals.get(scope, 0) + n
    return {scope: n for scope, n in totals.items() if n}


def encode(record: Record) -> bytes:
    validate(record)
    return msgpack.packb(
        {
            "v": SCHEMA_VERSION,
            "actor_id": record.actor_id,
            "name": record.name,
            "namespace": record.namespace,
            "handle": record.handle,
            "scope": record.scope,
            "app": record.app,
            "deployment": record.deployment,
            "registered_at": float(record.registered_at),
        },
        use_bin_type=True,
    )


_FIELDS: dict[str, tuple[type, ...]] = {
    "actor_id": (str,),
    "name": (str,),
    "namespace": (str,),
    "handle": (bytes,),
    "scope": (str,),
    "app": (str,),
    "deployment": (str,),
    "registered_at": (float, int),
}
_SHARED = ("namespace", "scope", "app", "deployment")  # values that repeat between records
_set = object.__setattr__


def decode(data: bytes, *, slim: bool = False, shared: Optional[dict[str, str]] = None) -> Record:
    """Bytes from the KV to a Record. Raises only ``RecordDecodeError`` (or its subclass).

    ``slim``: leave the handle out (``b""``). ``shared``: a dict, kept across calls, through
    which equal strings of different records become one object (memory at 100,000 records).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RecordDecodeError(f"record must be bytes, got {type(data).__name__}")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise RecordDecodeError(f"not a msgpack record: {e}") from None
    if not isinstance(obj, dict):
        raise RecordDecodeError(f"record is a msgpack {type(obj).__name__}, expected a map")
    version = obj.get("v")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RecordDecodeError(f"record has no valid schema version: {version!r}")
    if version > SCHEMA_VERSION:
        raise UnknownSchemaVersionError(
            f"record has schema version {version}; this serve_cleanup reads up to "
            f"{SCHEMA_VERSION}. It was written by a newer serve_cleanup: upgrade this one."
        )
    for name, types in _FIELDS.items():
        if type(obj.get(name)) not in types:  # exact types: bool is not an int here
            raise RecordDecodeError(f"record field {name!r} is missing or has a wrong type")
    if shared is not None:
        for name in _SHARED:
            value = obj[name]
            obj[name] = shared.setdefault(value, value)
    # Set the slots directly: a frozen dataclass's __init__ costs twice as much, and
    # rehydrating 100,000 records is this loop.
    record = object.__new__(Record)
    _set(record, "actor_id", obj["actor_id"])
    _set(record, "name", obj["name"])
    _set(record, "namespace", obj["namespace"])
    _set(record, "handle", b"" if slim else obj["handle"])
    _set(record, "scope", obj["scope"])
    _set(record, "app", obj["app"])
    _set(record, "deployment", obj["deployment"])
    _set(record, "registered_at", float(obj["registered_at"]))
    validate(record)
    return record


def _valid_id(actor_id: str) -> bool:
    return bool(actor_id) and len(actor_id) <= _MAX_ID_HEX and not len(actor_id) % 2 and bool(_HEX_ID.fullmatch(actor_id))


def validate(record: Record) -> None:
    """The invariants every stored record keeps."""
    if not _valid_id(record.actor_id):
        raise RecordDecodeError(f"bad actor id {record.actor_id!r}: expected lower-case hex")
    try:
        check_owner_shape(record.scope, record.app, record.deployment)
    except ValueError as e:
        raise RecordDecodeError(f"inconsistent owner: {e}") from None
    if not math.isfinite(record.registered_at):
        raise RecordDecodeError("registered_at is not a finite number")


# ---- core/registry.py at d119014: SetAside, read_entry ------------------------------

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
        record = decode(value, slim=slim, shared=shared)
        if record.key != key:
            raise RecordDecodeError(f"record for actor {record.actor_id} is stored under another key")
        return record
    except Exception as e:  # never fatal, whatever the bytes
        return SetAside(key=key, reason=str(e) or type(e).__name__, size=len(value), raw_key=raw_key)



# ---- core/registry.py at d119014: the bucket rule of Registry.drop_bulk ----------------


def drop_bulk_requests(keys: list[bytes], doomed: dict[str, Record]) -> tuple[list[bytes], list[str]]:
    """What ``drop_bulk`` deletes, given every key under ``KEY_PREFIX`` (``keys``) and the
    records to drop (``doomed``, by actor id): (prefixes deleted, exact keys deleted).
    Its lines, with the store calls turned into the two lists."""
    buckets: dict[bytes, list[bytes]] = {}
    for key in keys:
        buckets.setdefault(bucket_of(key), []).append(key)
    id_of = {r.key.encode(): actor_id for actor_id, r in doomed.items()}
    clean = [b for b, ks in buckets.items() if all(k in id_of for k in ks)]
    if len(clean) == len(buckets):  # the common case: one request
        return [KEY_PREFIX.encode()], []
    dropped: set[str] = set()
    for bucket in clean:
        dropped |= {id_of[k] for k in buckets[bucket]}
    rest = [r for actor_id, r in doomed.items() if actor_id not in dropped]
    return clean, [r.key for r in rest]
