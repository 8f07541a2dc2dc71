"""The client and the durable controller across releases, with Ray imported but no
cluster (tests/no_ray/test_rolling_upgrade.py has the Ray-free half): what the client
sends, how a refusal by a 0.1.x controller reaches the caller, and that this release's
controller takes every call shape 0.1.0's client sends (7d42fd3's client/calls.py)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import pytest
import ray
from ray import cloudpickle

from serve_cleanup.client import calls
from serve_cleanup.core import records
from serve_cleanup.errors import ControllerVersionError
from serve_cleanup.serve_adapter.controller import ServeController



@dataclass(frozen=True, slots=True)
class V1Record:
    """0.1.0's Record (d119014's core/records.py), fields and decorator as they were."""

    actor_id: str
    name: str
    namespace: str
    handle: bytes = field(repr=False)
    scope: str = "serve"
    app: str = ""
    deployment: str = ""
    registered_at: float = 0.0


class _Method:
    def __init__(self, sent: list) -> None:
        self.sent = sent

    def remote(self, *args, **kwargs):
        self.sent.append((args, kwargs))
        return "ref"


class _Controller:
    def __init__(self) -> None:
        self.sent: list = []

    def __getattr__(self, name):
        return _Method(self.sent)


def _attempt(method, args, kwargs=None):
    ctrl = _Controller()
    gen = calls._attempts(method, args, 10.0, kwargs=kwargs, find=lambda: ctrl, kind=lambda h: "durable")
    next(gen)
    return gen, ctrl


@pytest.mark.parametrize("method, args, kwargs, refused", [
    ("serve_cleanup_register", ("h", "app", "a", ""), {"protocol": 2},
     "ServeController.serve_cleanup_register() got an unexpected keyword argument 'protocol'"),
    ("serve_cleanup_unregister", ("00ff", "app", "a", ""), None,
     "ServeController.serve_cleanup_unregister() takes 2 positional arguments but 5 were given"),
])
def test_a_refusal_by_a_0_1_controller_reaches_the_caller_as_one_line(method, args, kwargs, refused):
    gen, ctrl = _attempt(method, args, kwargs)
    assert ctrl.sent == [(args, kwargs or {})]
    task_error = ray.exceptions.RayTaskError(method, "Traceback ...\nTypeError: " + refused, TypeError(refused))
    with pytest.raises(ControllerVersionError, match=r"needs serve_cleanup 0\.2\.0 or later") as raised:
        gen.throw(task_error)
    assert "\n" not in str(raised.value)


def test_register_sends_the_new_call_shape(monkeypatch):
    sent = []
    monkeypatch.setattr(calls, "register_args", lambda *a: ("h", "app", "a", ""))
    monkeypatch.setattr(calls, "_call_controller",
                        lambda method, *args, timeout_s, api=None, kwargs=None: sent.append((method, args, kwargs)))
    calls.register(object(), scope="app", app="a")
    assert sent == [("serve_cleanup_register", ("h", "app", "a", ""), {"protocol": 2})]


@pytest.mark.parametrize("method, args", [
    # 0.1.0's client (7d42fd3): register_args -> (actor, scope, app, deployment)
    ("serve_cleanup_register", ("h", "serve", "", "")),
    ("serve_cleanup_register", ("h", "deployment", "a", "d")),
    ("serve_cleanup_unregister", ("00ff",)),
    ("serve_cleanup_gc", (True,)),
    ("serve_cleanup_status", ()),
    # Serve's routers and 0.1.x alike
    ("_register_shutdown_cleanup_actor", ("h",)),
])
def test_this_controller_takes_every_call_shape_of_0_1_0s_client(method, args):
    bound = inspect.signature(getattr(ServeController, method)).bind(object(), *args)
    assert bound.arguments.get("protocol", 1) == 1


def test_the_v1_reply_crosses_rays_serializer_as_0_1s_record(monkeypatch):
    record = records.Record("00ff", "", "", b"h", "app", "a", "", 3.5)
    data = cloudpickle.dumps(records.V1Reply(record, ("app", "a", "")), protocol=5)
    monkeypatch.setattr(records, "Record", V1Record)
    assert cloudpickle.loads(data) == V1Record("00ff", "", "", b"h", "app", "a", "", 3.5)


def test_a_refusal_by_rays_signature_check_in_remote_is_mapped():
    class Refusing:
        def __getattr__(self, name):
            class M:
                def remote(self, *args, **kwargs):
                    raise TypeError("too many positional arguments")
            return M()

    gen = calls._attempts("serve_cleanup_unregister", ("00ff", "app", "a", ""), 10.0,
                          find=lambda: Refusing(), kind=lambda h: "durable")
    with pytest.raises(ControllerVersionError):
        next(gen)
