"""The persisted registration record: schema, versions, codec and key layout.

Where records live
------------------
In the GCS internal KV, in the KV namespace Serve checkpoints its own state in
(``b"serve"``), behind the key prefix Serve's ``RayInternalKVStore`` adds
(``ray-serve-serve-``; ``serve_adapter/kv.py`` composes whole keys). Below that prefix
this package owns every key that starts with ``KEY_PREFIX`` (``serve-cleanup-actor-``).

Key grammar (v2): one key per (actor, owner) pair
-------------------------------------------------
::

    key     = KEY_PREFIX actor-id "/" "2" "/" kind "/" scope "/" part "/" part "/"
              time "/" part "/" part
              ;  the parts: owner's first name, owner's second name, name, namespace
    actor-id = 2*256 lower-case hex digits, an even number of them
              ;  an actor's id, or a placement group's (kind "pg")
    kind    = "actor" | "pg"              ; "pg": a placement group (since 0.3.0)
    scope   = "serve" | "app" | "deployment" | "job"
            | "pg"                        ; reserved (placement groups as owners)
    part    = *( any character but "/" and "%" | "%2F" | "%25" )
    time    = ["-"] 1*16 digits, no leading zero: the Unix time the pair was
              registered at, in whole microseconds (``time_text``)

Every field is self-delimiting: ``/`` ends it, and a ``/`` or ``%`` inside a name is
written ``%2F`` or ``%25`` (nothing else is escaped), so any characters round-trip and
app ``A`` never matches as a prefix of app ``AB``. The owner's two names are ``"" ""``
for ``serve``, ``app ""`` for ``app``, ``app deployment`` for ``deployment`` and
``job-id ""`` for ``job`` (a Ray job's hex id; since 0.3.0, which a 0.2.0 reader sets
aside). The actor id comes
first, so the first byte of the id still buckets every key (see "Buckets"), and
``KEY_PREFIX + id + "/"`` lists one actor's keys. Example::

    serve-cleanup-actor-5b2c…b5/2/actor/deployment/shop/Checkout/1714000000500000/router/prod

The key carries everything a load and ``list`` need, so a restarted controller reads keys
only (``parse_keys``: chunks of ``CHUNK`` keys joined, split and checked column by column;
a chunk that fails a check falls back to ``parse_key`` one key at a time, and a key that
does not parse is set aside). The value is read only when a kill needs the handle.

Owner sets
----------
An actor's owners are the app and deployment owners of its keys. An actor with none has
one key of scope ``serve`` (killed at ``serve.shutdown()``); an actor with owners has one
key per owner and no ``serve`` key (killed when its last owner is gone, or at shutdown).
A changed owner set or name is written as new keys first, then the old exact keys are
deleted, with a later time than any key of the actor. A crash can leave both; the loader
(``resolve_pairs``) reads them as the newer set: of two keys of one owner it keeps the
later time, and a ``serve`` key beside owner keys wins only if it is later than all of
them. The keys it does not keep are deleted.

Value schema (msgpack map, string keys; never pickle)
-----------------------------------------------------
``v``          int    schema version; ``SCHEMA_VERSION`` (2) today. A reader refuses
                      newer versions (``UnknownSchemaVersionError``) rather than guess.
``actor_id``   str    hex actor id; the identity every kill checks.
``kind``       str    ``"actor"`` or ``"pg"`` (a placement group; since 0.3.0), the key's
                      kind (v2 only). ``actor_id`` is then the placement group's id,
                      ``name`` its name, ``namespace`` and ``handle`` empty: it is
                      removed by its id.
``name``       str    actor name, ``""`` for an anonymous actor.
``namespace``  str    actor namespace, ``""`` for an anonymous actor.
``handle``     bytes  Ray's own serialization of the actor handle (not pickle); how an
                      anonymous actor is reached again from a restarted controller.
``scope``      str    this key's owner scope: ``serve``, ``app`` or ``deployment``.
``app``        str    owning application (``""`` for scope ``serve``).
``deployment`` str    owning deployment (``""`` unless scope is ``deployment``).
``registered_at`` float  Unix time the pair was registered at (the key's time; whole
                      microseconds).

The value holds the whole record of its pair, handle included, so a registration is one
put.

Version history
---------------
1. serve_cleanup 0.1.0 up to 0.2.0: one key per actor, ``KEY_PREFIX + actor id``
   (``record_key``), with the v1 value (the map above without ``kind``; ``v`` = 1). A
   v1 key is a prefix of its actor's v2 keys: it is deleted by its exact key only, never
   by prefix. v1 records are still read (their values, at load) and rewritten as v2, or
   killed, in the background (``Registry.migrate``).
2. serve_cleanup 0.2.0: one key per (actor, owner) pair, the grammar above; value ``v`` = 2.
   0.3.0 adds the kind ``pg`` in the same grammar and schema: a 0.2.0 reader sets such a
   key aside (an unknown kind) and never deletes it, so a rollback leaks nothing it
   cannot report.

Grace periods
-------------
``grace_s`` (optional in the value, 0 when absent; since 0.3.0): the pair's registration
asked for a graceful exit of up to that many seconds (``MAX_GRACE_S`` at most) before the
forced kill. It lives in the values only, so a record loaded from its keys has 0 until a
kill reads its values; the kill reads every key's value of the actor and uses the largest
grace among them. A running graceful exit's deadline is kept under its own key,
``DEADLINE_PREFIX + id`` (not below ``KEY_PREFIX``), so a restarted controller honours
it instead of starting a new one. A 0.2.0 reader ignores the field (and kills at once).

Between releases (the call's answer)
------------------------------------
0.1.x's client unpickles ``serve_cleanup_register``'s answer into its own ``Record``, a
frozen dataclass of one owner (``actor_id, name, namespace, handle, scope, app,
deployment, registered_at``), which cannot read this module's ``Record``. A 0.1.x call
(no ``protocol=2``) is answered with ``V1Reply``, which unpickles as that dataclass.

In memory
---------
``Record`` is one actor: its id, name, namespace, handle (``b""`` in the controller's
memory, "slim": a kill reads it back) and its ``pairs``, ``((scope, app, deployment),
time)`` per key. A NamedTuple, so a load of 100,000 keys builds records in bulk.

Buckets
-------
Bulk deletes go by *bucket*: the first ``BUCKET_CHARS`` characters after ``KEY_PREFIX``
(for a record, the first byte of the actor id in hex, so 256 buckets; v1 and v2 keys of
one actor share it). A bucket is deleted with one prefix request only when every key in
it is a key to delete (``registry`` says when that is safe).
"""

