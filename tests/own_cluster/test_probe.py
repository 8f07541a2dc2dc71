"""`serve-cleanup status` as a probe, on a `ray start --head` cluster as a KubeRay head pod
runs it: exit codes for durable, plain, no Serve and cannot connect; no Ray driver per
probe; the cluster's token found without RAY_AUTH_MODE; the durable controller telling
itself apart in the actor table (`repr_name`) under the class name `ServeController`.

The head runs on private ports with a temp dir of its own (so `/tmp/ray` and the
machine's "latest cluster" stay untouched); every process it started carries a marker in
its environment, and the fixture ends exactly those, by pid.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from typing import Iterator

import pytest
import ray
from ray import serve
from ray._private.authentication_test_utils import reset_auth_token_state

import serve_cleanup
from ray_helpers import CLUSTER_MARKER, TEST_NAMESPACE, end_marked_processes, stop_ray, temp_dir_of_its_own, wait_for
from serve_cleanup.serve_adapter import _ray
from serve_cleanup.client.controller import find_controller

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

BIN = os.path.dirname(sys.executable)
GCS_PORT = 6393
GCS = f"127.0.0.1:{GCS_PORT}"


def probe_env(**extra: str) -> dict[str, str]:
    """The probe's environment as `kubectl exec` into the head container gives it: no
    RAY_AUTH_MODE (Ray's own CLIs then send no token), no RAY_ADDRESS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SERVE_CLEANUP_"))}
    return {**env, **extra}


def status(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serve_cleanup.cli", "status", *args],
        capture_output=True, text=True, timeout=60, env=probe_env(**env),
    )


@pytest.fixture(scope="module")
def head() -> Iterator[None]:
    stop_ray()  # the session's embedded cluster: one cluster at a time
    token = uuid.uuid4().hex
    temp_dir = temp_dir_of_its_own("probe")
    saved_auth_mode = os.environ.get("RAY_AUTH_MODE")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({CLUSTER_MARKER: token, "RAY_AUTH_MODE": "token"})
    try:
        out = subprocess.run(
            [os.path.join(BIN, "ray"), "start", "--head", f"--port={GCS_PORT}", f"--temp-dir={temp_dir}",
             "--include-dashboard=false", "--num-cpus=2", "--ray-client-server-port=23023",
             "--dashboard-agent-listen-port=52387", "--disable-usage-stats"],
            capture_output=True, text=True, timeout=180, env=env,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        os.environ["RAY_AUTH_MODE"] = "token"
        reset_auth_token_state()
        ray.init(address=GCS, namespace=TEST_NAMESPACE, log_to_driver=False)
        yield
    finally:
        try:
            serve.shutdown()
        except Exception:
            pass
        ray.shutdown()
        if saved_auth_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved_auth_mode
        reset_auth_token_state()
        end_marked_processes(token)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def no_serve(head) -> None:
    serve.shutdown()
    wait_for(lambda: find_controller() is None, 60, "the Serve controller to exit")


def jobs() -> int:
    return len(_ray.driver_gcs_client().get_all_job_info())


def test_exit_codes_for_no_serve_durable_and_plain_without_a_driver(no_serve):
    jobs_before = jobs()
    none = status("--address", GCS)
    assert none.returncode == 4, none.stdout + none.stderr
    assert "controller:      not running" in none.stdout and none.stderr == ""

    serve_cleanup.start()
    durable = status("--json", "--address", GCS)
    assert durable.returncode == 0, durable.stderr
    out = json.loads(durable.stdout)
    assert out["controller"] == "durable" and out["exit_code"] == 0
    assert out["controller_actor"]["state"] == "ALIVE"
    # The class's module today; a controller 0.1.0 started shows serve_cleanup.controller
    # (test_inplace_upgrade.py); the probe calls both durable.
    assert out["controller_actor"]["module"] == "serve_cleanup.serve_adapter.controller"
    human = status("--address", GCS)
    assert human.returncode == 0 and "durable (serve_cleanup); ALIVE" in human.stdout

    serve.shutdown()
    wait_for(lambda: find_controller() is None, 60, "the durable controller to exit")
    serve.start()
    plain = status("--json", "--address", GCS)
    assert plain.returncode == 3, plain.stderr
    assert json.loads(plain.stdout)["controller"] == "plain"

    # RAY_ADDRESS is used when --address is not given.
    from_env = status(RAY_ADDRESS=GCS)
    assert from_env.returncode == 3, from_env.stdout + from_env.stderr
    # No probe connected as a Ray driver: the cluster has no job more than this test's
    # own driver had made (serve.start() and serve_cleanup.start() run in this process).
    assert jobs() == jobs_before


def test_cannot_connect_is_exit_5_in_a_few_seconds(head):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    began = time.monotonic()
    out = status("--json", "--address", f"127.0.0.1:{free}")
    assert out.returncode == 5, out.stderr
    assert time.monotonic() - began < 30  # Ray's own client would retry for ~40 s
    assert "cannot reach GCS" in json.loads(out.stdout)["cluster"]["error"]


def test_a_probe_without_the_clusters_token_cannot_connect(head, tmp_path):
    """What the probe needs: the token `ray start --head` left in ~/.ray/auth_token (a
    KubeRay head container has it there, or in RAY_AUTH_TOKEN). Without it GCS refuses."""
    out = status("--json", "--address", GCS, HOME=str(tmp_path))
    assert out.returncode == 5, out.stdout + out.stderr
    assert "Authentication" in json.loads(out.stdout)["cluster"]["error"]


def test_durable_controller_tells_itself_apart_in_the_actor_table(no_serve):
    """`ray list actors --detail` and the dashboard show an actor's `repr_name` from the
    GCS actor table; the class name stays Serve's own."""
    from serve_cleanup.serve_adapter import controller

    serve_cleanup.start()
    actor_id = find_controller()._actor_id.hex()
    entry = wait_for(lambda: (e := _ray.actor_entry(actor_id)) is not None and e.repr_name and e, 30,
                     "the controller's repr_name in the actor table")
    assert entry.repr_name == controller.REPR == "ServeController(serve_cleanup durable)"
    assert entry.class_name == "ServeController"
    serve.shutdown()
    wait_for(lambda: find_controller() is None, 60, "the durable controller to exit")
    serve.start()
    plain = _ray.actor_entry(find_controller()._actor_id.hex())
    assert plain.class_name == "ServeController" and plain.repr_name != controller.REPR
