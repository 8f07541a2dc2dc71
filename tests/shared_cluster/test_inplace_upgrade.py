"""An in-place upgrade from 0.1.0, which defined the durable controller in
``serve_cleanup.controller``: Ray re-creates a crashed controller from the class path the
actor table keeps, and the probe, ``controller_kind`` and the guard read that path.

The controller is started the way 0.1.0 started it: its class named by the old module
path (cloudpickle then stores it by that reference, as it stored 0.1.0's class). This
release must load it from that path after a crash, and call it durable everywhere.
"""

from __future__ import annotations

import json

import pytest
from ray import serve

import serve_cleanup
import serve_cleanup.controller  # the 0.1.0 path must import
from ray_helpers import (
    controller_handle,
    kill_controller_and_wait_restart,
    run_cli,
    wait_dead,
)
from serve_cleanup.client.controller import controller_kind
from serve_cleanup.serve_adapter import _ray
from serve_cleanup.serve_adapter.controller import ServeController

pytestmark = pytest.mark.ray

OLD_PATH = "serve_cleanup.controller"


def test_a_controller_started_under_0_1_0_s_class_path_stays_durable(no_serve, actors):
    assert serve_cleanup.controller.ServeController is ServeController
    ServeController.__module__ = OLD_PATH
    try:
        with _ray.durable_controller_factory(ServeController):
            serve.start()
    finally:
        ServeController.__module__ = "serve_cleanup.serve_adapter.controller"
    entry = _ray.actor_entry(_ray.actor_id_hex(controller_handle()))
    assert _ray.entry_facts(entry)["module"] == OLD_PATH  # as a 0.1.0 cluster's table says
    assert controller_kind() == "durable"
    helper = actors()
    serve_cleanup.register(helper)

    # A crash: Ray re-creates the controller from the old class path.
    status = kill_controller_and_wait_restart()
    assert status["controller"] == "durable" and status["records"] == 1
    assert controller_kind() == "durable"
    probe = run_cli("status", "--json")
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout)["controller"] == "durable"

    serve.shutdown()
    wait_dead(helper)
