"""Unit tests for the msgpack record codec (serve_cleanup.records). No Ray cluster."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakes import replace_record
from serve_cleanup.core import records as rec
from serve_cleanup.errors import RecordDecodeError, ServeCleanupError, UnknownSchemaVersionError
from serve_cleanup.core.records import Record

# --- fixtures ---------------------------------------------------------------------------

# Bytes written by the v1 encoder, pasted as literals (generated once with
# ``records.encode``). They pin what v1 bytes mean: a change to the encoder or decoder
# that reads them differently must fail here, not silently reinterpret stored records.
V1_RECORD = (
    b"\x89\xa1v\x01\xa8actor_id\xd9 5b2c8e1f0a9d4c7e6b3a21f0e8d7c6b5\xa4name\xafmetrics-sidecar"
    b"\xa9namespace\xa4prod\xa6handle\xc4\x0e\x00\x01ray-handle\xff\xfe\xa5scope\xaadeployment"
    b"\xa3app\xa4shop\xaadeployment\xa8Checkout\xadregistered_at\xcbA\xd9\x8ad  \x00\x00"
)
V1_RECORD_EXPECTED = Record(
    actor_id="5b2c8e1f0a9d4c7e6b3a21f0e8d7c6b5",
    name="metrics-sidecar",
    namespace="prod",
    handle=b"\x00\x01ray-handle\xff\xfe",
    scope="deployment",
    app="shop",
    deployment="Checkout",
    registered_at=1714000000.5,
)

V1_ANON_RECORD = (
    b"\x89\xa1v\x01\xa8actor_id\xd9 0123456789abcdef0123456789abcdef\xa4name\xa0\xa9namespace"
    b"\xa0\xa6handle\xc4\x06\x80\x05anon\xa5scope\xa5serve\xa3app\xa0\xaadeployment\xa0"
    b"\xadregistered_at\xcbA\xd9\x8ad P\x00\x00"
)
V1_ANON_RECORD_EXPECTED = Record(
    actor_id="0123456789abcdef0123456789abcdef",
    name="",
    namespace="",
    handle=b"\x80\x05anon",
    scope="serve",
    app="",
    deployment="",
    registered_at=1714000001.25,
)

AID = "5b2c8e1f0a9d4c7e6b3a21f0e8d7c6b5"


def valid_map(**overrides: Any) -> dict[str, Any]:
    """A raw v1 map that decodes; ``overrides`` replace (or, with value DELETE, drop) fields."""
    m: dict[str, Any] = {
        "v": 1,
        "actor_id": AID,
        "name": "worker",
        "namespace": "ns",
        "handle": b"\x01\x02\x03",
        "scope": "app",
        "app": "shop",
        "deployment": "",
        "registered_at": 1714000000.5,
    }
    for k, v in overrides.items():
        if v is DELETE:
            m.pop(k, None)
        else:
            m[k] = v
    return m


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def assert_plain_decode_error(data: Any) -> RecordDecodeError:
    """decode(data) raises RecordDecodeError itself: not another type, not the subclass."""
    with pytest.raises(Exception) as info:
        rec.decode(data)
    assert type(info.value) is RecordDecodeError, repr(info.value)
    assert str(info.value)  # every error says what happened
    return info.value


def make_record(scope: str, *, named: bool = True, **kw: Any) -> Record:
    app = {"serve": "", "app": "shop", "deployment": "shop", "job": "02000000"}[scope]
    deployment = "Checkout" if scope == "deployment" else ""
    base: dict[str, Any] = dict(
        actor_id=AID,
        name="worker" if named else "",
        namespace="team-ns" if named else "",
        handle=b"\x00handle\xff",
        scope=scope,
        app=app,
        deployment=deployment,
        registered_at=1714000123.75,
    )
    base.update(kw)
    return Record(**base)


# --- error hierarchy -----------------------------------------------------------------------


def test_error_hierarchy():
    assert issubclass(UnknownSchemaVersionError, RecordDecodeError)
    assert issubclass(RecordDecodeError, ServeCleanupError)
    assert issubclass(RecordDecodeError, ValueError)


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("scope", rec.SCOPES)
@pytest.mark.parametrize("named", [True, False], ids=["named", "anonymous"])
def test_round_trip_every_scope(scope, named):
    record = make_record(scope, named=named)
    data = rec.encode(record)
    assert isinstance(data, bytes)
    decoded = rec.decode(data)
    assert decoded == record
    assert decoded.handle == record.handle  # handle is repr=False but still compared
    assert type(decoded.registered_at) is float


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_decode_accepts_bytes_like(kind):
    assert rec.decode(kind(V1_RECORD)) == V1_RECORD_EXPECTED


def test_encode_writes_the_documented_v2_map():
    record = make_record("deployment")
    obj = msgpack.unpackb(rec.encode(record), raw=False)
    assert obj == {
        "v": rec.SCHEMA_VERSION,
        "kind": "actor",
        "actor_id": AID,
        "name": "worker",
        "namespace": "team-ns",
        "handle": b"\x00handle\xff",
        "scope": "deployment",
        "app": "shop",
        "deployment": "Checkout",
        "registered_at": 1714000123.75,
    }
    assert rec.SCHEMA_VERSION == 2
    assert isinstance(obj["handle"], bytes)  # bin type, not str


def test_integer_registered_at_decodes_to_float():
    record = rec.decode(pack(valid_map(registered_at=1714000000)))
    assert record.registered_at == 1714000000.0
    assert type(record.registered_at) is float


def test_extra_fields_are_ignored_within_a_version():
    record = rec.decode(pack(valid_map(future_field=[1, 2, 3])))
    assert record.actor_id == AID and record.scope == "app"


def test_key_helpers():
    assert rec.record_key(AID) == "serve-cleanup-actor-" + AID  # v1
    assert make_record("serve").key == (
        f"serve-cleanup-actor-{AID}/2/actor/serve///1714000123750000/worker/team-ns")
    assert make_record("deployment", named=False).key == (
        f"serve-cleanup-actor-{AID}/2/actor/deployment/shop/Checkout/1714000123750000//")
    assert make_record("serve").key.startswith(rec.actor_prefix(AID))
    assert rec.bucket_of(rec.record_key(AID).encode()) == ("serve-cleanup-actor-" + AID[:2]).encode()


@pytest.mark.parametrize("typed, expected", [(AID, AID), (" " + AID.upper() + "\n", AID)])
def test_actor_ids_are_normalised_in_one_place(typed, expected):
    assert rec.normalize_actor_id(typed) == expected


@pytest.mark.parametrize("typed", ["", "xyz", "abc", "a" * 300, "ab cd"])
def test_what_is_not_an_actor_id_is_refused_with_a_message(typed):
    with pytest.raises(ValueError, match="not an actor id"):
        rec.normalize_actor_id(typed)


def test_records_by_scope_sums_per_scope_in_scope_order_and_leaves_out_empty_scopes():
    # One pair per record (the CLI, from the KV) or per owner with its count (the registry).
    per_record = [("deployment", 1), ("app", 1), ("deployment", 1)]
    assert list(rec.records_by_scope(per_record).items()) == [("app", 1), ("deployment", 2)]
    assert rec.records_by_scope({"serve": 0, "app": 3, "deployment": 0}.items()) == {"app": 3}
    assert rec.records_by_scope([]) == {}


def test_slim_decode_drops_the_handle_and_shares_strings():
    shared: dict = {}
    a = rec.decode(rec.encode(make_record("deployment")), slim=True, shared=shared)
    b = rec.decode(rec.encode(make_record("deployment")), slim=True, shared=shared)
    assert a.handle == b"" and a == replace_record(make_record("deployment"), handle=b"")
    assert a.app is b.app and a.namespace is b.namespace


def test_display_name_and_to_dict():
    named = make_record("app")
    anon = make_record("serve", named=False)
    assert named.display_name == "team-ns/worker"
    assert anon.display_name == f"<anonymous {AID[:12]}>"
    d = named.to_dict()
    assert "handle" not in d
    assert d["actor_id"] == AID and d["app"] == "shop"


# --- v1 bytes fixture --------------------------------------------------------------------


def test_v1_literal_bytes_decode_to_expected_record():
    assert rec.decode(V1_RECORD) == V1_RECORD_EXPECTED


def test_v1_literal_anonymous_bytes_decode_to_expected_record():
    assert rec.decode(V1_ANON_RECORD) == V1_ANON_RECORD_EXPECTED


@pytest.mark.parametrize(
    "literal, expected",
    [(V1_RECORD, V1_RECORD_EXPECTED), (V1_ANON_RECORD, V1_ANON_RECORD_EXPECTED)],
    ids=["named", "anonymous"],
)
def test_the_v1_encoder_still_writes_the_v1_map(literal, expected):
    # Field order may change; the map content of a v1 record must not (a new field
    # means a new schema version).
    assert msgpack.unpackb(rec.encode_v1(expected), raw=False) == msgpack.unpackb(literal, raw=False)


# --- rejections --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"\xff" * 16,
        b"not msgpack at all, just text",
        V1_RECORD[:-1],  # truncated
        V1_RECORD[:10],
        V1_RECORD + b"\x00",  # trailing data
        b"\x89",  # map header with no entries
        b"\xdf\xff\xff\xff\xff",  # map32 claiming 4G entries
        b"\x81\xc0\x01",  # map with nil key (strict_map_key)
        b"\x81\x01\x01",  # map with int key (strict_map_key)
        b"\x81\xa1v\xa2\xff\xfe",  # invalid UTF-8 in a str
    ],
)
def test_decode_rejects_garbage_bytes(data):
    assert_plain_decode_error(data)


@pytest.mark.parametrize("data", ["a string", None, 12, [V1_RECORD], {"v": 1}])
def test_decode_rejects_non_bytes_input(data):
    assert_plain_decode_error(data)


@pytest.mark.parametrize(
    "obj",
    [
        None,
        1,
        1.5,
        True,
        "v1",
        b"\x89\xa1v\x01",
        [],
        list(valid_map().values()),
        list(valid_map().items()),
    ],
    ids=repr,
)
def test_decode_rejects_non_map_msgpack(obj):
    err = assert_plain_decode_error(pack(obj))
    assert "map" in str(err)


def test_decode_rejects_msgpack_ext_type():
    assert_plain_decode_error(pack(msgpack.ExtType(5, V1_RECORD)))


def test_decode_rejects_map_with_bytes_keys():
    m = {k.encode(): v for k, v in valid_map().items()}
    assert_plain_decode_error(pack(m))


@pytest.mark.parametrize("field", sorted(valid_map().keys() - {"v"}))
def test_decode_rejects_missing_field(field):
    err = assert_plain_decode_error(pack(valid_map(**{field: DELETE})))
    assert field in str(err)


@pytest.mark.parametrize("field", sorted(valid_map().keys() - {"v"}))
def test_decode_rejects_nil_field(field):
    assert_plain_decode_error(pack(valid_map(**{field: None})))


@pytest.mark.parametrize(
    "field, value",
    [
        ("actor_id", AID.encode()),  # bytes where str expected
        ("actor_id", 12345),
        ("actor_id", [AID]),
        ("name", 1),
        ("name", b"worker"),
        ("name", True),
        ("namespace", 0.5),
        ("namespace", {"a": 1}),
        ("handle", "not bytes"),
        ("handle", 7),
        ("handle", [1, 2]),
        ("scope", b"serve"),
        ("scope", 0),
        ("app", False),
        ("deployment", 1.0),
        ("registered_at", "1714000000.5"),
        ("registered_at", True),  # bool where float/int expected
        ("registered_at", False),
        ("registered_at", b"\x00"),
        ("registered_at", [1.0]),
        ("registered_at", {"t": 1.0}),
    ],
    ids=repr,
)
def test_decode_rejects_wrong_field_type(field, value):
    err = assert_plain_decode_error(pack(valid_map(**{field: value})))
    assert field in str(err)


@pytest.mark.parametrize(
    "actor_id",
    [
        "",
        "abc",  # odd length
        AID[:-1],  # odd length, 31
        "zz" * 16,  # non-hex
        AID[:-2] + "g0",
        "0x" + AID[:-2],
        AID.upper(),  # upper case
        AID[:-1] + "B",
        "é" * 32,  # non-ASCII
        "٠" * 32,  # non-ASCII digits
        "ab" * 129,  # longer than 256 hex chars
    ],
    ids=repr,
)
def test_decode_rejects_bad_actor_id(actor_id):
    err = assert_plain_decode_error(pack(valid_map(actor_id=actor_id)))
    assert "actor id" in str(err)


@pytest.mark.parametrize("actor_id", ["ab", "ab" * 128, AID])
def test_decode_accepts_any_even_length_lower_hex_id(actor_id):
    assert rec.decode(pack(valid_map(actor_id=actor_id))).actor_id == actor_id


@pytest.mark.parametrize(
    "actor_id",
    ["  ab", "ab\n\ncd", AID[:16] + "  " + AID[16:], AID + "\t\t", " " * 32],
    ids=repr,
)
def test_decode_rejects_actor_id_with_whitespace(actor_id):
    assert_plain_decode_error(pack(valid_map(actor_id=actor_id)))


@pytest.mark.parametrize("scope", ["", "global", "Serve", "APP", "deployments", "serve "])
def test_decode_rejects_unknown_scope(scope):
    err = assert_plain_decode_error(pack(valid_map(scope=scope, app="", deployment="")))
    assert "scope" in str(err)


@pytest.mark.parametrize(
    "scope, app, deployment",
    [
        ("serve", "shop", ""),
        ("serve", "", "Checkout"),
        ("serve", "shop", "Checkout"),
        ("app", "", ""),
        ("app", "shop", "Checkout"),
        ("app", "", "Checkout"),
        ("deployment", "", ""),
        ("deployment", "shop", ""),
        ("deployment", "", "Checkout"),
    ],
)
def test_decode_rejects_scope_owner_inconsistency(scope, app, deployment):
    assert_plain_decode_error(pack(valid_map(scope=scope, app=app, deployment=deployment)))


@pytest.mark.parametrize(
    "scope, app, deployment",
    [("serve", "", ""), ("app", "shop", ""), ("deployment", "shop", "Checkout")],
)
def test_decode_accepts_consistent_scope_owner(scope, app, deployment):
    r = rec.decode(pack(valid_map(scope=scope, app=app, deployment=deployment)))
    assert (r.scope, r.app, r.deployment) == (scope, app, deployment)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_decode_rejects_non_finite_registered_at(value):
    err = assert_plain_decode_error(pack(valid_map(registered_at=value)))
    assert "finite" in str(err)


@pytest.mark.parametrize(
    "record",
    [
        make_record("serve", actor_id="XYZ"),
        replace_record(make_record("serve"), scope="global"),
        make_record("serve", app="shop"),
        make_record("app", registered_at=math.nan),
    ],
)
def test_encode_refuses_invalid_record(record):
    with pytest.raises(RecordDecodeError):
        rec.encode(record)


# --- schema versions ---------------------------------------------------------------------


@pytest.mark.parametrize("version", [3, 999, 2**31, 2**63 - 1, 2**64 - 1])
def test_future_schema_version_raises_unknown_schema_version(version):
    with pytest.raises(UnknownSchemaVersionError) as info:
        rec.decode(pack(valid_map(v=version)))
    msg = str(info.value)
    assert str(version) in msg
    assert "upgrade" in msg.lower()
    assert isinstance(info.value, RecordDecodeError)


def test_future_schema_version_checked_before_fields():
    # A newer writer may have changed every field; the reader must say "upgrade",
    # not "field missing".
    with pytest.raises(UnknownSchemaVersionError):
        rec.decode(pack({"v": 3, "something": "else"}))


@pytest.mark.parametrize(
    "version",
    [0, -1, -(2**63), DELETE, None, "1", b"\x01", 1.0, True, False, [1]],
    ids=repr,
)
def test_invalid_schema_version_raises_plain_decode_error(version):
    err = assert_plain_decode_error(pack(valid_map(v=version)))
    assert "version" in str(err)


# --- property tests ----------------------------------------------------------------------

PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

hex_ids = st.binary(min_size=16, max_size=16).map(bytes.hex)

_utf8_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
_long_text = st.builds(
    lambda chunk, n: chunk * n,
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=4),
    st.integers(min_value=200, max_value=3000),
)
texts = st.one_of(_utf8_text, _long_text)
non_empty_texts = texts.filter(bool)

scopes = st.one_of(
    st.just(("serve", "", "")),
    st.tuples(st.just("app"), non_empty_texts, st.just("")),
    st.tuples(st.just("deployment"), non_empty_texts, non_empty_texts),
)


@st.composite
def records(draw) -> Record:
    scope, app, deployment = draw(scopes)
    name = draw(st.one_of(st.just(""), texts))
    namespace = draw(texts) if name else ""
    return Record(
        actor_id=draw(hex_ids),
        name=name,
        namespace=namespace,
        handle=draw(st.binary(max_size=512)),
        scope=scope,
        app=app,
        deployment=deployment,
        registered_at=draw(st.floats(min_value=-3.99e9, max_value=3.99e9)),  # the keys' range
    )


@PROPERTY_SETTINGS
@given(records())
def test_property_round_trip(record):
    decoded = rec.decode(rec.encode(record))
    assert decoded == record
    assert decoded.handle == record.handle
    assert decoded.key == record.key


def _check_only_decode_error(data: Any) -> None:
    try:
        result = rec.decode(data)
    except RecordDecodeError:
        return
    except Exception as e:  # pragma: no cover - reported by hypothesis
        raise AssertionError(f"decode raised {type(e).__name__}: {e!r}") from e
    # Whatever decodes is a valid record that survives a round trip.
    assert isinstance(result, Record)
    assert rec.decode(rec.encode(result)) == result


def _mutations_of_v1():
    return st.one_of(
        # truncate
        st.integers(0, len(V1_RECORD)).map(lambda n: V1_RECORD[:n]),
        # overwrite one byte
        st.tuples(st.integers(0, len(V1_RECORD) - 1), st.integers(0, 255)).map(
            lambda t: V1_RECORD[: t[0]] + bytes([t[1]]) + V1_RECORD[t[0] + 1 :]
        ),
        # append junk
        st.binary(min_size=1, max_size=8).map(lambda b: V1_RECORD + b),
    )


@PROPERTY_SETTINGS
@given(st.one_of(st.binary(max_size=256), _mutations_of_v1()))
def test_property_decode_arbitrary_bytes_raises_only_decode_error(data):
    _check_only_decode_error(data)


_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=20),
)
_keys = st.one_of(st.text(max_size=15), st.binary(max_size=8), st.sampled_from(list(valid_map())))
msgpack_values = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(_keys, children, max_size=4),
    ),
    max_leaves=20,
)
# Values likely to get past the early checks, so the decoder's later branches run too.
_plausible = st.one_of(
    hex_ids,
    st.sampled_from(["", "serve", "app", "deployment", AID.upper(), "abc"]),
    st.integers(min_value=-2, max_value=3),
    st.floats(),
    st.binary(max_size=8),
)
arbitrary_maps = st.dictionaries(_keys, msgpack_values, max_size=12)
# A valid map with some fields replaced by (or dropped for) arbitrary values.
perturbed_maps = st.builds(
    lambda repl, drop: {
        k: v for k, v in {**valid_map(), **repl}.items() if k not in drop
    },
    st.dictionaries(
        st.sampled_from(list(valid_map())), st.one_of(msgpack_values, _plausible), max_size=4
    ),
    st.sets(st.sampled_from(list(valid_map())), max_size=2),
)


@PROPERTY_SETTINGS
@given(st.one_of(arbitrary_maps, perturbed_maps))
def test_property_decode_arbitrary_maps_raises_only_decode_error(obj):
    _check_only_decode_error(pack(obj))


@PROPERTY_SETTINGS
@given(msgpack_values)
def test_property_decode_arbitrary_msgpack_values_raises_only_decode_error(obj):
    _check_only_decode_error(pack(obj))
