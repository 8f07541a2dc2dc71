"""The persisted registration record: schema, version, codec and key layout.

Key layout
----------
Records live in the GCS internal KV, in the KV namespace Serve checkpoints its own state
in (``b"serve"``), behind the same key prefix Serve's ``RayInternalKVStore`` adds
(``ray-serve-serve-``). Below that prefix this package owns every key that starts with
``KEY_PREFIX``::

    ray-serve-serve-serve-cleanup-actor-<actor id hex>

One KV entry per registered actor, keyed by the actor id. So:

* registering costs exactly one KV put however many records exist,
* registering the same actor twice overwrites the same key (stored once),
* removing one registration is one KV delete, and no record ever needs merging.

Record schema (msgpack map, string keys)
----------------------------------------
``v``          int    schema version; ``SCHEMA_VERSION`` today. A reader refuses newer
                      versions (``UnknownSchemaVersionError``) rather than guess.
``actor_id``   str    hex actor id; the key suffix and the identity every kill checks.
``name``       str    actor name, ``""`` for an anonymous actor.
``namespace``  str    actor namespace, ``""`` for an anonymous actor.
``handle``     bytes  Ray's own serialization of the actor handle (not pickle); how an
                      anonymous actor is reached again from a restarted controller.
``scope``      str    owner scope: ``"serve"`` (killed at ``serve.shutdown()``),
                      ``"app"`` or ``"deployment"``.
``app``        str    owning application (``""`` for scope ``serve``).
``deployment`` str    owning deployment (``""`` unless scope is ``deployment``).
``registered_at`` float  Unix time the controller accepted the registration.

Version history: 1 — the fields above.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

import msgpack

from serve_cleanup.errors import RecordDecodeError, UnknownSchemaVersionError

SCHEMA_VERSION = 1
KEY_PREFIX = "serve-cleanup-actor-"

SCOPE_SERVE = "serve"
SCOPE_APP = "app"
SCOPE_DEPLOYMENT = "deployment"
SCOPES = (SCOPE_SERVE, SCOPE_APP, SCOPE_DEPLOYMENT)

# Ray actor ids are 16 bytes; accept any even-length hex so a future id size still parses.
_MAX_ID_HEX = 256
_HEX_ID = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
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
        d = dataclasses.asdict(self)
        del d["handle"]
        return d


def record_key(actor_id: str) -> str:
    return KEY_PREFIX + actor_id


def actor_id_of_key(key: str) -> str:
    if not key.startswith(KEY_PREFIX):
        raise RecordDecodeError(f"key {key!r} is not a serve_cleanup record key")
    return key[len(KEY_PREFIX) :]


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


_FIELDS: dict[str, type | tuple[type, ...]] = {
    "actor_id": str,
    "name": str,
    "namespace": str,
    "handle": bytes,
    "scope": str,
    "app": str,
    "deployment": str,
    "registered_at": (float, int),
}


_FIELD_TYPES = tuple(
    (name, (types,) if isinstance(types, type) else types) for name, types in _FIELDS.items()
)


def decode(data: bytes) -> Record:
    """Bytes from the KV to a Record. Raises only ``RecordDecodeError`` (or its subclass)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RecordDecodeError(f"record must be bytes, got {type(data).__name__}")
    try:
        obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True)
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
    values: dict[str, Any] = {}
    for name, types in _FIELD_TYPES:
        value = obj.get(name)
        if type(value) not in types:  # exact types: bool is not an int here
            raise RecordDecodeError(f"record field {name!r} is missing or has a wrong type")
        values[name] = value
    values["registered_at"] = float(values["registered_at"])
    # A frozen dataclass's __init__ sets each field through object.__setattr__; filling
    # __dict__ directly is four times faster, and rehydrating 100,000 records is this loop.
    record = object.__new__(Record)
    record.__dict__.update(values)
    validate(record)
    return record


def validate(record: Record) -> None:
    """The invariants every stored record keeps."""
    aid = record.actor_id
    if not aid or len(aid) > _MAX_ID_HEX or len(aid) % 2 or not _HEX_ID.fullmatch(aid):
        raise RecordDecodeError(f"bad actor id {aid!r}: expected lower-case hex")
    if record.scope not in SCOPES:
        raise RecordDecodeError(f"unknown scope {record.scope!r}; expected one of {SCOPES}")
    if record.scope == SCOPE_SERVE and (record.app or record.deployment):
        raise RecordDecodeError("a serve-scoped record names no app or deployment")
    if record.scope == SCOPE_APP and (not record.app or record.deployment):
        raise RecordDecodeError("an app-scoped record names its app and no deployment")
    if record.scope == SCOPE_DEPLOYMENT and not (record.app and record.deployment):
        raise RecordDecodeError("a deployment-scoped record names its app and deployment")
    if not math.isfinite(record.registered_at):
        raise RecordDecodeError("registered_at is not a finite number")
