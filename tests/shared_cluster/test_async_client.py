"""The awaitable client on a real cluster: ``register_async`` keeps an async replica
serving while the controller restarts; the async twins round-trip like the blocking calls.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import ray
from ray import serve

import serve_cleanup
from ray_helpers import (
    DEPLOYMENT,
    TEST_NAMESPACE,
    Aux,
    controller_handle,
    kv_record_keys,
    wait_dead,
    wait_for,
)
from serve_cleanup.core import records

pytestmark = pytest.mark.ray


@serve.deployment(num_replicas=1, max_ongoing_requests=64, **DEPLOYMENT)
class AsyncRegistrant:
    """An async deployment whose request handler registers a helper actor."""

    async def register(self, name: str, blocking: bool) -> dict:
        aux = Aux.options(name=name, namespace=TEST_NAMESPACE, lifetime="detached").remote()
        started = time.monotonic()
        if blocking:  # the anti-pattern register_async exists to replace
            record = serve_cleanup.register(aux)
        else:
            record = await serve_cleanup.register_async(aux)
        return {"actor_id": record.actor_id, "seconds": time.monotonic() - started}

    async def __call__(self) -> str:
        return "ok"


def _register_while_controller_restarts(name: str, blocking: bool) -> tuple[dict, list[float]]:
    """Kill the controller, ask the replica to register, and time requests to that same
    replica until the registration returns. Returns its result and every latency."""
    handle = serve.run(AsyncRegistrant.bind(), name="async-reg", route_prefix=None)
    assert handle.remote().result(timeout_s=30) == "ok"  # the router knows the replica now

    ctrl = controller_handle()
    old_pid = ray.get(ctrl.serve_cleanup_status.remote(), timeout=30)["pid"]
    ray.kill(ctrl, no_restart=False)
    registration = handle.register.remote(name, blocking)

    latencies: list[float] = []
    deadline = time.monotonic() + 90
    while True:
        started = time.monotonic()
        assert handle.remote().result(timeout_s=30) == "ok"
        latencies.append(time.monotonic() - started)
        try:
            result = registration.result(timeout_s=0.05)
            break
        except TimeoutError:
            pass
        assert time.monotonic() < deadline, "the registration did not return within 90 s"
    # The registration really overlapped a controller restart.
    new_pid = wait_for(
        lambda: ray.get(ctrl.serve_cleanup_status.remote(), timeout=10)["pid"], 60, "status"
    )
    assert new_pid != old_pid
    return result, latencies


@pytest.mark.smoke
def test_register_async_keeps_the_replica_serving_through_a_controller_restart(
    durable_serve, unique
):
    result, latencies = _register_while_controller_restarts(f"async-{unique}", blocking=False)
    print(
        f"register_async took {result['seconds']:.2f}s across the restart; "
        f"{len(latencies)} requests meanwhile, max {max(latencies) * 1000:.0f} ms"
    )
    assert len(latencies) >= 3, "too few requests overlapped the registration to tell"
    assert max(latencies) < 1.0, f"a request waited {max(latencies):.2f}s: the loop was blocked"
    # Durable: in the KV, and killed at shutdown.
    (key,) = kv_record_keys()
    assert key.startswith(records.actor_prefix(result["actor_id"]))  # one v2 key: its serve pair
    aux = ray.get_actor(f"async-{unique}", namespace=TEST_NAMESPACE)
    serve.shutdown()
    wait_dead(aux)


def test_blocking_register_in_an_async_replica_stalls_its_requests(durable_serve, unique):
    """Control for the test above: the same scenario with the blocking call does stall
    the replica's other requests, so the test above can fail."""
    result, latencies = _register_while_controller_restarts(f"sync-{unique}", blocking=True)
    print(
        f"blocking register took {result['seconds']:.2f}s; max request "
        f"{max(latencies) * 1000:.0f} ms"
    )
    assert max(latencies) >= min(0.5, result["seconds"] * 0.5)
    aux = ray.get_actor(f"sync-{unique}", namespace=TEST_NAMESPACE)
    serve.shutdown()
    wait_dead(aux)


async def test_async_twins_round_trip_from_a_driver(durable_serve, actors):
    aux, dead = actors(), actors()
    record = await serve_cleanup.register_async(aux)
    assert record.actor_id == aux._actor_id.hex()
    assert kv_record_keys() == [record.key]
    await serve_cleanup.register_async(dead)
    ray.kill(dead, no_restart=True)
    await asyncio.to_thread(wait_dead, dead)  # wait_dead runs its own event loop
    found = await serve_cleanup.collect_async(dry_run=True)
    assert [(d["actor_id"], d["why"]) for d in found] == [(dead._actor_id.hex(), "actor dead")]
    assert await serve_cleanup.unregister_async(aux) is True
    assert await serve_cleanup.unregister_async(aux._actor_id.hex()) is False
    collected = await serve_cleanup.collect_async()
    assert [d["outcome"] for d in collected] == ["already dead"]
    assert kv_record_keys() == []
    with pytest.raises(serve_cleanup.DeadActorError):  # refused like register() refuses it
        await serve_cleanup.register_async(dead)
    assert kv_record_keys() == []


async def test_async_call_times_out_without_blocking_the_loop(no_serve):
    """No Serve running: register_async gives up at its timeout, and the loop kept
    running meanwhile (a ticker task advanced)."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    task = asyncio.create_task(ticker())
    aux = Aux.options(lifetime="detached").remote()
    try:
        started = time.monotonic()
        with pytest.raises(serve_cleanup.ControllerUnavailableError, match="within 1.5s"):
            await serve_cleanup.register_async(aux, timeout_s=1.5)
        elapsed = time.monotonic() - started
    finally:
        task.cancel()
        ray.kill(aux, no_restart=True)
    assert 1.5 <= elapsed < 5
    assert ticks >= 10
