"""`serve-cleanup shutdown` / `serve_cleanup.shutdown()`: a shutdown that finishes and says
what is left, also when the controller does not answer at first.

Serve 2.60's `serve.shutdown()`, in a process that already talked to Serve, gives the
controller 5 s to answer `check_alive`; then it logs "Nothing to shut down" and returns,
and Serve with every registered actor lives on. Right after a controller crash that
happens when the restart takes longer than 5 s. On this machine a restart takes about
2 s, so a test that kills the controller and calls `serve.shutdown()` would pass or fail
by timing. What makes the controller miss the 5 s here every time is a controller process
that is stopped (SIGSTOP): alive to Ray, silent to callers, as a controller still
restarting is. The tests use that to show both sides; the kill-right-before case is
shown with serve_cleanup's shutdown, which must not depend on the restart's timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager

import pytest
import ray
from ray import serve

import serve_cleanup
from ray_helpers import (
    _plant_record,
    actor_state,
    controller_handle,
    controller_status,
    kv_record_keys,
    wait_dead,
)
from serve_cleanup.client.controller import find_controller
from serve_cleanup.core.reaper import Outcome

pytestmark = pytest.mark.ray


@contextmanager
def controller_stopped():
    """The controller process stopped (SIGSTOP) until the block ends (SIGCONT)."""
    pid = controller_status()["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)


def shutdown_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "serve_cleanup.cli", "shutdown", "-y", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address},
    )


def test_serve_shutdown_gives_up_on_a_silent_controller_and_ours_does_not(fresh_durable_serve, actors):
    aux = actors()
    serve_cleanup.register(aux)
    with controller_stopped():
        serve.shutdown()  # this process started Serve: its cached client asks check_alive
    # Serve's shutdown returned ("Nothing to shut down") without shutting anything down.
    assert find_controller() is not None
    assert actor_state(aux._actor_id.hex()) == "ALIVE"
    assert len(kv_record_keys()) == 1

    with controller_stopped():
        proc = shutdown_cli("--timeout", "90")
        # Not a terminal: plain progress lines on stderr. Let it wait past Serve's 5 s.
        waited = 0
        for line in proc.stderr:
            if line.startswith("serve-cleanup: waiting for the Serve controller to answer ("):
                waited = int(line.rsplit("(", 1)[1].rstrip("s)\n"))
                if waited >= 6:
                    break
        assert waited >= 6, "serve-cleanup shutdown should have been waiting for the controller"
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 0, stdout + stderr
    assert "1 registered actor(s) killed, 0 already dead; 0 record(s) left." in stdout
    wait_dead(aux)
    assert kv_record_keys() == [] and find_controller() is None


def test_shutdown_right_after_a_controller_kill(fresh_durable_serve, actors):
    """The API, called the moment the controller was killed (Ray restarts it)."""
    alive, dead = actors(), actors()
    serve_cleanup.register(alive)
    serve_cleanup.register(dead)
    ray.kill(dead, no_restart=True)
    wait_dead(dead)
    ray.kill(controller_handle(), no_restart=False)
    seen: list[str] = []
    report = serve_cleanup.shutdown(timeout_s=90, waiting=seen.append)
    assert report.controller == "durable" and report.clean
    assert [r.actor_id for r in report.killed] == [alive._actor_id.hex()]
    assert [r.actor_id for r in report.already_dead] == [dead._actor_id.hex()]
    assert report.outcome(report.killed[0]) == Outcome.KILLED.value
    assert any(w.startswith("Serve to finish shutting down") for w in seen), seen
    wait_dead(alive)
    assert find_controller() is None and kv_record_keys() == []


def test_plain_controller_leaves_records_and_says_so(plain_serve, actors):
    """Records of an earlier durable controller; plain Serve ignores them at shutdown."""
    from serve_cleanup.core import records

    aux = actors()
    record = records.Record(actor_id=aux._actor_id.hex(), name="", namespace="", handle=b"\x00",
                            registered_at=1.0)
    _plant_record(record)
    proc = shutdown_cli("--json", "--timeout", "60")
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 7, stderr  # Serve is down, records remain
    out = json.loads(stdout)
    assert out["controller"] == "plain" and out["gone"] == []
    assert [(r["actor_id"], r["state"]) for r in out["left"]] == [(aux._actor_id.hex(), "ALIVE")]
    error = stderr.strip().splitlines()[-1]
    assert error.startswith("Error: 1 record(s) are still stored (a plain controller ignores them)")
    assert "serve-cleanup purge" in error
    assert find_controller() is None


def test_shutdown_without_serve_is_quick_and_clean(no_serve):
    proc = shutdown_cli()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Serve was not running." in stdout and "0 record(s) left" in stdout
