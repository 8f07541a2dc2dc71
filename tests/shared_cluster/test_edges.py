"""The promise at the edges, on a real cluster.

* an undecodable key under the record prefix must not stop the controller (I4);
* the record of a dead actor under a live owner is dropped (I5);
* what the controller logs while it starts reaches the controller log users read.
"""

from __future__ import annotations

import os

import pytest
import ray
from ray import serve

import serve_cleanup
from ray_helpers import (
    kv,
    kill_controller_and_wait_restart,
    kv_record_keys,
    run_cli,
    wait_dead,
    wait_for,
)
from serve_cleanup.core import records

pytestmark = pytest.mark.ray


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class Idle:
    def __call__(self) -> str:
        return "ok"


def _plant_raw(suffix: bytes, value: bytes) -> bytes:
    key = records.KEY_PREFIX.encode() + suffix
    kv().put(key, value)
    return key


@pytest.mark.smoke
def test_non_utf8_key_is_set_aside_and_serve_keeps_working(durable_serve, actors):
    good = actors()
    serve_cleanup.register(good)
    _plant_raw(b"\xff\xfe\x00", b"\xc1 random bytes")
    status = kill_controller_and_wait_restart()  # used to raise UnicodeDecodeError in __init__
    assert status["records"] == 1
    (bad,) = status["set_aside"]
    assert "\\xff" in bad["key"] and "UTF-8" in bad["reason"]
    listed = run_cli("list")
    assert listed.returncode == 0, listed.stderr
    assert good._actor_id.hex() in listed.stdout
    shown = run_cli("status", "--detail")  # set-aside entries need every record read
    assert shown.returncode == 0 and "set aside:       1" in shown.stdout, shown.stdout + shown.stderr
    serve.shutdown()
    wait_dead(good)
    assert len(kv_record_keys()) == 1  # set aside: untouched, for `serve-cleanup purge`


@pytest.mark.parametrize("scope", ["serve", "deployment"])
def test_dead_actor_record_under_live_owner_is_dropped(durable_serve, actors, scope):
    serve.run(Idle.bind(), name="live-app", route_prefix=None)
    aux = actors()
    owner = {"scope": "deployment", "app": "live-app", "deployment": "Idle"} if scope == "deployment" else {}
    serve_cleanup.register(aux, **owner)
    ray_kill(aux)
    # Bound: two reconcile intervals (0.5 s) + the liveness interval (1 s) + lookups.
    wait_for(lambda: kv_record_keys() == [], 5, "the dead actor's record to be dropped")
    assert serve.status().applications["live-app"].status == "RUNNING"


def ray_kill(handle) -> None:
    import ray

    ray.kill(handle, no_restart=True)
    wait_dead(handle)


def test_what_the_controller_logs_while_it_starts_lands_in_the_controller_log(durable_serve, actors):
    """The records are read before Serve sets up its controller log; the lines of that
    read are held and written there once it exists (they used to land in the worker's
    stderr file, where nobody looks)."""
    serve_cleanup.register(actors())
    pid = kill_controller_and_wait_restart()["pid"]
    session = ray._private.worker.global_worker.node.get_session_dir_path()
    path = os.path.join(session, "logs", "serve", f"controller_{pid}.log")

    def logged() -> bool:
        with open(path, errors="replace") as f:
            return "serve_cleanup: rehydrated 1 registration(s)" in f.read()

    wait_for(logged, 30, f"the rehydrate line in {path}")
