"""Serve started with the durable controller by its caller, without the switch:
``serve_cleanup.start()`` and ``serve-cleanup start`` on the session's cluster. (Serve
started by Ray's own paths with the switch on: tests/own_cluster/test_start_by_the_switch.py.)

* ``start()`` is idempotent, ``serve.run`` uses the controller it started, and it refuses
  to mix with plain Serve (as does ``register``);
* it tells the truth: never "durable" when a plain controller won a race, a controller
  that is shutting down is waited out, options Serve ignores are warned about;
* the CLI takes what ``serve start`` takes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import ray
from ray import serve

import serve_cleanup
from ray_helpers import DEPLOYMENT, controller_handle, controller_status, run_cli
from serve_cleanup.client.controller import controller_kind
from serve_cleanup.client.start import SHUTDOWN_WAIT_S, shutting_down, start_durable

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


@serve.deployment(**DEPLOYMENT)
class Hello:
    def __call__(self) -> str:
        return "hello"


@serve.deployment(ray_actor_options={"num_cpus": 0}, graceful_shutdown_timeout_s=20)
class SlowToStop:
    def __call__(self) -> str:
        return "ok"

    def __del__(self) -> None:
        time.sleep(4)  # Serve waits for this at shutdown: a shutdown that takes a while


# --- idempotent, and never mixed with plain Serve -----------------------------------------


@pytest.mark.smoke
def test_start_is_idempotent_and_serve_run_uses_it(durable_serve):
    pid = controller_status()["pid"]
    serve_cleanup.start()
    assert controller_status()["pid"] == pid
    handle = serve.run(Hello.bind(), name="hello", route_prefix=None)
    assert handle.remote().result() == "hello"
    assert controller_kind() == "durable"
    assert controller_status()["pid"] == pid


@pytest.mark.smoke
def test_start_refuses_when_plain_serve_runs(plain_serve):
    with pytest.raises(serve_cleanup.NotDurableControllerError, match="serve.shutdown"):
        serve_cleanup.start()
    assert controller_kind() == "plain"


def test_register_refuses_plain_serve(plain_serve, actors):
    with pytest.raises(serve_cleanup.NotDurableControllerError):
        serve_cleanup.register(actors())


@pytest.mark.smoke
def test_cli_start_against_running_cluster(no_serve):
    out = run_cli("start")
    assert out.returncode == 0, out.stderr
    assert "Started Serve with the durable controller" in out.stdout
    assert controller_kind() == "durable"
    again = run_cli("start", "--address", ray.get_runtime_context().gcs_address)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    serve.shutdown()


def test_cli_start_refuses_plain_serve(plain_serve):
    out = run_cli("start")
    assert out.returncode == 1
    assert "plain Ray Serve controller" in out.stderr


# --- it tells the truth ---------------------------------------------------------------------


def test_plain_controller_created_in_between_is_not_reported_durable(no_serve, monkeypatch):
    """The interleaving: start() looked and saw no controller; before it created one, a
    plain one appeared (serve deploy through the dashboard does this). serve.start() then
    connects to that one; start() must raise, not return."""
    serve.start()  # the plain controller that "won"
    real = controller_kind
    calls = {"n": 0}

    def first_look_sees_nothing(handle=None):
        if handle is None:
            calls["n"] += 1
            if calls["n"] == 1:
                return "none"
        return real(handle)

    monkeypatch.setattr("serve_cleanup.client.start.controller_kind", first_look_sees_nothing)
    with pytest.raises(serve_cleanup.NotDurableControllerError, match="another process"):
        serve_cleanup.start()
    monkeypatch.undo()
    assert controller_kind() == "plain"


def test_racing_a_plain_serve_start(no_serve):
    """A real race with `serve start` (plain) in another process: whichever wins,
    start() returns only with the durable controller running and raises otherwise."""
    racer = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "serve"), "start", "-a",
         ray.get_runtime_context().gcs_address, "--proxy-location", "Disabled"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.5)  # not synchronisation: lets the racer import Ray so the starts overlap
        try:
            serve_cleanup.start(proxy_location="Disabled")
            outcome = "returned"
        except serve_cleanup.NotDurableControllerError:
            outcome = "raised"
    finally:
        racer.wait(timeout=120)
    kind = controller_kind()
    assert (outcome, kind) in {("returned", "durable"), ("raised", "plain")}, (outcome, kind)


def test_start_waits_out_a_durable_controller_that_is_shutting_down(no_serve):
    serve_cleanup.start()
    serve.run(SlowToStop.bind(), name="slow", route_prefix=None)
    old_pid = controller_status()["pid"]
    ray.get(controller_handle().graceful_shutdown.remote(wait=False), timeout=30)
    assert shutting_down()

    said: list[str] = []
    started = time.monotonic()
    assert start_durable(say=said.append) == "started"
    assert any("shutting down; waiting" in m for m in said), said
    assert controller_kind() == "durable"
    assert controller_status()["pid"] != old_pid
    assert serve.status().applications == {}
    assert time.monotonic() - started < SHUTDOWN_WAIT_S


def test_start_warns_when_serve_runs_and_options_are_ignored(no_serve):
    serve_cleanup.start()
    with pytest.warns(RuntimeWarning, match="http_options is ignored"):
        serve_cleanup.start(http_options={"port": 8123})
    out = run_cli("start", "--http-port", "8123")
    assert out.returncode == 0, out.stderr
    assert "already running" in out.stdout and "http_options is ignored" in out.stderr


def test_cli_start_takes_serve_starts_grpc_options(no_serve):
    servicer = "ray.serve.generated.serve_pb2_grpc.add_UserDefinedServiceServicer_to_server"
    out = run_cli(
        "start", "--grpc-port", "9137", "--grpc-servicer-functions", servicer,
        "--grpc-disable-reflection", "--proxy-location", "HeadOnly",
    )
    assert out.returncode == 0, out.stderr
    assert "Started Serve with the durable controller" in out.stdout
    grpc = ray.get(controller_handle().get_grpc_config.remote(), timeout=30)
    assert grpc.port == 9137 and grpc.grpc_servicer_functions == [servicer]
    assert grpc.enable_reflection is False
