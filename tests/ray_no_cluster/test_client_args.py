"""Argument checks that happen in the caller's process, before any RPC (no cluster)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_cleanup.serve_adapter import faults
from serve_cleanup.client import calls
from serve_cleanup.client.args import resolve_owner, unregister_args
from serve_cleanup.client.calls import collect_async, register, register_async, unregister_async


def test_serve_scope_takes_no_owner():
    assert resolve_owner("serve", None, None) == ("", "")
    with pytest.raises(ValueError, match="takes no app"):
        resolve_owner("serve", "app", None)


def test_explicit_owners_outside_a_replica():
    assert resolve_owner("app", "a", None) == ("a", "")
    assert resolve_owner("deployment", "a", "d") == ("a", "d")


@pytest.mark.parametrize(
    "scope, app, deployment, match",
    [
        ("app", None, None, "outside a Serve replica needs app="),
        ("deployment", None, None, "outside a Serve replica needs app="),
        ("deployment", "a", None, "needs deployment="),
        ("app", "a", "d", "takes no deployment"),
        ("cluster", None, None, "unknown scope"),
    ],
)
def test_incomplete_owners_are_value_errors(scope, app, deployment, match):
    with pytest.raises(ValueError, match=match):
        resolve_owner(scope, app, deployment)


@settings(max_examples=200, deadline=None)
@given(
    scope=st.one_of(st.sampled_from(["serve", "app", "deployment"]), st.text(max_size=12), st.integers()),
    app=st.one_of(st.none(), st.text(max_size=20)),
    deployment=st.one_of(st.none(), st.text(max_size=20)),
)
def test_resolve_owner_returns_a_consistent_owner_or_raises_value_error(scope, app, deployment):
    try:
        got_app, got_dep = resolve_owner(scope, app, deployment)
    except ValueError:
        return
    if scope == "serve":
        assert (got_app, got_dep) == ("", "")
    elif scope == "app":
        assert got_app == app and got_dep == ""
    else:
        assert (got_app, got_dep) == (app, deployment)


@pytest.mark.parametrize("timeout", [0, -1, "soon", None, True, float("inf"), float("-inf"), float("nan")])
def test_bad_timeouts_are_refused(timeout):
    with pytest.raises(ValueError, match="timeout_s must be a finite positive number"):
        calls._call_controller("serve_cleanup_status", timeout_s=timeout)


@pytest.mark.parametrize("timeout", [float("inf"), 0, "soon"])
async def test_bad_timeouts_are_refused_by_the_async_calls(timeout):
    with pytest.raises(ValueError, match="timeout_s must be a finite positive number"):
        await collect_async(timeout_s=timeout)
    with pytest.raises(ValueError, match="timeout_s must be a finite positive number"):
        await unregister_async("00ff", timeout_s=timeout)


async def test_async_calls_check_arguments_like_the_blocking_ones():
    for bad in (42, None, object()):
        with pytest.raises(TypeError, match="expected a Ray ActorHandle"):
            await register_async(bad)
        with pytest.raises(TypeError, match="expected a Ray ActorHandle"):
            register(bad)
        with pytest.raises(TypeError, match="expected a Ray ActorHandle, a PlacementGroup or an id"):
            await unregister_async(bad)


def test_crash_points_are_off_by_default_and_never_fatal(monkeypatch, caplog):
    monkeypatch.delenv("SERVE_CLEANUP_CRASH_POINTS", raising=False)
    assert not faults.CrashPoints()._points
    faults.CrashPoints().reached("after_record_write")  # no-op when off
    # They are read in the controller's constructor, which must never raise: an unknown
    # point is reported and ignored, the known ones still armed.
    monkeypatch.setenv("SERVE_CLEANUP_CRASH_POINTS", "after_record_write, nowhere")
    monkeypatch.setenv("SERVE_CLEANUP_CRASH_PROBABILITY", "often")
    points = faults.CrashPoints()
    assert "nowhere" in caplog.text
    assert points._points == {"after_record_write"}


def test_unregister_without_an_owner_sends_the_actor_id_alone():
    """The call shape every controller release takes (0.1.x's takes only this one)."""
    assert unregister_args("00FF") == (("00ff",), {})
    assert unregister_args("pg:00FF") == (("00ff",), {"kind": "pg"})


def test_unregister_with_an_owner_sends_it():
    assert unregister_args("00ff", "app", "a") == (("00ff", "app", "a", ""), {})
    assert unregister_args("00ff", "deployment", "a", "d") == (("00ff", "deployment", "a", "d"), {})


@pytest.mark.parametrize(
    "scope, app, deployment, error, match",
    [
        (None, "a", None, ValueError, "pass scope='app' or scope='deployment'"),
        (None, None, "d", ValueError, "pass scope='app' or scope='deployment'"),
        ("serve", None, None, ValueError, "scope='serve' is not an owner"),
        ("cluster", "a", None, ValueError, "unknown scope"),
        ("app", None, None, ValueError, "outside a Serve replica needs app="),
        ("app", "a", "d", ValueError, "takes no deployment"),
        ("deployment", "a", None, ValueError, "needs deployment="),
        ("app", 3, None, TypeError, "app must be a str"),
    ],
)
def test_unregister_owner_arguments_are_checked_in_the_caller(scope, app, deployment, error, match):
    with pytest.raises(error, match=match):
        unregister_args("00ff", scope, app, deployment)


async def test_blocking_and_async_unregister_send_the_same_call(monkeypatch):
    sent = []

    def blocking(method, *args, timeout_s, api=None, kwargs=None):
        sent.append((method, args, kwargs))
        return True

    async def awaitable(method, *args, timeout_s, kwargs=None):
        sent.append((method, args, kwargs))
        return True

    monkeypatch.setattr(calls, "_call_controller", blocking)
    monkeypatch.setattr(calls, "_call_controller_async", awaitable)
    assert calls.unregister("00ff", scope="deployment", app="a", deployment="d")
    assert await unregister_async("00ff", scope="deployment", app="a", deployment="d")
    assert calls.unregister("00ff") and await unregister_async("00ff")
    assert calls.unregister("pg:00ff") and await unregister_async("pg:00ff")
    assert sent == [("serve_cleanup_unregister", ("00ff", "deployment", "a", "d"), {})] * 2 + [
        ("serve_cleanup_unregister", ("00ff",), {})] * 2 + [
        ("serve_cleanup_unregister", ("00ff",), {"kind": "pg"})] * 2


def test_the_list_order_reads_the_pairs_directly():
    """``read_kv`` sorts records oldest first by their earliest pair, read without the
    ``registered_at`` property: the same order (one pair, several, a default record)."""
    from serve_cleanup.client.gcs import _oldest_first
    from serve_cleanup.core import records as rec

    app_a = (rec.SCOPE_APP, "A", "")
    for r in (rec.Record("ab" * 16, "n", "ns", pairs=((app_a, 5.0),)),
              rec.Record("cd" * 16, "", "", pairs=(((rec.SCOPE_APP, "B", ""), 7.0), (app_a, 3.0))),
              rec.Record("ef" * 16, "", "", registered_at=1.0)):
        assert _oldest_first(r) == (r.registered_at, r.actor_id)
