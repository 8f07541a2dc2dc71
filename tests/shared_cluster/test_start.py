"""Starting Serve with the durable controller, and refusing to mix with plain Serve."""

from __future__ import annotations

import pytest
import ray
from ray import serve

import serve_cleanup
from ray_helpers import controller_status, run_cli
from serve_cleanup.client.controller import controller_kind

pytestmark = pytest.mark.ray


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Hello:
    def __call__(self) -> str:
        return "hello"


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
def test_cli_start_against_running_cluster(ray_cluster):
    serve.shutdown()
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