from __future__ import annotations

import math
import re
from itertools import repeat
from operator import truediv
from typing import Any, Iterable, NamedTuple, Optional

import msgpack

from serve_cleanup.errors import RecordDecodeError, UnknownSchemaVersionError

SCHEMA_VERSION = 2
KEY_PREFIX = "serve-cleanup-actor-"
KEY_VERSION = "2"
BUCKET_CHARS = 2
SEP = "/"
ESC = "%"
CHUNK = 4096  # keys parsed at once

KIND_ACTOR = "actor"
KIND_PLACEMENT_GROUP = "pg"
KINDS = (KIND_ACTOR, KIND_PLACEMENT_GROUP)
KIND_NAMES = {KIND_ACTOR: "actor", KIND_PLACEMENT_GROUP: "placement group"}

# The longest grace period a registration may ask for. Serve's ``serve.shutdown()`` waits
# 30 s for the controller by default, and the controller gives up on what is left after
# ``Config.shutdown_grace_s`` (20 s): a graceful exit of 10 s, then a forced kill and its
# confirmation (``Config.confirm_death_s``, 5 s), fit inside both.
MAX_GRACE_S = 10.0
DEADLINE_PREFIX = "serve-cleanup-deadline-"  # + id: the running graceful exit's deadline

SCOPE_SERVE = "serve"
SCOPE_APP = "app"
SCOPE_DEPLOYMENT = "deployment"
SCOPE_JOB = "job"  # a Ray job (driver) as the owner; since 0.3.0
SCOPE_PLACEMENT_GROUP = "pg"  # reserved
SCOPES = (SCOPE_SERVE, SCOPE_APP, SCOPE_DEPLOYMENT, SCOPE_JOB)

Owner = tuple[str, str, str]  # (scope, app, deployment)
Pair = tuple[Owner, float]  # an owner and the time it was registered at: one key
SERVE_OWNER: Owner = (SCOPE_SERVE, "", "")

# Ray actor ids are 16 bytes; accept any even-length hex so a future id size still parses.
_MAX_ID_HEX = 256
_HEX_ID = re.compile(r"[0-9a-f]+")
_HEX_RUN = re.compile(r"[0-9a-f]*")
_BAD_ESCAPE = re.compile(r"%(?!2F|25)")
_FIELDS_V2 = 9  # fields of a v2 key, the prefix and id being the first
_ID_LENGTHS = frozenset(range(2, _MAX_ID_HEX + 1, 2))


