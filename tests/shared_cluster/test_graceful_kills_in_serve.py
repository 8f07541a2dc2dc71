"""Graceful kills (issue 22) on a real cluster: an actor registered with ``grace_s`` is
asked to exit (``__ray_terminate__``) at ``serve.shutdown()``, so its ``__ray_shutdown__``
hook runs; one whose hook hangs is killed at its deadline; one without a grace period is
killed at once (its hook never runs, as with ``ray.kill``). Each hook writes a marker
file, which is how the test knows it ran.
"""

from __future__ import annotations

import os
import time

import pytest
import ray
from ray import serve

import serve_cleanup
from ray_helpers import actor_state, wait_for

pytestmark = pytest.mark.ray


@ray.remote(num_cpus=0)
class Holder:
    """An actor that holds something it must flush: its ``__ray_shutdown__`` writes
    ``marker`` (after ``hang_s`` seconds: a hook that hangs)."""

    def __init__(self, marker: str, hang_s: float = 0.0) -> None:
        self.marker, self.hang_s = marker, hang_s

    def ready(self) -> bool:
        return True

    def __ray_shutdown__(self) -> None:
        if self.hang_s:
            time.sleep(self.hang_s)
        with open(self.marker, "w") as f:
            f.write("flushed")


@pytest.mark.smoke  # __ray_terminate__, __ray_shutdown__ and the worker's KillActor on every supported Ray
def test_shutdown_runs_the_graceful_exit_and_forces_a_hanging_one_at_its_deadline(durable_serve, tmp_path):
    markers = {name: str(tmp_path / name) for name in ("graceful", "hanging", "immediate")}
    graceful = Holder.remote(markers["graceful"])
    hanging = Holder.remote(markers["hanging"], hang_s=600)
    immediate = Holder.remote(markers["immediate"])
    ray.get([a.ready.remote() for a in (graceful, hanging, immediate)])
    assert serve_cleanup.register(graceful, grace_s=5).grace_s == 5.0
    serve_cleanup.register(hanging, grace_s=3)
    serve_cleanup.register(immediate)
    with pytest.raises(ValueError, match="out of range"):
        serve_cleanup.register(Holder.remote(str(tmp_path / "x")), grace_s=60)

    started = time.monotonic()
    serve.shutdown()
    took = time.monotonic() - started

    for actor in (graceful, hanging, immediate):
        assert actor_state(actor._actor_id.hex()) == "DEAD"
    wait_for(lambda: os.path.exists(markers["graceful"]), 10, "the graceful actor's hook to have run")
    assert not os.path.exists(markers["hanging"])  # killed in its hook, at the deadline
    assert not os.path.exists(markers["immediate"])  # a kill skips the hook, as ray.kill does
    # The hanging hook cost its grace period (3 s), not more: the forced kill at the
    # deadline, then Serve's own shutdown steps.
    assert 3.0 <= took < 3.0 + 8.0, took
