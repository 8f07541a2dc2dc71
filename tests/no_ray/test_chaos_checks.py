"""The chaos harness's owner-set checks (``tests/chaos/owner_checks.py``) on synthetic
observations: each check passes on what a correct core leaves, and fails on what a
deliberately broken core would leave. No Ray (the harness itself needs a cluster)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from serve_cleanup.core import records

_PATH = Path(__file__).resolve().parents[1] / "chaos" / "owner_checks.py"
_spec = importlib.util.spec_from_file_location("chaos_owner_checks", _PATH)
oc = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = oc  # dataclasses look their module up
_spec.loader.exec_module(oc)

A = "5b2c8e1f0a9d4c7e6b3a21f0e8d7c6b5"
B = "0a9d4c7e6b3a21f0e8d7c6b55b2c8e1f"
A_CHAOS, D_CHAOS = ("app", "chaos", ""), ("deployment", "chaos", "Registrant")
A_OWNED, D_OWNED = ("app", "owned", ""), ("deployment", "owned", "Owned")
A_OWNED2 = ("app", "owned2", "")


def calls(*events) -> oc.Calls:
    """``(owner or None, returned?)`` per register call, in order."""
    c = oc.Calls()
    for owner, ok in events:
        c.note(owner, ok)
    return c


def keys_for(actor_id: str, *owners) -> set[bytes]:
    return {records.pair_key(actor_id, o, 1.0, "", "").encode() for o in owners}


def check(c: oc.Calls, state: str, key_set: set[bytes], gone_maybe=(), gone=(), self_killed=()):
    return oc.before_shutdown({A: c}, {A: state}, oc.key_owners(key_set, [A]),
                              set(gone_maybe), set(gone), self_killed)


def clean(v: oc.Verdict) -> bool:
    return not (v.wrongly_killed or v.orphans_alive or v.stale_records or v.owners_lost)


# --- what a correct core leaves passes --------------------------------------------------------


def test_a_correct_core_passes_every_stage_of_a_two_owner_actor():
    c = calls((A_OWNED, True), (A_OWNED2, True))
    # both owners deployed: alive, one key per owner
    assert clean(check(c, "ALIVE", keys_for(A, A_OWNED, A_OWNED2)))
    # "owned" deleted: alive on owned2's pair (owned's pair dropped or not yet)
    assert clean(check(c, "ALIVE", keys_for(A, A_OWNED2), {"owned"}, {"owned"}))
    assert clean(check(c, "ALIVE", keys_for(A, A_OWNED, A_OWNED2), {"owned"}, {"owned"}))
    # both deleted: dead, no key
    assert clean(check(c, "DEAD", set(), {"owned", "owned2"}, {"owned", "owned2"}))


def test_scope_serve_is_no_owner_and_a_serve_only_actor_waits_for_shutdown():
    assert clean(check(calls((None, True)), "ALIVE", keys_for(A, records.SERVE_OWNER), {"owned"}, {"owned"}))
    # serve, then an owner: it dies with that owner
    c = calls((None, True), (A_OWNED, True))
    assert clean(check(c, "DEAD", set(), {"owned"}, {"owned"}))


def test_a_failed_call_promises_nothing_either_way():
    c = calls((A_CHAOS, True), (A_OWNED, False))  # owned may or may not be an owner
    assert clean(check(c, "ALIVE", keys_for(A, A_CHAOS), {"owned"}, {"owned"}))
    c = calls((None, True), (A_OWNED, False))  # serve-only, or owned {owned}
    assert clean(check(c, "DEAD", set(), {"owned"}, {"owned"}))
    assert clean(check(c, "ALIVE", keys_for(A, records.SERVE_OWNER), {"owned"}, {"owned"}))
    # an actor no call of which returned is not checked at all
    assert clean(check(calls((A_OWNED, False)), "DEAD", set()))


def test_while_a_deletion_is_in_flight_the_actor_may_die_but_need_not():
    c = calls((A_OWNED, True), (D_OWNED, True))
    assert clean(check(c, "DEAD", set(), {"owned"}, set()))
    assert clean(check(c, "ALIVE", keys_for(A, A_OWNED, D_OWNED), {"owned"}, set()))


def test_after_shutdown_a_correct_core_leaves_nothing():
    cs = {A: calls((A_CHAOS, True), (D_CHAOS, True)), B: calls((None, True))}
    assert oc.after_shutdown(cs, {A: "DEAD", B: "DEAD"}, oc.key_owners(set(), [A, B])) == ([], [])


# --- what a broken core leaves fails ----------------------------------------------------------


def test_killed_when_its_first_owner_goes_is_wrongly_killed():
    """Broken core: kills an actor as soon as *any* owner is deleted (not the last)."""
    c = calls((A_OWNED, True), (A_OWNED2, True))
    assert check(c, "DEAD", set(), {"owned"}, {"owned"}).wrongly_killed == [A]


def test_last_register_wins_is_wrongly_killed_and_loses_owners():
    """Broken core: 0.1.0's rule, a second owner *moves* the registration."""
    c = calls((A_CHAOS, True), (A_OWNED, True))
    # before any deletion: chaos's pair is gone
    assert check(c, "ALIVE", keys_for(A, A_OWNED)).owners_lost == [A]
    # deleting "owned" kills it while app "chaos" still holds it
    assert check(c, "DEAD", set(), {"owned"}, {"owned"}).wrongly_killed == [A]


