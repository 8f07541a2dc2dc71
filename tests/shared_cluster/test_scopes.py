"""Owner scopes: registrations die with their app or deployment, like Kubernetes GC."""

from __future__ import annotations

import time

import pytest
import ray
from ray import serve

import serve_cleanup
from ray_helpers import (
    DEPLOYMENT,
    TEST_NAMESPACE,
    Aux,
    actor_state,
    assert_stays,
    controller_handle,
    kill_controller_and_wait_restart,
    kv_record_keys,
    wait_dead,
    wait_for,
)
from serve_cleanup.core import records

pytestmark = pytest.mark.ray


def _aux(name: str):
    return Aux.options(
        name=name, namespace=TEST_NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote()


@serve.deployment(**DEPLOYMENT)
class Worker:
    def __init__(self, prefix: str) -> None:
        serve_cleanup.register(_aux(f"{prefix}-worker"), scope="deployment")

    def __call__(self) -> str:
        return "worker"


@serve.deployment(**DEPLOYMENT)
class Ingress:
    def __init__(self, prefix: str, worker=None) -> None:
        serve_cleanup.register(_aux(f"{prefix}-ingress"), scope="deployment")
        serve_cleanup.register(_aux(f"{prefix}-app"), scope="app")

    def __call__(self) -> str:
        return "ingress"


def _deploy(app: str, prefix: str, with_worker: bool = True) -> None:
    graph = Ingress.bind(prefix, Worker.bind(prefix)) if with_worker else Ingress.bind(prefix)
    serve.run(graph, name=app, route_prefix=f"/{app}")


def _get(name: str):
    return ray.get_actor(name, namespace=TEST_NAMESPACE)


def _cleanup_actors(*names: str) -> None:
    for name in names:
        try:
            ray.kill(_get(name), no_restart=True)
        except ValueError:
            pass


@pytest.fixture
def two_apps(durable_serve, unique):
    a, b = f"a-{unique}", f"b-{unique}"
    _deploy("app-a", a)
    _deploy("app-b", b)
    yield a, b
    _cleanup_actors(*(f"{p}-{k}" for p in (a, b) for k in ("worker", "ingress", "app")))


def test_delete_app_kills_its_app_and_deployment_actors_only(two_apps):
    a, b = two_apps
    doomed = [_get(f"{a}-{k}") for k in ("worker", "ingress", "app")]
    others = [_get(f"{b}-{k}") for k in ("worker", "ingress", "app")]
    assert len(kv_record_keys()) == 6

    started = time.monotonic()
    serve.delete("app-a")
    for h in doomed:
        wait_dead(h, 15)
    print(f"\nowner deletion -> kill: {time.monotonic() - started:.2f}s after serve.delete returned")
    wait_for(lambda: len(kv_record_keys()) == 3, 10, "the dead app's records to go")
    assert_stays(
        lambda: all(actor_state(h._actor_id.hex()) == "ALIVE" for h in others),
        2.0,
        "the other app's actors alive",
    )


def test_upstream_reregistration_keeps_the_owner(two_apps):
    """A router re-registering its actor through the upstream method (serve scope) must
    not turn a deployment-scoped registration into a Serve-wide one, nor add a serve key
    beside its owner's (owner sets: the upstream method leaves a registered actor's
    owners alone)."""
    a, _ = two_apps
    worker = _get(f"{a}-worker")
    worker_keys = [k for k in kv_record_keys() if k.startswith(records.actor_prefix(worker._actor_id.hex()))]
    assert len(worker_keys) == 1
    ray.get(controller_handle()._register_shutdown_cleanup_actor.remote(worker))
    (record,) = [r for r in serve_cleanup.list_registrations() if r.actor_id == worker._actor_id.hex()]
    assert (record.scope, record.app, record.deployment) == ("deployment", "app-a", "Worker")
    assert record.owners == (("deployment", "app-a", "Worker"),)
    assert [k for k in kv_record_keys() if k.startswith(records.actor_prefix(worker._actor_id.hex()))] == worker_keys
    serve.delete("app-a")
    wait_dead(worker, 15)


def test_redeploy_without_deployment_kills_only_its_actors(two_apps):
    a, _ = two_apps
    worker, ingress, app_scoped = (_get(f"{a}-{k}") for k in ("worker", "ingress", "app"))
    _deploy("app-a", a, with_worker=False)  # same app, Worker dropped
    wait_dead(worker, 15)
    assert_stays(
        lambda: actor_state(ingress._actor_id.hex()) == "ALIVE"
        and actor_state(app_scoped._actor_id.hex()) == "ALIVE",
        2.0,
        "the surviving deployment's and the app's actors alive",
    )


def test_unregister_then_shutdown_leaves_actor_alive(durable_serve, actors):
    keep, drop = actors(), actors()
    serve_cleanup.register(keep)
    serve_cleanup.register(drop)
    assert serve_cleanup.unregister(keep) is True
    assert serve_cleanup.unregister(keep) is False  # unknown now: no error
    assert serve_cleanup.unregister("ab" * 16) is False
    serve.shutdown()
    wait_dead(drop)
    assert actor_state(keep._actor_id.hex()) == "ALIVE"
    assert kv_record_keys() == []


def test_owner_must_exist(durable_serve, actors, unique):
    _deploy("app-x", unique, with_worker=False)
    aux = actors()
    with pytest.raises(serve_cleanup.OwnerNotFoundError, match="does not exist"):
        serve_cleanup.register(aux, scope="app", app="no-such-app")
    with pytest.raises(serve_cleanup.OwnerNotFoundError, match="Ingress"):
        serve_cleanup.register(aux, scope="deployment", app="app-x", deployment="NoSuch")
    with pytest.raises(ValueError, match="outside a Serve replica"):
        serve_cleanup.register(aux, scope="app")
    with pytest.raises(ValueError, match="takes no app"):
        serve_cleanup.register(aux, scope="serve", app="app-x")
    record = serve_cleanup.register(aux, scope="deployment", app="app-x", deployment="Ingress")
    assert (record.scope, record.app, record.deployment) == ("deployment", "app-x", "Ingress")
    _cleanup_actors(f"{unique}-ingress", f"{unique}-app")


def test_deletion_while_controller_down_is_collected_after_restart(slow_reconcile_serve, unique):
    _deploy("app-d", unique)
    worker = _get(f"{unique}-worker")
    # The replica registered it; on a busy machine its process may still be starting.
    wait_for(lambda: actor_state(worker._actor_id.hex()) == "ALIVE", 30, "the worker to start")
    serve.delete("app-d")
    # No reconcile ran since the deletion; the orphan is still alive.
    assert actor_state(worker._actor_id.hex()) == "ALIVE"
    kill_controller_and_wait_restart()
    wait_dead(worker, 15)
    wait_for(lambda: kv_record_keys() == [], 10, "the orphans' records to go")
