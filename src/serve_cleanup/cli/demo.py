"""``serve-cleanup demo``: the controller-restart leak on plain Serve, then the same steps
with the durable controller, side by side, on a local embedded Ray.

Each replica registers helper actors through the upstream method
``controller._register_shutdown_cleanup_actor`` (what Ray's own
``PrefixCacheAffinityRouter`` does), so both rounds run identical application code.
Module-level actor and deployment classes so Ray workers import them from the package.
"""

from __future__ import annotations

import os
import textwrap
import time
from dataclasses import dataclass, field
from typing import Callable

import click
import ray
from ray import serve

from serve_cleanup import _startup
from serve_cleanup.cli.table import render
from serve_cleanup.serve_adapter import _ray
from serve_cleanup.client.controller import controller_kind, find_controller
from serve_cleanup.client.gcs import actor_states, list_registrations
from serve_cleanup.client.start import start as durable_start

DEMO_NAMESPACE = "serve-cleanup-demo"
SHARED_NAME = "demo-prefix-cache"
BYSTANDER_NAME = "demo-bystander"
APP_NAME = "demo"
STEPS = 4


@ray.remote(num_cpus=0)
class AuxActor:
    """Stands in for a router's prefix tree or a queue monitor."""

    def ping(self) -> str:
        return "pong"


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0})
class DemoRouter:
    def __init__(self) -> None:
        controller = ray.get_actor(_ray.SERVE_CONTROLLER_NAME, namespace=_ray.SERVE_NAMESPACE)
        replica = serve.get_replica_context().replica_id.unique_id
        # One helper shared by both replicas (get_if_exists) and one of each replica's own.
        for name in (SHARED_NAME, f"demo-stats-{replica}"):
            helper = AuxActor.options(
                name=name, namespace=DEMO_NAMESPACE, lifetime="detached", get_if_exists=True
            ).remote()
            ray.get(_ray.register_upstream(controller, helper))

    def __call__(self) -> str:
        return "ok"


@dataclass
class Round:
    title: str
    helpers: int = 0
    restarts: int = 0
    records_after_restart: str = "-"
    alive_after_shutdown: list[str] = field(default_factory=list)
    bystander: str = "?"
    seconds: float = 0.0


def _wait(what: str, check: Callable[[], object], timeout_s: float = 60) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise click.ClickException(f"timed out after {timeout_s:.0f}s waiting for {what}")


def _helpers() -> dict[str, str]:
    """Name -> actor id of the demo's helper actors that are alive."""
    found = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] == DEMO_NAMESPACE and entry["name"] != BYSTANDER_NAME:
            found[entry["name"]] = _ray.actor_id_hex(ray.get_actor(entry["name"], namespace=DEMO_NAMESPACE))
    return found


def _controller_restarts() -> tuple[int, bool]:
    """(times Ray restarted the controller, whether it is ALIVE and answering)."""
    controller = find_controller()
    actor_id = _ray.actor_id_hex(controller)
    entry = _ray.actor_entry(actor_id)  # the raw table entry: its state is an enum number
    info = _ray.actor_info(actor_id)  # parsed: the state's name
    alive = info is not None and info.state == "ALIVE" and ray.get(controller.check_alive.remote(), timeout=5) is None
    return (entry.num_restarts if entry else 0), alive


def _play(r: Round, start: Callable[[], None], durable: bool) -> None:
    began = time.monotonic()
    bystander = AuxActor.options(name=BYSTANDER_NAME, namespace=DEMO_NAMESPACE, lifetime="detached").remote()
    ray.get(bystander.ping.remote())
    start()
    serve.run(DemoRouter.bind(), name=APP_NAME, route_prefix=None)
    helpers = _wait("the replicas' helpers", lambda: (h := _helpers()) and len(h) == 3 and h)
    r.helpers = len(helpers)
    click.echo(f"      kind: {controller_kind()}; {r.helpers} helper actors registered by the replicas")

    old, _ = _controller_restarts()
    ray.kill(find_controller(), no_restart=False)
    _wait("the restarted controller", lambda: _controller_restarts() == (old + 1, True))
    r.restarts = old + 1
    if durable:
        r.records_after_restart = f"{len(list_registrations())} (GCS KV)"
    else:
        r.records_after_restart = "0 (kept in memory, lost)"
    click.echo("      controller killed (ray.kill(controller, no_restart=False)); Ray restarted it")

    serve.shutdown()
    states = actor_states(list(helpers.values()))
    if durable:  # kills are asynchronous: give them a moment, bounded
        _wait("the helpers to die", lambda: all(s == "DEAD" for s in actor_states(list(helpers.values())).values()), 30)
        states = actor_states(list(helpers.values()))
    r.alive_after_shutdown = [n for n, i in helpers.items() if states[i] != "DEAD"]
    r.bystander = actor_states([_ray.actor_id_hex(bystander)])[_ray.actor_id_hex(bystander)]
    click.echo(f"      serve.shutdown(): {len(r.alive_after_shutdown)} of {r.helpers} helpers still alive")
    for name in list(_helpers()) + [BYSTANDER_NAME]:  # the demo cleans up after itself
        try:
            ray.kill(ray.get_actor(name, namespace=DEMO_NAMESPACE), no_restart=True)
        except ValueError:
            pass
    r.seconds = time.monotonic() - began


def _plain_serve_start() -> None:
    """Ray's own serve.start(), even where `serve-cleanup enable` is on."""
    saved = os.environ.get(_startup.ENV_ENABLE)
    os.environ[_startup.ENV_ENABLE] = "0"
    try:
        serve.start()
    finally:
        if saved is None:
            os.environ.pop(_startup.ENV_ENABLE)
        else:
            os.environ[_startup.ENV_ENABLE] = saved


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
    say(f"Starting a new local Ray cluster of its own (embedded, no dashboard{ignored})...")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    plain, durable = Round("plain Ray Serve"), Round("serve_cleanup")
    try:
        say("Plain Ray Serve (serve.start): deploy, kill the controller, serve.shutdown()")
        _play(plain, _plain_serve_start, durable=False)
        say("The same steps with the durable controller (serve_cleanup.start)")
        _play(durable, durable_start, durable=True)
    finally:
        try:
            serve.shutdown()
        except Exception:
            pass
        ray.shutdown()

    say("Side by side:")
    rows = [
        ("helper actors registered", plain.helpers, durable.helpers),
        ("controller restarts", plain.restarts, durable.restarts),
        ("registrations after restart", plain.records_after_restart, durable.records_after_restart),
        ("helpers alive after shutdown", _leak(plain), _leak(durable)),
        ("unregistered bystander", plain.bystander, durable.bystander),
        ("wall time", f"{plain.seconds:.1f}s", f"{durable.seconds:.1f}s"),
    ]
    click.echo(textwrap.indent(render(("", plain.title, durable.title), rows), "      "))
    ok = (
        plain.alive_after_shutdown  # the leak this package exists for is reproduced
        and not durable.alive_after_shutdown
        and durable.helpers == 3
        and durable.bystander == "ALIVE"
    )
    click.secho(
        (f"OK: plain Serve leaked {len(plain.alive_after_shutdown)} actor(s); serve_cleanup leaked 0 "
         f"and killed no bystander. Demo took {time.monotonic() - started:.0f}s.")
        if ok
        else "FAIL: the durable round leaked or killed a bystander (or the plain round did not leak).",
        fg="green" if ok else "red",
        bold=True,
    )
    return 0 if ok else 1


def _leak(r: Round) -> str:
    n = len(r.alive_after_shutdown)
    return f"{n} LEAKED" if n else "0"
