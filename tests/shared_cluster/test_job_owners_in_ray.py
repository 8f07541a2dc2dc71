"""Ray jobs as owners (issue 22) on a real cluster: a driver (a batch job, a notebook)
creates detached helpers, registers one with ``scope="job"`` (its own job by default)
and exits; the durable controller kills that helper once the job has ended, while Serve
keeps running and the helper the driver registered serve-wide lives on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import ray
from ray import serve

import serve_cleanup
from ray_helpers import DEPLOYMENT, TEST_NAMESPACE, actor_state, assert_stays, find_controller, wait_for

pytestmark = pytest.mark.ray

DRIVER = """
import json, sys, ray, serve_cleanup

ray.init(address=sys.argv[1], namespace=sys.argv[2], log_to_driver=False)

@ray.remote(num_cpus=0)
class Helper:
    def ready(self):
        return True

mine = Helper.options(name="job-helper-" + sys.argv[3], lifetime="detached").remote()
kept = Helper.options(name="serve-helper-" + sys.argv[3], lifetime="detached").remote()
ray.get([mine.ready.remote(), kept.ready.remote()])
record = serve_cleanup.register(mine, scope="job")
serve_cleanup.register(kept)
print(json.dumps({"job": ray.get_runtime_context().get_job_id(), "owners": record.owners,
                  "mine": mine._actor_id.hex(), "kept": kept._actor_id.hex()}))
"""


@serve.deployment(**DEPLOYMENT)
class Echo:
    def __call__(self) -> str:
        return "still serving"


@pytest.mark.smoke  # the job table's RPC and its skip flags on every supported Ray
def test_a_drivers_job_owned_helper_dies_when_the_driver_exits_and_serve_keeps_running(durable_serve, unique):
    handle = serve.run(Echo.bind(), name=f"echo-{unique}", route_prefix=None)
    controller = find_controller()._actor_id.hex()
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, ray.get_runtime_context().gcs_address, TEST_NAMESPACE, unique],
        capture_output=True, text=True, timeout=120, env={**os.environ},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["owners"] == [["job", facts["job"], ""]]

    # The driver has exited: its job ends, and the controller's next read of the job
    # table (at most a liveness interval, 5 s) finds it.
    wait_for(lambda: actor_state(facts["mine"]) == "DEAD", 30, "the job-owned helper to be killed")
    wait_for(lambda: all(r.actor_id != facts["mine"] for r in serve_cleanup.list_registrations()), 10,
             "its record to go")
    assert_stays(lambda: actor_state(facts["kept"]) == "ALIVE", 1.0, "the serve-wide helper alive")
    assert handle.remote().result(timeout_s=30) == "still serving"
    assert find_controller()._actor_id.hex() == controller  # no restart: Serve kept running
    ray.kill(ray.get_actor(f"serve-helper-{unique}", namespace=TEST_NAMESPACE))


def test_serves_own_job_cannot_own(durable_serve):
    with pytest.raises(ValueError, match="is the job that started Serve"):
        serve_cleanup.register(ray.remote(num_cpus=0)(_Nothing).remote(), scope="job",
                               job=_serve_job())


class _Nothing:
    pass


def _serve_job() -> str:
    """The job of the Serve controller: the one that started Serve (this test process)."""
    return ray.get_runtime_context().get_job_id()