class _RecordFields(NamedTuple):
    actor_id: str  # the id of what is registered: an actor's, or a placement group's
    name: str
    namespace: str
    handle: bytes
    stored_pairs: Any  # one pair as is, or a tuple of pairs: see Record.pairs
    kind: str  # KIND_ACTOR or KIND_PLACEMENT_GROUP
    grace_s: float  # the graceful exit's grace period (0: killed at once); see "Grace periods"


def stored_pairs(pairs: Iterable[Pair]) -> Any:
    """What a ``Record`` keeps of ``pairs``: the one pair itself (most records have one:
    64 bytes less a record, 6 MB at 100,000), else the tuple of them."""
    pairs = tuple(pairs)
    return pairs[0] if len(pairs) == 1 else pairs


class Record(_RecordFields):
    """One registered actor or placement group (``kind``): which one to kill or remove,
    and its owners (one ``pair`` per KV key). ``actor_id`` is its id either way (Ray's
    actor ids are 16 bytes, placement group ids 18: the two never meet).

    ``Record(actor_id, name, namespace, handle, scope=..., app=..., deployment=...,
    registered_at=...)`` makes a record of one pair; ``pairs=`` gives them all."""

    __slots__ = ()

    def __new__(cls, actor_id: str, name: str, namespace: str, handle: bytes = b"",
                scope: str = SCOPE_SERVE, app: str = "", deployment: str = "",
                registered_at: float = 0.0, *, pairs: Optional[tuple[Pair, ...]] = None,
                kind: str = KIND_ACTOR, grace_s: float = 0.0) -> "Record":
        if pairs is None:
            return tuple.__new__(cls, (actor_id, name, namespace, handle,
                                       ((scope, app, deployment), float(registered_at)), kind, grace_s))
        return tuple.__new__(cls, (actor_id, name, namespace, handle, stored_pairs(pairs), kind, grace_s))

    @property
    def pairs(self) -> tuple[Pair, ...]:
        """The (owner, registration time) pairs, one per KV key."""
        s = self.stored_pairs
        return (s,) if s and s[0][0].__class__ is str else s  # one pair: its owner's scope is a str

    def __getnewargs_ex__(self) -> tuple[tuple, dict]:  # pickle (Ray returns records)
        return (self.actor_id, self.name, self.namespace, self.handle), {
            "pairs": self.pairs, "kind": self.kind, "grace_s": self.grace_s}

    def __repr__(self) -> str:
        return (f"Record(actor_id={self.actor_id!r}, name={self.name!r}, "
                f"namespace={self.namespace!r}, pairs={self.pairs!r}"
                + (f", kind={self.kind!r}" if self.kind != KIND_ACTOR else "")
                + (f", grace_s={self.grace_s!r})" if self.grace_s else ")"))

    def replace(self, **changes: Any) -> "Record":
        """A copy with fields changed (``actor_id``, ``name``, ``namespace``, ``handle``,
        ``pairs``)."""
        if "pairs" in changes:
            changes["stored_pairs"] = stored_pairs(changes.pop("pairs"))
        return self._replace(**changes)

    # --- owners -------------------------------------------------------------------

    @property
    def owners(self) -> tuple[Owner, ...]:
        """The app and deployment owners; () for an actor that waits for shutdown."""
        return tuple(o for o, _ in self.pairs if o[0] != SCOPE_SERVE)

    @property
    def owner(self) -> Owner:
        """The first pair's owner (``SERVE_OWNER`` for an actor without owners)."""
        return self.pairs[0][0]

    @property
    def scope(self) -> str:
        return self.pairs[0][0][0]

    @property
    def app(self) -> str:
        return self.pairs[0][0][1]

    @property
    def deployment(self) -> str:
        return self.pairs[0][0][2]

    @property
    def registered_at(self) -> float:
        """When the actor was first registered (the earliest of its pairs' times)."""
        return min(t for _, t in self.pairs)

    @property
    def latest(self) -> float:
        return max(t for _, t in self.pairs)

    def time_of(self, owner: Owner) -> Optional[float]:
        for o, t in self.pairs:
            if o == owner:
                return t
        return None

    # --- keys ---------------------------------------------------------------------

    @property
    def key(self) -> str:
        """The key of the first pair."""
        owner, t = self.pairs[0]
        return pair_key(self.actor_id, owner, t, self.name, self.namespace, self.kind)

    def keys(self) -> list[str]:
        return [pair_key(self.actor_id, o, t, self.name, self.namespace, self.kind) for o, t in self.pairs]

    def pair(self, owner: Owner) -> "Record":
        """This record cut to its pair of ``owner`` (what one KV value holds)."""
        return self.replace(pairs=[p for p in self.pairs if p[0] == owner])

    # --- display ------------------------------------------------------------------

    @property
    def display_name(self) -> str:
        if self.kind == KIND_PLACEMENT_GROUP:
            return f"placement group {self.name!r}" if self.name else f"<placement group {self.actor_id[:12]}>"
        return f"{self.namespace}/{self.name}" if self.name else f"<anonymous {self.actor_id[:12]}>"

    @property
    def kind_name(self) -> str:
        """``actor`` or ``placement group``."""
        return KIND_NAMES.get(self.kind, self.kind)

    @property
    def owner_label(self) -> str:
        owners = self.owners
        if not owners:
            return "serve"
        return ", ".join(owner_label(o) for o in owners)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the handle bytes left out). ``scope``/``app``/``deployment``
        are the first pair's; ``owners`` lists them all."""
        pairs = self.pairs
        (scope, app, deployment), t = pairs[0]  # (``list`` builds 100,000 of these: no properties)
        return {
            "actor_id": self.actor_id, "kind": self.kind, "grace_s": self.grace_s,
            "name": self.name, "namespace": self.namespace,
            "scope": scope, "app": app, "deployment": deployment,
            "registered_at": t if len(pairs) == 1 else min(p[1] for p in pairs),
            "owners": [{"scope": o[0], "app": o[1], "deployment": o[2], "registered_at": t}
                       for o, t in pairs if o[0] != SCOPE_SERVE],
        }


