"""The `serve-cleanup` CLI against a real cluster, including while the controller is down."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import ray
from ray import serve

import serve_cleanup
from ray_helpers import DEPLOYMENT, actor_state, controller_handle, kv_record_keys, run_cli, wait_dead, wait_for
from serve_cleanup.client.controller import find_controller

pytestmark = pytest.mark.ray


@serve.deployment(**DEPLOYMENT)
class Owner:
    def __call__(self) -> str:
        return "ok"


def test_list_json_and_table(durable_serve, actors, unique):
    named, anon = actors(f"cli-{unique}"), actors()
    serve_cleanup.register(named)
    serve_cleanup.register(anon)
    out = run_cli("list", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["actor_id"]: r for r in json.loads(out.stdout)}
    assert set(rows) == {named._actor_id.hex(), anon._actor_id.hex()}
    assert rows[named._actor_id.hex()]["name"] == f"cli-{unique}"
    assert all(r["state"] == "ALIVE" and r["scope"] == "serve" for r in rows.values())

    table = run_cli("list")
    assert table.returncode == 0, table.stderr
    assert "SCOPE" in table.stdout and f"cli-{unique}" in table.stdout and "(anonymous)" in table.stdout


def test_status_reports_durable_controller(durable_serve, actors):
    serve_cleanup.register(actors())
    out = run_cli("status", "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["controller"] == "durable" and status["records"] == 1
    assert "controller_status" not in status  # the probe asks GCS only
    detail = json.loads(run_cli("status", "--json", "--detail").stdout)
    assert detail["records"] == 1 and detail["records_by_scope"] == {"serve": 1}
    assert detail["controller_status"]["records"] == 1
    human = run_cli("status", "--detail")
    assert "durable (serve_cleanup)" in human.stdout and "last reconcile" in human.stdout


def test_gc_dry_run_then_gc(slow_reconcile_serve, actors):
    serve.run(Owner.bind(), name="gc-app", route_prefix=None)
    orphan, alive_owner, dead = actors(), actors(), actors()
    serve_cleanup.register(orphan, scope="deployment", app="gc-app", deployment="Owner")
    serve.run(Owner.bind(), name="other-app", route_prefix=None)
    serve_cleanup.register(alive_owner, scope="app", app="other-app")
    serve_cleanup.register(dead)
    ray.kill(dead, no_restart=True)
    wait_dead(dead)
    serve.delete("gc-app")

    dry = run_cli("gc", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    found = {r["actor_id"]: r["why"] for r in json.loads(dry.stdout)}
    assert found == {orphan._actor_id.hex(): "owner deleted", dead._actor_id.hex(): "actor dead"}
    assert actor_state(orphan._actor_id.hex()) == "ALIVE"  # dry run killed nothing

    real = run_cli("gc")
    assert real.returncode == 0, real.stderr
    assert "2 registration(s) collected" in real.stdout
    wait_dead(orphan)
    assert actor_state(alive_owner._actor_id.hex()) == "ALIVE"
    assert [r.actor_id for r in serve_cleanup.list_registrations()] == [alive_owner._actor_id.hex()]


def test_list_while_controller_is_down(durable_serve, actors, unique):
    aux = actors(f"down-{unique}")
    serve_cleanup.register(aux)
    ray.kill(controller_handle(), no_restart=True)  # Serve is down for good
    wait_for(lambda: find_controller() is None, 30, "the controller to be gone")

    out = run_cli("list", "--json")
    assert out.returncode == 0, out.stderr
    assert [r["actor_id"] for r in json.loads(out.stdout)] == [aux._actor_id.hex()]
    status = run_cli("status", "--json")
    assert status.returncode == 4  # no Serve
    assert json.loads(status.stdout)["controller"] == "none" and json.loads(status.stdout)["records"] == 1
    for args in (["gc"], ["unregister", aux._actor_id.hex()]):
        refused = run_cli(*args)  # at once, not after a 30 s wait for a controller
        assert refused.returncode == 4 and "Serve is not running" in refused.stderr, refused.stderr
        assert "serve-cleanup purge" in refused.stderr and "Traceback" not in refused.stderr

    # A new Serve instance adopts the leftover and kills it at its shutdown.
    serve_cleanup.start()
    serve.shutdown()
    wait_dead(aux)


def test_cli_help():
    out = subprocess.run(
        [sys.executable, "-m", "serve_cleanup.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "list" in out.stdout and "gc" in out.stdout


def test_cli_unregister(durable_serve, actors):
    aux = actors()
    serve_cleanup.register(aux)
    out = run_cli("unregister", aux._actor_id.hex().upper())  # ids are case-insensitive
    assert out.returncode == 0, out.stderr
    assert "Unregistered" in out.stdout
    assert serve_cleanup.list_registrations() == []
    again = run_cli("unregister", aux._actor_id.hex())
    assert again.returncode == 0 and "was not registered" in again.stdout
    serve.shutdown()
    assert actor_state(aux._actor_id.hex()) == "ALIVE"


def test_purge_removes_leftovers_only_while_serve_is_down(durable_serve, actors):
    """Issue 9, defect 6: records a shutdown gave up on (or set-aside entries) can be
    removed without starting a durable Serve; never behind a running controller's back."""
    import ray_helpers

    left, kept = actors(), actors()
    serve_cleanup.register(left)
    serve_cleanup.register(kept)
    refused = run_cli("purge", "--yes", left._actor_id.hex())
    assert refused.returncode != 0 and "is running" in refused.stderr
    # Leave records behind the way a shutdown that gave up does: Serve gone, records kept.
    saved = {r.actor_id: r for r in serve_cleanup.list_registrations()}
    serve.shutdown()
    wait_dead(left)
    ray_helpers._plant_record(saved[left._actor_id.hex()])
    ray_helpers._plant_record(saved[kept._actor_id.hex()])
    dry = run_cli("purge", "--dry-run", left._actor_id.hex())
    assert dry.returncode == 0 and "would be deleted" in dry.stdout
    assert len(kv_record_keys()) == 2
    done = run_cli("purge", "--yes", left._actor_id.hex())
    assert done.returncode == 0, done.stderr
    assert kv_record_keys() == [saved[kept._actor_id.hex()].key]
    assert run_cli("purge", "--yes", "--all").returncode == 0
    assert kv_record_keys() == []


def test_list_reads_gcs_without_a_driver_and_without_serve(durable_serve, actors):
    """`list` as a user runs it: no `ray.init` (no new job on the cluster), no Serve import."""
    from serve_cleanup.serve_adapter import _ray

    aux = actors()
    serve_cleanup.register(aux)
    jobs_before = len(_ray.driver_gcs_client().get_all_job_info())
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('SERVE' if 'ray.serve' in sys.modules else 'NO SERVE', file=sys.stderr))\n"
        "from serve_cleanup.cli import main\n"
        "sys.argv = ['serve-cleanup', 'list', '--json']\n"
        "main()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address},
    )
    assert out.returncode == 0, out.stderr
    assert [r["actor_id"] for r in json.loads(out.stdout)] == [aux._actor_id.hex()]
    assert out.stdout.count("\n") == 1  # compact: one line
    assert out.stderr.strip().splitlines()[-1] == "NO SERVE"
    assert len(_ray.driver_gcs_client().get_all_job_info()) == jobs_before
