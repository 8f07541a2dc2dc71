"""Ray's own PrefixCacheAffinityRouter registers its LlmPrefixTreeActor through the
upstream method; with the durable controller that registration survives a restart, and a
tree a user also registered with the router's app keeps that owner whatever the router
calls afterwards (issue 21's owner sets)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

# Ray's own router lives in ray.llm (importable without vLLM on every supported release,
# 2.54 to 2.60); skip, not fail, on an install without it.
pytest.importorskip("ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router")

from ray.serve.handle import DeploymentHandle

import serve_cleanup
from ray_helpers import (
    DEPLOYMENT,
    actor_state,
    assert_stays,
    controller_handle,
    crash_plain_controller_and_wait,
    kill_controller_and_wait_restart,
    kv_record_keys,
    wait_dead,
    wait_for,
)
from serve_cleanup.core import records
from serve_cleanup.serve_adapter import _ray

pytestmark = [pytest.mark.ray, pytest.mark.smoke]

# Imported from its own module: ray.serve.llm pulls in pyarrow, this does not.
ROUTER = "ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router.PrefixCacheAffinityRouter"


@serve.deployment(
    num_replicas=2,
    request_router_config=RequestRouterConfig(request_router_class=ROUTER),
    **DEPLOYMENT,
)
class Echo:
    def __call__(self, request: "Prompt") -> str:
        return request.prompt


@dataclass
class Prompt:
    """The router reads a request's ``prompt`` (or ``messages``) attribute."""

    prompt: str


def _tree_actor(app: str):
    namespace = f"{_ray.SERVE_NAMESPACE}::{app}::Echo"
    return wait_for(
        lambda: ray.get_actor("LlmPrefixTreeActor", namespace=namespace), 30, "the prefix tree actor"
    )


def _deploy_and_route(app: str):
    handle = serve.run(Echo.bind(), name=app, route_prefix=None)
    # The first request through the handle builds the router in this process.
    assert handle.remote(Prompt("hello world")).result(timeout_s=60) == "hello world"
    return _tree_actor(app)


def test_prefix_tree_actor_is_killed_after_controller_restart(durable_serve):
    tree = _deploy_and_route("prefix")
    tree_id = tree._actor_id.hex()
    wait_for(
        lambda: tree_id in {r.actor_id for r in serve_cleanup.list_registrations()},
        30,
        "the router's registration to be durable",
    )
    kill_controller_and_wait_restart()
    serve.shutdown()
    wait_dead(tree)


def _route_through_a_new_router(app: str) -> None:
    """A request through a handle of its own: Serve builds a new router for it, whose
    ``initialize_state`` calls the upstream method for the tree again (what a new proxy,
    a replica holding a handle, or any new process routing to the app does). Serve's
    ``get_app_handle`` would hand back its cached handle, and that handle's router."""
    handle = DeploymentHandle("Echo", app)
    assert handle.remote(Prompt("hello again")).result(timeout_s=60) == "hello again"


def test_a_prefix_tree_registered_with_its_app_dies_with_the_app(durable_serve):
    """The user adds the router's app as an owner of the tree; the router's later calls
    through the upstream method (new routers, also after a controller restart) leave
    that owner alone, and deleting the app kills the tree: it does not wait for
    shutdown."""
    app = "prefix-owned"
    tree = _deploy_and_route(app)
    tree_id = tree._actor_id.hex()
    owner = (records.SCOPE_APP, app, "")
    wait_for(
        lambda: tree_id in {r.actor_id for r in serve_cleanup.list_registrations()},
        30,
        "the router's registration",
    )
    record = serve_cleanup.register(tree, scope="app", app=app)
    assert record.owners == (owner,)

    def owners_in_kv() -> set:
        prefix = records.actor_prefix(tree_id)
        return {records.parse_key(k.encode()).owner for k in kv_record_keys() if k.startswith(prefix)}

    def still_owned() -> bool:
        (listed,) = [r for r in serve_cleanup.list_registrations() if r.actor_id == tree_id]
        return listed.owners == (owner,) and owners_in_kv() == {owner}  # no serve key came back

    assert still_owned()
    _route_through_a_new_router(app)
    # The router's call, as it makes it (and it made it from its own event loop above).
    ray.get(controller_handle()._register_shutdown_cleanup_actor.remote(tree))
    assert still_owned()
    kill_controller_and_wait_restart()  # the owner is read back from the key
    _route_through_a_new_router(app)
    ray.get(controller_handle()._register_shutdown_cleanup_actor.remote(tree))
    assert still_owned()

    serve.delete(app)
    wait_dead(tree, 15)
    wait_for(lambda: owners_in_kv() == set(), 10, "the tree's key to go")


def test_plain_serve_leaks_the_prefix_tree_actor(plain_serve):
    """Regression guard: upstream leaks it after one controller restart."""
    tree = _deploy_and_route("prefix-plain")
    crash_plain_controller_and_wait()
    serve.shutdown()
    try:
        assert_stays(lambda: actor_state(tree._actor_id.hex()) == "ALIVE", 3.0, "plain Serve leaks")
    finally:
        ray.kill(tree, no_restart=True)
