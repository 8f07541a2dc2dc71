"""A rolling upgrade mixes releases (client/protocol.py): a 0.2.0 client and a 0.1.x
controller refuse each other's new calls in one line and before any side effect; a 0.2.0
controller answers 0.1.x's register with a record 0.1.x's client can read. No Ray: the
0.1.x side is its method signatures and its ``Record``, copied from 0.1.0 (7d42fd3)."""

from __future__ import annotations

import asyncio
import pickle
from dataclasses import dataclass, field
from typing import Any

import pytest

from serve_cleanup.client.protocol import NEEDED_RELEASE, PROTOCOL, older_controller
from serve_cleanup.core import records
from serve_cleanup.errors import ControllerVersionError

SCOPE_SERVE = "serve"


class ServeController:
    """0.1.0's durable controller's remote methods (signatures as in 7d42fd3's
    src/serve_cleanup/controller.py); each body notes that it ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    async def serve_cleanup_register(
        self, actor: Any, scope: str = SCOPE_SERVE, app: str = "", deployment: str = "",
        ensure_only: bool = False,
    ) -> Any:
        self.ran.append("register")

    async def serve_cleanup_unregister(self, actor_id: str) -> bool:
        self.ran.append("unregister")
        return True


@dataclass(frozen=True, slots=True)
class Record:
    """0.1.0's Record (d119014's core/records.py), fields and decorator as they were."""

    actor_id: str
    name: str
    namespace: str
    handle: bytes = field(repr=False)
    scope: str = SCOPE_SERVE
    app: str = ""
    deployment: str = ""
    registered_at: float = 0.0


def refusal(method: str, *args: Any, **kwargs: Any) -> TypeError:
    """What the 0.1.x controller raises for this call, and that its body never ran."""
    old = ServeController()
    with pytest.raises(TypeError) as refused:
        asyncio.run(getattr(old, method)(*args, **kwargs))
    assert old.ran == []
    return refused.value


@pytest.mark.parametrize("method, args, kwargs", [
    # what 0.2.0's register sends (register_args, then protocol=2)
    ("serve_cleanup_register", ("handle", "app", "a", ""), {"protocol": PROTOCOL}),
    ("serve_cleanup_register", ("handle", "serve", "", ""), {"protocol": PROTOCOL}),
    # what 0.2.0's unregister sends with an owner (unregister_args)
    ("serve_cleanup_unregister", ("00ff", "app", "a", ""), {}),
    ("serve_cleanup_unregister", ("00ff", "deployment", "a", "d"), {}),
])
def test_a_0_1_controller_refuses_the_new_calls_and_the_client_says_which_release_is_needed(method, args, kwargs):
    error = older_controller(method, refusal(method, *args, **kwargs))
    assert isinstance(error, ControllerVersionError)
    message = str(error)
    assert NEEDED_RELEASE == "0.2.0" and f"serve_cleanup {NEEDED_RELEASE} or later" in message
    assert "\n" not in message and "before doing anything" in message


def test_the_calls_0_1_also_knows_still_reach_a_0_1_controller():
    """unregister without an owner sends the actor id alone: 0.1.x runs it."""
    old = ServeController()
    assert asyncio.run(old.serve_cleanup_unregister("00ff")) is True and old.ran == ["unregister"]


@pytest.mark.parametrize("method, error", [
    ("serve_cleanup_register", ValueError("scope='app' needs app=...")),
    ("serve_cleanup_register", TypeError("expected a Ray ActorHandle, got int")),
    ("serve_cleanup_gc", TypeError("ServeController.serve_cleanup_gc() takes 2 positional arguments but 3 were given")),
    ("serve_cleanup_unregister", KeyError("serve_cleanup_unregister() positional argument")),
])
def test_other_errors_are_left_as_they_are(method, error):
    assert older_controller(method, error) is None


def test_a_0_1_client_reads_the_0_2_controllers_answer_to_register(monkeypatch):
    """0.1.x's client unpickles the answer into its own Record, found by name."""
    record = records.Record("00ff", "router", "prod", b"h", pairs=(
        (("app", "a", ""), 10.5), (("deployment", "b", "d"), 12.25)))
    data = pickle.dumps(records.V1Reply(record, ("deployment", "b", "d")), protocol=5)
    monkeypatch.setattr(records, "Record", Record)  # what the name resolves to in 0.1.x
    got = pickle.loads(data)
    assert got == Record("00ff", "router", "prod", b"h", "deployment", "b", "d", 12.25)
    # an owner the record does not have (scope serve on an actor with owners): its first
    first = pickle.loads(pickle.dumps(records.V1Reply(record, ("serve", "", "")), protocol=5))
    assert (first.scope, first.app, first.registered_at) == ("app", "a", 10.5)


def test_the_0_2_record_is_not_readable_by_0_1_and_the_reverse(monkeypatch):
    """Why the call shapes differ: without V1Reply a 0.1.x client would get a Record with
    no fields, and a 0.2.0 client cannot unpickle a 0.1.x record at all."""
    data = pickle.dumps(records.Record("00ff", "", "", b"h"), protocol=5)
    real = records.Record
    with monkeypatch.context() as m:  # the 0.1.x process
        m.setattr(records, "Record", Record)
        m.setattr(Record, "__module__", records.__name__)
        broken = pickle.loads(data)
        assert type(broken) is Record
        with pytest.raises(AttributeError):
            broken.actor_id
        old_data = pickle.dumps(Record("00ff", "", "", b"h"), protocol=5)
    assert records.Record is real  # the 0.2.0 process
    with pytest.raises(TypeError, match="missing 3 required positional arguments"):
        pickle.loads(old_data)


@pytest.mark.parametrize("message", ["too many positional arguments",
                                     "got an unexpected keyword argument 'protocol'"])
def test_a_refusal_by_rays_own_signature_check_is_mapped_too(message):
    """inspect's messages, as Ray's signature check re-raises them (no method named)."""
    assert isinstance(older_controller("serve_cleanup_register", TypeError(message), raised_by_ray=True),
                      ControllerVersionError)
    assert older_controller("serve_cleanup_register", TypeError(message)) is None
    assert older_controller("serve_cleanup_gc", TypeError(message), raised_by_ray=True) is None


def test_a_0_3_call_refused_by_a_0_2_controller_names_0_3_0():
    """grace_s (and an unregister's kind) are sent only when needed; a 0.2.0 controller
    refuses them as an unexpected keyword argument, and the error names 0.3.0."""
    from serve_cleanup.client.protocol import needed_release, older_controller

    assert needed_release({"protocol": 2}) == "0.2.0"
    assert needed_release({"protocol": 2, "grace_s": 5.0}) == needed_release({"kind": "pg"}) == "0.3.0"
    error = TypeError("ServeController.serve_cleanup_register() got an unexpected keyword argument 'grace_s'")
    refused = older_controller("serve_cleanup_register", error, needed="0.3.0")
    assert refused is not None and "needs serve_cleanup 0.3.0 or later" in str(refused)
    assert "0.1.x" not in str(refused)
