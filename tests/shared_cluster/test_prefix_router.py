"""Ray's own PrefixCacheAffinityRouter registers its LlmPrefixTreeActor through the
upstream method; with the durable controller that registration survives a restart."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

# Ray's own router lives in ray.llm (importable without vLLM on every supported release,
# 2.54 to 2.60); skip, not fail, on an install without it.
pytest.importorskip("ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router")

import serve_cleanup
from ray_helpers import DEPLOYMENT, actor_state, assert_stays, crash_plain_controller_and_wait, kill_controller_and_wait_restart, wait_dead, wait_for
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


def test_plain_serve_leaks_the_prefix_tree_actor(plain_serve):
    """Regression guard: upstream leaks it after one controller restart."""
    tree = _deploy_and_route("prefix-plain")
    crash_plain_controller_and_wait()
    serve.shutdown()
    try:
        assert_stays(lambda: actor_state(tree._actor_id.hex()) == "ALIVE", 3.0, "plain Serve leaks")
    finally:
        ray.kill(tree, no_restart=True)
