"""``serve-cleanup demo``: the controller-restart leak, fixed, on a local embedded Ray.

Module-level actor and deployment classes so Ray workers import them from the
installed package.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional

import click
import ray
from ray import serve

from serve_cleanup import _table, client

CACHE_NAME = "demo-prefix-cache"
DEMO_NAMESPACE = "serve-cleanup-demo"
BYSTANDER_NAME = "demo-bystander"
APP_NAME = "demo"
STEPS = 7


@ray.remote(num_cpus=0)
class AuxActor:
    """Stands in for a router's prefix tree or a queue monitor."""

    def ping(self) -> str:
        return "pong"


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0})
class DemoRouter:
    def __init__(self) -> None:
        # Shared by every replica (get_if_exists): both register it, one record is kept.
        cache = AuxActor.options(
            name=CACHE_NAME, namespace=DEMO_NAMESPACE, lifetime="detached", get_if_exists=True
        ).remote()
        client.register(cache)
        # One anonymous detached actor per replica, reached later through its handle.
        self._stats = AuxActor.options(lifetime="detached").remote()
        client.register(self._stats)

    def __call__(self) -> str:
        return "ok"


def _wait(what: str, check: Callable[[], bool], timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if check():
            return time.monotonic() - started
        time.sleep(0.1)
    raise click.ClickException(f"timed out after {timeout_s:.0f}s waiting for {what}")


def _state(actor_id: str) -> str:
    return client.actor_states([actor_id])[actor_id]


def _registration_table(records: list) -> str:
    """The same table `serve-cleanup list` prints."""
    states = client.actor_states([r.actor_id for r in records])
    return _table.records_table([r.to_dict() for r in records], states)


def run_demo(num_cpus: int = 2) -> int:
    started = time.monotonic()
    step = 0

    def say(msg: str) -> None:
        nonlocal step
        step += 1
        click.secho(f"[{step}/{STEPS}] {msg}", bold=True)

    # address="local" starts a new cluster even where RAY_ADDRESS names another one
    # (KubeRay pods set it): the demo never touches a cluster it did not start.
    ignored = f"; RAY_ADDRESS={os.environ['RAY_ADDRESS']} is ignored" if os.environ.get("RAY_ADDRESS") else ""
    say(f"Starting a new local Ray cluster (embedded, no dashboard{ignored})...")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        return _run(say, started)
    finally:
        try:
            serve.shutdown()
        except Exception:
            pass
        ray.shutdown()


def _run(say: Callable[[str], None], started: float) -> int:
    say("Starting Serve with the durable controller (serve_cleanup.start)...")
    client.start()
    click.echo(f"      controller kind: {client.controller_kind()}")

    bystander = AuxActor.options(name=BYSTANDER_NAME, namespace=DEMO_NAMESPACE, lifetime="detached").remote()
    ray.get(bystander.ping.remote())

    say(f"Deploying app {APP_NAME!r}: 2 replicas, each registers a shared named cache and its own anonymous actor...")
    serve.run(DemoRouter.bind(), name=APP_NAME, route_prefix=None)
    before = client.list_registrations()
    click.echo(_registration_table(before))
    click.echo(f"      plus an unregistered bystander actor {DEMO_NAMESPACE}/{BYSTANDER_NAME}")

    say("Killing the Serve controller (ray.kill(controller, no_restart=False))...")
    controller = client.find_controller()
    assert controller is not None
    old_pid = ray.get(controller.serve_cleanup_status.remote())["pid"]
    ray.kill(controller, no_restart=False)
    restarted: dict[str, Optional[dict]] = {"status": None}

    def answered_from_new_process() -> bool:
        try:
            status = ray.get(controller.serve_cleanup_status.remote(), timeout=5)
        except Exception:
            return False
        restarted["status"] = status
        return status["pid"] != old_pid

    took = _wait("the restarted controller", answered_from_new_process, 60)
    status = restarted["status"] or {}
    click.echo(
        f"      Ray restarted the controller in {took:.1f}s (pid {old_pid} -> {status.get('pid')}); "
        f"it rehydrated {status.get('records')} registration(s) in {status.get('rehydrate_ms')} ms"
    )

    say("Registrations after the restart, as `serve-cleanup list` shows them (read from the GCS KV):")
    after = client.list_registrations()
    click.echo(_registration_table(after))
    if {r.actor_id for r in after} != {r.actor_id for r in before}:
        click.secho("FAIL: registrations were lost in the restart", fg="red")
        return 1

    say("serve.shutdown() ...")
    t = time.monotonic()
    serve.shutdown()
    click.echo(f"      Serve shut down in {time.monotonic() - t:.1f}s")

    say("Checking what is left:")
    _wait("registered actors to die", lambda: all(_state(r.actor_id) == "DEAD" for r in after), 30)
    click.echo(_registration_table(after))
    bystander_state = _state(bystander._actor_id.hex())
    click.echo(f"      bystander {DEMO_NAMESPACE}/{BYSTANDER_NAME}: {bystander_state}")
    leaked = [r for r in after if _state(r.actor_id) != "DEAD"]
    left = client.list_registrations()
    ok = not leaked and bystander_state == "ALIVE" and not left
    ray.kill(bystander)
    verdict = "OK" if ok else "FAIL"
    click.secho(
        f"{verdict}: {len(after)} registered actor(s), {len(leaked)} leaked, "
        f"{0 if bystander_state == 'ALIVE' else 1} bystander(s) killed, {len(left)} record(s) "
        f"left; demo took {time.monotonic() - started:.0f}s.",
        fg="green" if ok else "red",
        bold=True,
    )
    return 0 if ok else 1