def test_a_dead_confirmed_owner_with_an_unconfirmed_one_is_still_wrongly_killed():
    c = calls((A_CHAOS, True), (A_OWNED, False))
    assert check(c, "DEAD", set(), {"owned"}, {"owned"}).wrongly_killed == [A]


def test_a_serve_only_actor_killed_by_an_app_deletion_is_wrongly_killed():
    assert check(calls((None, True)), "DEAD", set(), {"owned"}, {"owned"}).wrongly_killed == [A]


def test_an_actor_whose_owners_are_all_gone_and_still_alive_is_an_orphan():
    """Broken core: counts owners wrong (or drops the actor's whole record on the first
    deletion without killing it), so the last deletion kills nothing."""
    c = calls((A_OWNED, True), (A_OWNED2, True))
    v = check(c, "ALIVE", keys_for(A, A_OWNED2), {"owned", "owned2"}, {"owned", "owned2"})
    assert v.orphans_alive == [A]
    # the same core, caught one deletion earlier: owned2's pair went with owned's
    assert check(c, "ALIVE", set(), {"owned"}, {"owned"}).owners_lost == [A]


def test_scope_serve_resetting_the_owners_leaves_an_orphan():
    """Broken core: a later scope="serve" call (a router re-registering) wipes the owners."""
    c = calls((A_OWNED, True), (None, True))
    v = check(c, "ALIVE", keys_for(A, records.SERVE_OWNER), {"owned"}, {"owned"})
    assert v.orphans_alive == [A]


def test_a_killed_actor_whose_keys_stay_is_stale():
    c = calls((A_OWNED, True), (D_OWNED, True))
    assert check(c, "DEAD", keys_for(A, D_OWNED), {"owned"}, {"owned"}).stale_records == [A]
    # and an actor the driver killed itself
    v = check(calls((None, True)), "DEAD", keys_for(A, records.SERVE_OWNER), self_killed=[A])
    assert v.stale_records == [A] and not v.wrongly_killed


def test_after_shutdown_a_live_actor_leaks_and_any_key_under_its_prefix_is_left():
    cs = {A: calls((A_CHAOS, True), (A_OWNED2, True)), B: calls((None, True))}
    left = {records.record_key(B).encode()} | keys_for(A, A_OWNED2)  # a v1 key, a v2 key
    leaked, with_keys = oc.after_shutdown(cs, {A: "ALIVE", B: "DEAD"}, oc.key_owners(left, [A, B]))
    assert leaked == [A]
    assert with_keys == sorted([A, B])


@pytest.mark.parametrize("key", [
    records.record_key(A).encode(),                       # v1
    records.pair_key(A, A_OWNED, 1.0, "n", "ns").encode(),  # v2
    (records.actor_prefix(A) + "garbage").encode(),       # under the prefix, not parseable
])
def test_key_owners_sees_every_key_under_the_prefix_and_no_other_actors(key):
    other = records.pair_key(B, A_OWNED, 1.0, "", "").encode()
    found = oc.key_owners({key, other, b"serve-cleanup-actor-\xff\xfe"}, [A])
    assert len(found[A]) == 1
    assert oc.key_owners({other}, [A]) == {A: set()}
