"""An app for the start-path tests: each replica registers a named detached helper the
way Ray's own PrefixCacheAffinityRouter does, through the upstream controller method.
Imported by Serve's workers from PYTHONPATH (set on `ray start`)."""

from __future__ import annotations

import ray
from ray import serve

HELPER_NAMESPACE = "serve-cleanup-startpaths"


@ray.remote(num_cpus=0)
class Helper:
    def ping(self) -> str:
        return "pong"


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Registrant:
    def __init__(self, helper: str) -> None:
        handle = Helper.options(
            name=helper, namespace=HELPER_NAMESPACE, lifetime="detached", get_if_exists=True
        ).remote()
        controller = ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
        ray.get(controller._register_shutdown_cleanup_actor.remote(handle))

    def __call__(self, *args) -> str:
        return "ok"


def app(args: dict) -> serve.Application:
    return Registrant.bind(args.get("helper", "startpath-helper"))
