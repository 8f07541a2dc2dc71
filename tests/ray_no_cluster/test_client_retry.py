"""The client's retry policy (``calls._attempts``) as a pure state machine: driven here
step by step with a fake clock and a fake controller lookup, no Ray, no waiting.

What these tests pin down is shared by the blocking and the awaitable calls, since both
drivers run the same generator.
"""

from __future__ import annotations

import asyncio
import warnings

import pytest
import ray

from serve_cleanup.client import calls
from serve_cleanup.errors import (
    ControllerUnavailableError,
    DeadActorError,
    NotDurableControllerError,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeMethod:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def remote(self, *args):
        self.calls.append(args)
        return f"ref{len(self.calls)}"


class FakeController:
    def __init__(self) -> None:
        self.calls: list = []

    def __getattr__(self, name):
        return FakeMethod(self.calls)


def make(timeout_s=10.0, controllers=None, kind="durable"):
    clock = FakeClock()
    ctrl = FakeController()
    seq = list(controllers) if controllers is not None else None

    def find():
        if seq is None:
            return ctrl
        return seq.pop(0) if seq else ctrl

    gen = calls._attempts(
        "serve_cleanup_register", ("a",), timeout_s, find=find, kind=lambda h: kind, clock=clock
    )
    return gen, clock, ctrl


def test_success_on_first_call_returns_the_value():
    gen, _, ctrl = make()
    action = next(gen)
    assert isinstance(action, calls._Await) and action.ref == "ref1" and action.timeout_s == 10.0
    with pytest.raises(StopIteration) as done:
        gen.send("record")
    assert done.value.value == "record"
    assert ctrl.calls == [("a",)]


@pytest.mark.parametrize(
    "error",
    [
        ray.exceptions.GetTimeoutError("slow"),
        asyncio.TimeoutError(),
        ray.exceptions.RayActorError(),
        ray.exceptions.ActorUnavailableError("restarting", b"\x00" * 16),
    ],
)
def test_dead_or_restarting_controller_is_retried_with_backoff(error):
    gen, clock, ctrl = make()
    next(gen)
    sleeps = []
    action = gen.throw(error)
    for _ in range(6):
        assert isinstance(action, calls._Sleep)
        sleeps.append(action.seconds)
        clock.now += action.seconds
        action = gen.send(None)
        assert isinstance(action, calls._Await)
        action = gen.throw(error)
    assert sleeps == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]  # capped exponential backoff
    assert len(ctrl.calls) == 7  # one call per attempt, each on a freshly looked-up handle


def test_waits_never_pass_the_deadline_and_then_it_gives_up():
    gen, clock, _ = make(timeout_s=1.0)
    action = next(gen)
    while True:
        if isinstance(action, calls._Await):
            assert clock.now + action.timeout_s <= 101.0 + 1e-9
            clock.now += min(action.timeout_s, 0.3)
            try:
                action = gen.throw(ray.exceptions.RayActorError())
            except ControllerUnavailableError as e:
                assert "within 1s" in str(e) and "RayActorError" in str(e)
                break
        else:
            assert clock.now + action.seconds <= 101.0 + 1e-9
            clock.now += action.seconds
            try:
                action = gen.send(None)
            except ControllerUnavailableError:
                break
    assert clock.now >= 101.0


def test_no_controller_is_looked_up_again_until_the_timeout():
    gen, clock, ctrl = make(timeout_s=0.5, controllers=[None, None])
    action = next(gen)
    assert isinstance(action, calls._Sleep)  # not running: wait, look again
    clock.now += action.seconds
    action = gen.send(None)
    assert isinstance(action, calls._Sleep)
    clock.now += action.seconds
    action = gen.send(None)
    assert isinstance(action, calls._Await)  # it came up
    clock.now += 1.0
    with pytest.raises(ControllerUnavailableError, match="not running|GetTimeoutError"):
        gen.throw(ray.exceptions.GetTimeoutError("slow"))


def test_plain_controller_is_refused_at_once():
    gen, _, ctrl = make(kind="plain")
    with pytest.raises(NotDurableControllerError, match="plain Ray Serve"):
        next(gen)
    assert ctrl.calls == []


def test_errors_raised_by_the_controller_reach_the_caller_as_their_own_class():
    gen, _, _ = make()
    next(gen)
    cause = DeadActorError("actor x is dead")
    task_error = ray.exceptions.RayTaskError("serve_cleanup_register", "tb", cause)
    with pytest.raises(DeadActorError, match="actor x is dead"):
        gen.throw(task_error)


def test_other_errors_are_not_retried():
    gen, _, ctrl = make()
    next(gen)
    with pytest.raises(KeyError):
        gen.throw(KeyError("boom"))
    assert len(ctrl.calls) == 1


def test_huge_finite_timeouts_are_split_into_bounded_waits():
    gen, _, _ = make(timeout_s=1e300)
    action = next(gen)
    assert action.timeout_s == calls._MAX_WAIT_S


async def test_blocking_call_on_a_running_loop_warns_once_with_the_fix(monkeypatch):
    monkeypatch.setattr(calls, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calls._warn_if_blocking_a_loop("register")
        calls._warn_if_blocking_a_loop("register")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert caught[0].category is RuntimeWarning
    assert "await serve_cleanup.register_async(...)" in message


def test_blocking_call_without_a_loop_does_not_warn(monkeypatch):
    monkeypatch.setattr(calls, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calls._warn_if_blocking_a_loop("register")