class V1Reply:
    """``record`` as a 0.1.x client unpickles it: its own ``Record`` dataclass (found by
    the same name, ``serve_cleanup.core.records.Record``), built with ``object.__new__``
    (a frozen dataclass has no ``__new__`` of its own) and filled by its ``__setstate__``
    from the eight fields in order. The owner is
    ``owner`` if the record has it, else its first; the time is that pair's."""

    __slots__ = ("fields",)

    def __init__(self, record: "Record", owner: Optional[Owner] = None) -> None:
        time = record.time_of(owner) if owner is not None else None
        if time is None:
            owner, time = record.pairs[0]
        self.fields = [record.actor_id, record.name, record.namespace, record.handle, *owner, time]
        # (a 0.1.x client registers actors only: a placement group is never answered this way)

    def __reduce__(self) -> tuple[Any, ...]:
        return object.__new__, (Record,), self.fields


def owner_label(owner: Owner) -> str:
    scope, app, deployment = owner
    if scope == SCOPE_SERVE:
        return "serve"
    if scope == SCOPE_APP:
        return f"app {app!r}"
    if scope == SCOPE_JOB:
        return f"job {app}"
    return f"deployment {app!r}/{deployment!r}"


# --- keys ------------------------------------------------------------------------------


def record_key(actor_id: str) -> str:
    """The v1 key of an actor (0.1.0's layout): a prefix of its v2 keys."""
    return KEY_PREFIX + actor_id


def actor_prefix(actor_id: str) -> str:
    """The prefix every v2 key of ``actor_id`` starts with (and no other actor's)."""
    return KEY_PREFIX + actor_id + SEP


def escape(part: str) -> str:
    if ESC in part:
        part = part.replace(ESC, "%25")
    if SEP in part:
        part = part.replace(SEP, "%2F")
    return part


def unescape(part: str) -> str:
    """Raises ``RecordDecodeError`` on an escape other than ``%2F`` and ``%25``."""
    if ESC not in part:
        return part
    if _BAD_ESCAPE.search(part):
        raise RecordDecodeError(f"bad escape in key part {part!r}")
    return part.replace("%2F", SEP).replace("%25", ESC)


def pair_key(actor_id: str, owner: Owner, registered_at: float, name: str, namespace: str,
             kind: str = KIND_ACTOR) -> str:
    """The v2 key of one (actor, owner) pair (grammar in the module docstring)."""
    scope, app, deployment = owner
    return SEP.join((
        KEY_PREFIX + actor_id, KEY_VERSION, kind, scope, escape(app), escape(deployment),
        time_text(registered_at), escape(name), escape(namespace),
    ))


def bucket_of(key: bytes) -> bytes:
    """The bucket prefix of a key below the store's prefix (see "Buckets")."""
    return key[: len(KEY_PREFIX) + BUCKET_CHARS]


def is_v1_key(key: bytes) -> bool:
    return SEP.encode() not in key


class ParsedKey(NamedTuple):
    actor_id: str
    owner: Owner
    registered_at: float
    name: str
    namespace: str
    kind: str = KIND_ACTOR


def parse_key(raw: bytes) -> ParsedKey:
    """One v2 key, below the store's prefix. Raises ``RecordDecodeError`` saying why."""
    try:
        key = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordDecodeError(f"key is not UTF-8 ({e.reason} at byte {e.start})") from None
    parts = key.split(SEP)
    if len(parts) != _FIELDS_V2:
        raise RecordDecodeError(f"key has {len(parts)} fields, a v2 key has {_FIELDS_V2}")
    head, version, kind, scope, app, deployment, t, name, namespace = parts
    if not head.startswith(KEY_PREFIX):
        raise RecordDecodeError("key is not below the record prefix")
    actor_id = head[len(KEY_PREFIX):]
    if not _valid_id(actor_id):
        raise RecordDecodeError(f"bad actor id {actor_id!r} in key: expected lower-case hex")
    if version != KEY_VERSION:
        raise UnknownSchemaVersionError(
            f"key has grammar version {version!r}; this serve_cleanup reads {KEY_VERSION}. "
            "It was written by a newer serve_cleanup: upgrade this one.")
    if kind not in KINDS:
        raise RecordDecodeError(f"key has kind {kind!r}, which this serve_cleanup does not handle")
    owner = (scope, unescape(app), unescape(deployment))
    try:
        check_owner_shape(*owner)
    except ValueError as e:
        raise RecordDecodeError(f"inconsistent owner in key: {e}") from None
    registered_at = _parse_time(t)
    name, namespace = unescape(name), unescape(namespace)
    return ParsedKey(actor_id, owner, registered_at, name, namespace, kind)


_MAX_MICROS = 4 * 10**15  # microseconds (year 2096): below it, whole microseconds are distinct floats
_TIMES = re.compile(r"(?:0|-?[1-9][0-9]{0,15})(?:/(?:0|-?[1-9][0-9]{0,15}))*")


def in_micros(t: float) -> float:
    """``t`` rounded to whole microseconds (the times of pairs); a time out of the keys'
    range as it is (``validate`` refuses it)."""
    t = float(t)
    return round(t * 1_000_000) / 1_000_000 if abs(t) < _MAX_MICROS / 1_000_000 else t


def time_text(registered_at: float) -> str:
    """A pair's time as its key writes it: whole microseconds, found exactly for a time
    that is whole microseconds (``in_micros``), the nearest otherwise."""
    t = float(registered_at)
    us = round(t * 1_000_000)
    for candidate in (us, us - 1, us + 1, us - 2, us + 2):
        if candidate / 1_000_000 == t:
            return str(candidate)
    return str(us)


def _parse_time(text: str) -> float:
    if not _TIMES.fullmatch(text) or abs(int(text)) >= _MAX_MICROS:
        raise RecordDecodeError(f"bad time {text!r} in key: expected whole microseconds")
    return int(text) / 1_000_000


class ParsedKeys:
    """Columns of the v2 keys ``parse_keys`` read (one entry per key), the v1 keys it found
    (their values must be read) and the keys it set aside, with why."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.owners: list[Owner] = []
        self.times: list[float] = []
        self.names: list[str] = []
        self.namespaces: list[str] = []
        self.kinds: list[str] = []
        self.raw: list[bytes] = []
        self.v1: list[bytes] = []
        self.bad: list[tuple[bytes, str]] = []

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, raw: bytes, k: ParsedKey) -> None:
        self.ids.append(k.actor_id)
        self.owners.append(k.owner)
        self.times.append(k.registered_at)
        self.names.append(k.name)
        self.namespaces.append(k.namespace)
        self.kinds.append(k.kind)
        self.raw.append(raw)


def parse_keys(keys: list[bytes], shared: Optional[dict] = None) -> ParsedKeys:
    """Every key below ``KEY_PREFIX``, parsed in chunks of ``CHUNK``: a chunk of v2 keys is
    joined with ``/``, split once and checked column by column; a chunk that fails any
    check is parsed key by key (``parse_key``), and a key that fails is set aside. Never
    raises. ``shared`` interns owners and namespaces (memory at 100,000 records)."""
    out = ParsedKeys()
    shared = {} if shared is None else shared
    slash = SEP.encode()
    counts = list(map(bytes.count, keys, repeat(slash)))
    v2: list[bytes] = []
    if counts.count(_FIELDS_V2 - 1) == len(keys):  # the usual case: every key is a v2 key
        v2, keys = list(keys), []
    for key, n in zip(keys, counts):
        if n == _FIELDS_V2 - 1:
            v2.append(key)
        elif n == 0 and key.startswith(KEY_PREFIX.encode()):
            out.v1.append(key)
        else:
            out.bad.append((key, f"key has {n + 1} fields, a v2 key has {_FIELDS_V2}"))
    for i in range(0, len(v2), CHUNK):
        chunk = v2[i:i + CHUNK]
        if not _parse_chunk(chunk, out, shared):
            for raw in chunk:
                try:
                    k = parse_key(raw)
                except RecordDecodeError as e:
                    out.bad.append((raw, str(e)))
                    continue
                out.add(raw, ParsedKey(k.actor_id, shared.setdefault(k.owner, k.owner), k.registered_at,
                                       k.name, shared.setdefault(k.namespace, k.namespace), k.kind))
    return out


def _parse_chunk(chunk: list[bytes], out: ParsedKeys, shared: dict) -> bool:
    """The bulk path of ``parse_keys``: True if every key of ``chunk`` passed every check
    (and its columns were appended), False to fall back key by key. ``chunk``'s keys all
    start with ``KEY_PREFIX`` (they come from a listing of it)."""
    try:
        text = b"/".join(chunk).decode("utf-8")
    except UnicodeDecodeError:
        return False
    n = len(chunk)
    if text.count(KEY_PREFIX) != n:  # once per key, and in no name
        return False
    parts = text.replace(KEY_PREFIX, "").split(SEP)
    if len(parts) != n * _FIELDS_V2:
        return False
    ids = parts[0::_FIELDS_V2]
    if not set(map(len, ids)) <= _ID_LENGTHS or not _HEX_RUN.fullmatch("".join(ids)):
        return False
    kinds = parts[2::_FIELDS_V2]
    if set(parts[1::_FIELDS_V2]) != {KEY_VERSION} or not set(kinds) <= set(KINDS):
        return False
    scopes, apps, deps = parts[3::_FIELDS_V2], parts[4::_FIELDS_V2], parts[5::_FIELDS_V2]
    names, nss = parts[7::_FIELDS_V2], parts[8::_FIELDS_V2]
    for column in (apps, deps, names, nss):
        if ESC in "".join(column):
            try:
                column[:] = list(map(unescape, column))
            except RecordDecodeError:
                return False
    setdefault = shared.setdefault
    if set(scopes) == {SCOPE_SERVE} and not "".join(apps) and not "".join(deps):
        owners: Iterable[Owner] = repeat(setdefault(SERVE_OWNER, SERVE_OWNER), n)  # the upstream method's
    else:
        listed = list(zip(scopes, apps, deps))
        for owner in set(listed):
            if owner not in shared:
                try:
                    check_owner_shape(*owner)
                except ValueError:
                    return False
        owners = map(setdefault, listed, listed)
    texts = parts[6::_FIELDS_V2]
    if not _TIMES.fullmatch(SEP.join(texts)):
        return False
    micros = list(map(int, texts))
    if max(micros) >= _MAX_MICROS or min(micros) <= -_MAX_MICROS:
        return False
    times = list(map(truediv, micros, repeat(1_000_000)))
    out.ids += ids
    out.owners += owners
    out.times += times
    out.names += names
    out.namespaces += map(setdefault, nss, nss)
    out.kinds += map(_KIND_OBJECTS.__getitem__, kinds)  # one str object per kind
    out.raw += chunk
    return True


_KIND_OBJECTS = {k: k for k in KINDS}


def resolve_pairs(pairs: list[tuple[Pair, bytes]]) -> tuple[list[tuple[Pair, bytes]], list[bytes]]:
    """The pairs one actor's keys leave after a crash between the steps of an owner change
    (module docstring, "Owner sets"): (kept pairs with their keys, keys to delete). Of two
    keys of one owner the later time is kept; a ``serve`` key beside owner keys is kept
    (and they dropped) only if it is later than all of them."""
    if len(pairs) == 1:
        return pairs, []
    best: dict[Owner, tuple[Pair, bytes]] = {}
    stale: list[bytes] = []
    for item in pairs:
        (owner, t), _ = item
        old = best.get(owner)
        if old is None:
            best[owner] = item
        elif t > old[0][1] or (t == old[0][1] and item[1] > old[1]):
            stale.append(old[1])
            best[owner] = item
        else:
            stale.append(item[1])
    serve = best.pop(SERVE_OWNER, None)
    if serve is not None:
        if best and max(t for (_, t), _ in best.values()) > serve[0][1]:
            stale.append(serve[1])
        else:
            stale += [k for _, k in best.values()]
            best = {SERVE_OWNER: serve}
    kept = sorted(best.values(), key=lambda item: (item[0][1], item[0][0]))
    return kept, stale


# --- arguments -----------------------------------------------------------------------------


TARGET_PREFIXES = {"actor": KIND_ACTOR, "pg": KIND_PLACEMENT_GROUP}


def parse_target(value: object) -> tuple[str, str]:
    """An id as typed on a command line, with its kind: ``pg:<hex>`` is a placement
    group, ``actor:<hex>`` or a bare ``<hex>`` an actor (both are hex, so the prefix
    says which). Returns ``(kind, id)``; raises ``TypeError``/``ValueError`` with a
    message for a person."""
    if not isinstance(value, str):
        raise TypeError(f"expected an id (hex str), got {type(value).__name__}")
    text = value.strip()
    head, sep, rest = text.partition(":")
    if not sep:
        return KIND_ACTOR, normalize_actor_id(text)
    kind = TARGET_PREFIXES.get(head.strip().lower())
    if kind is None:
        raise ValueError(f"{value!r}: unknown kind {head!r}; write pg:<id> for a placement group, "
                         "actor:<id> or the bare id for an actor.")
    try:
        return kind, normalize_actor_id(rest)
    except ValueError:
        raise ValueError(f"{value!r} is not a {KIND_NAMES[kind]} id: expected {head}:<hex digits>.") from None


def target_text(kind: str, actor_id: str) -> str:
    """``parse_target``'s inverse: the bare id of an actor, ``pg:<id>`` of a placement group."""
    return actor_id if kind == KIND_ACTOR else f"{kind}:{actor_id}"


def normalize_actor_id(value: object) -> str:
    """An actor id as callers may type it (hex, any case, surrounding blanks) in the one
    form records use. Raises ``TypeError``/``ValueError`` with a message for a person."""
    if not isinstance(value, str):
        raise TypeError(f"expected an actor id (hex str), got {type(value).__name__}")
    actor_id = value.strip().lower()
    if not _valid_id(actor_id):
        raise ValueError(
            f"{value!r} is not an actor id: expected hex digits, such as the ID "
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
    if scope == SCOPE_JOB and (deployment or not _valid_id(app)):
        raise ValueError(f"scope='job' needs job=<a Ray job id in hex, such as 01000000>, got {app!r}.")


def check_grace(grace_s: object, kind: str = KIND_ACTOR) -> float:
    """A registration's grace period in seconds: a finite number from 0 to
    ``MAX_GRACE_S``; a placement group takes none (it is removed at once). Raises
    ``TypeError``/``ValueError`` with a one-line message."""
    if isinstance(grace_s, bool) or not isinstance(grace_s, (int, float)):
        raise TypeError(f"grace_s must be a number of seconds, got {type(grace_s).__name__}")
    if not (math.isfinite(grace_s) and 0 <= grace_s <= MAX_GRACE_S):
        raise ValueError(
            f"grace_s={grace_s!r} is out of range: 0 (killed at once) to {MAX_GRACE_S:g} seconds, "
            "which keeps serve.shutdown() within its 30 s wait for the controller.")
    if grace_s and kind != KIND_ACTOR:
        raise ValueError("a placement group is removed at once: grace_s is for actors.")
    return float(grace_s)


def deadline_key(actor_id: str) -> str:
    """The key of an actor's running graceful exit: its deadline (Unix time, text)."""
    return DEADLINE_PREFIX + actor_id


def records_by_scope(counts: Iterable[tuple[str, int]]) -> dict[str, int]:
    """How many (actor, owner) pairs each scope holds, as ``status`` shows them (an actor
    without owners counts once, as ``serve``): summed from ``(scope, n)`` pairs, in
    ``SCOPES`` order, a scope that holds none left out."""
    totals = dict.fromkeys(SCOPES, 0)
    for scope, n in counts:
        totals[scope] = totals.get(scope, 0) + n
    return {scope: n for scope, n in totals.items() if n}


# --- values --------------------------------------------------------------------------------


def encode(record: Record, owner: Optional[Owner] = None) -> bytes:
    """The v2 value of ``record``'s pair of ``owner`` (default: its first pair)."""
    validate(record)
    if owner is None:
        owner, t = record.pairs[0]
    else:
        t = record.time_of(owner)
        if t is None:
            raise ValueError(f"record of {record.actor_id} has no owner {owner!r}")
    return msgpack.packb(
        {
            "v": SCHEMA_VERSION,
            "actor_id": record.actor_id,
            "kind": record.kind,
            "name": record.name,
            "namespace": record.namespace,
            "handle": record.handle,
            "scope": owner[0],
            "app": owner[1],
            "deployment": owner[2],
            "registered_at": float(t),
            **({"grace_s": float(record.grace_s)} if record.grace_s else {}),
        },
        use_bin_type=True,
    )


def encode_v1(record: Record) -> bytes:
    """0.1.0's value of a one-pair record (tests and the upgrade benchmark seed v1 with it)."""
    validate(record)
    if record.kind != KIND_ACTOR:
        raise ValueError("v1 records are actors only")
    owner, t = record.pairs[0]
    return msgpack.packb(
        {"v": 1, "actor_id": record.actor_id, "name": record.name, "namespace": record.namespace,
         "handle": record.handle, "scope": owner[0], "app": owner[1], "deployment": owner[2],
         "registered_at": float(t)},
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


def decode(data: bytes, *, slim: bool = False, shared: Optional[dict] = None) -> Record:
    """A v1 or v2 value to a one-pair Record. Raises only ``RecordDecodeError`` (or its
    subclass).

    ``slim``: leave the handle out (``b""``). ``shared``: a dict, kept across calls, through
    which equal strings and owners of different records become one object.
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
    kind = obj.get("kind") if version >= 2 else KIND_ACTOR
    if kind not in KINDS:
        raise RecordDecodeError(f"record has kind {obj.get('kind')!r}, which this serve_cleanup does not handle")
    grace = obj.get("grace_s", 0.0)
    if type(grace) not in (float, int) or not 0 <= grace <= MAX_GRACE_S:
        raise RecordDecodeError(f"record field 'grace_s' is {grace!r}: expected 0 to {MAX_GRACE_S:g} seconds")
    owner = (obj["scope"], obj["app"], obj["deployment"])
    namespace = obj["namespace"]
    if shared is not None:
        owner = shared.setdefault(owner, owner)
        namespace = shared.setdefault(namespace, namespace)
    record = tuple.__new__(Record, (
        obj["actor_id"], obj["name"], namespace, b"" if slim else obj["handle"],
        (owner, float(obj["registered_at"])), _KIND_OBJECTS[kind], float(grace) if grace else 0.0,
    ))
    validate(record)
    return record


def _valid_id(actor_id: str) -> bool:
    return bool(actor_id) and len(actor_id) <= _MAX_ID_HEX and not len(actor_id) % 2 and bool(_HEX_ID.fullmatch(actor_id))


def validate(record: Record) -> None:
    """The invariants every stored record keeps."""
    if not _valid_id(record.actor_id):
        raise RecordDecodeError(f"bad actor id {record.actor_id!r}: expected lower-case hex")
    if record.kind not in KINDS:
        raise RecordDecodeError(f"unknown kind {record.kind!r}")
    if not record.pairs:
        raise RecordDecodeError("record has no pair")
    for (scope, app, deployment), t in record.pairs:
        try:
            check_owner_shape(scope, app, deployment)
        except ValueError as e:
            raise RecordDecodeError(f"inconsistent owner: {e}") from None
        if not isinstance(t, float) or not math.isfinite(t):
            raise RecordDecodeError("registered_at is not a finite number")
        if abs(t) >= _MAX_MICROS / 1_000_000:
            raise RecordDecodeError(f"registered_at {t!r} is out of range (a Unix time before 2096)")
    if len(record.pairs) > 1 and SERVE_OWNER in (o for o, _ in record.pairs):
        raise RecordDecodeError("an actor with owners has no serve pair")
