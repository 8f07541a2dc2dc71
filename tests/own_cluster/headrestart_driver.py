"""The drivers of ``test_head_restart.py``, each run as its own process.

A driver on the head's machine attaches to the head's raylet. So that no driver is
attached to the head that dies, the test process is never a driver of that cluster: it
runs this script once before the head dies (``setup``) and once after the new head is up
(``shutdown``). Each run prints one JSON line, prefixed ``RESULT ``, that the test reads.

    python headrestart_driver.py setup    GCS_ADDRESS durable|plain HTTP_PORT
    python headrestart_driver.py shutdown GCS_ADDRESS durable|plain IDS_JSON WAIT_S

Every actor this script creates lives on the worker node (custom resource
``worker_node``), so it survives the head node. Only Ray's and serve_cleanup's public API
is used, plus Ray's own actor table (``ray._private.state.actors``, Ray's debugging
accessor: the State API needs the dashboard, which this cluster runs without).
"""

from __future__ import annotations

import json
import sys
import time

import ray
from ray import serve

from waiting import TimedOut, wait_for  # tests/ is on this script's PYTHONPATH (see the test)

NAMESPACE = "serve-cleanup-headrestart"
APP = "hr-app"
CONTROLLER = ("SERVE_CONTROLLER_ACTOR", "serve")  # Serve's controller: name, namespace
ON_WORKER = {"worker_node": 1}  # the worker node's custom resource (see the test)

# The registered actors, by how they were registered, and the one that is not. Both
# scenarios run on one cluster, one after the other, so the named ones carry the mode
# ("hr-helper-plain"): the first scenario's bystander, and plain Serve's leaked actors,
# are still alive when the second one starts.
REPLICA_HELPER = "hr-helper"  # created and registered by a Serve replica (upstream method)
DRIVER_UPSTREAM = "driver-upstream"  # anonymous; this driver calls the upstream method
DURABLE_API = "hr-direct"  # named; serve_cleanup.register
BYSTANDER = "hr-bystander"  # never registered


@ray.remote(num_cpus=0)
class Helper:
    def ping(self) -> str:
        return "pong"

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


@serve.deployment(ray_actor_options={"num_cpus": 0, "resources": ON_WORKER})
class Registrant:
    """Registers a helper the way Ray's PrefixCacheAffinityRouter does."""

    def __init__(self, helper_name: str) -> None:
        helper = Helper.options(
            name=helper_name, namespace=NAMESPACE, lifetime="detached",
            get_if_exists=True, resources=ON_WORKER,
        ).remote()
        controller = ray.get_actor(*CONTROLLER)
        ray.get(controller._register_shutdown_cleanup_actor.remote(helper))

    def __call__(self, *args) -> str:
        return "ok"


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def actor_info(actor_id: str) -> dict:
    """State, node and pid from the GCS actor table; an id it does not hold is DEAD."""
    info = ray._private.state.actors(actor_id=actor_id)
    if not info:
        return {"state": "DEAD", "node": None, "pid": None}
    return {"state": info["State"], "node": info["Address"]["NodeID"], "pid": info["Pid"]}


def controller():
    try:
        return ray.get_actor(*CONTROLLER)
    except ValueError:  # no actor of that name: Serve is not running
        return None


def answering_controller():
    ctrl = controller()
    if ctrl is not None and ray.get(ctrl.check_alive.remote(), timeout=5) is None:
        return ctrl
    return None


def head_node_id() -> str:
    (head,) = [
        n["NodeID"] for n in ray.nodes()
        if n["Alive"] and "node:__internal_head__" in n["Resources"]
    ]
    return head


def setup(mode: str, http_port: int) -> None:
    import serve_cleanup

    serve_options = dict(
        proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": http_port}
    )
    if mode == "durable":
        serve_cleanup.start(**serve_options)
    else:
        serve.start(**serve_options)
    assert serve_cleanup.controller_kind() == mode, serve_cleanup.controller_kind()

    bystander = Helper.options(
        name=f"{BYSTANDER}-{mode}", namespace=NAMESPACE, lifetime="detached", resources=ON_WORKER
    ).remote()
    # The replica runs on the worker node and registers its helper while it starts.
    serve.run(Registrant.bind(f"{REPLICA_HELPER}-{mode}"), name=APP, route_prefix=None)
    ids = {REPLICA_HELPER: ray.get_actor(f"{REPLICA_HELPER}-{mode}", namespace=NAMESPACE)._actor_id.hex()}

    anonymous = Helper.options(lifetime="detached", resources=ON_WORKER).remote()
    ray.get(anonymous.ping.remote())
    ray.get(controller()._register_shutdown_cleanup_actor.remote(anonymous))
    ids[DRIVER_UPSTREAM] = anonymous._actor_id.hex()

    if mode == "durable":
        direct = Helper.options(
            name=f"{DURABLE_API}-{mode}", namespace=NAMESPACE, lifetime="detached", resources=ON_WORKER
        ).remote()
        ray.get(direct.ping.remote())
        serve_cleanup.register(direct)
        ids[DURABLE_API] = direct._actor_id.hex()

    ray.get(bystander.ping.remote())
    emit({
        "registered": ids,
        "bystander": bystander._actor_id.hex(),
        "actors": {a: actor_info(a) for a in [*ids.values(), bystander._actor_id.hex()]},
        "head": head_node_id(),
        "controller_node": actor_info(controller()._actor_id.hex())["node"],
        "records": sorted(r.actor_id for r in serve_cleanup.list_registrations()),
    })


def shutdown(mode: str, registered: list[str], bystander: str, wait_s: float) -> None:
    import serve_cleanup

    # The GCS re-creates the detached controller on the new head once it has marked the
    # old head dead; until then the name may resolve to the dead one, or not at all.
    ctrl = wait_for(answering_controller, wait_s, "the Serve controller to answer")
    answered_at = time.time()  # wall clock: the test compares it with the kill's
    before = {
        "head": head_node_id(),
        "controller_node": actor_info(ctrl._actor_id.hex())["node"],
        "controller_kind": serve_cleanup.controller_kind(),
        "records": sorted(r.actor_id for r in serve_cleanup.list_registrations()),
        "actors": {a: actor_info(a) for a in [*registered, bystander]},
    }

    t0 = time.monotonic()
    serve.shutdown()
    wait_for(lambda: controller() is None, wait_s, "the Serve controller to exit")
    shutdown_s = time.monotonic() - t0
    if mode == "durable":
        # The durable controller exits only once its records are gone, which it deletes
        # after the actor table says DEAD: nothing to wait for here, but do not rely on it.
        try:
            wait_for(lambda: all(actor_info(a)["state"] == "DEAD" for a in registered), wait_s,
                 "the registered actors to die")
        except TimedOut:
            pass  # the test reports the states
    else:
        # Plain Serve: a kill it sent would land within milliseconds. Watch for 3 s
        # whether any registered actor dies after the controller exited.
        try:
            wait_for(lambda: any(actor_info(a)["state"] == "DEAD" for a in registered), 3.0,
                     "a registered actor to die", interval_s=0.1)
        except TimedOut:
            pass  # none did: the test reports the states
    emit({
        "controller_answered_at": answered_at,
        "shutdown_s": round(shutdown_s, 1),
        "before": before,
        "after": {
            "controller": controller() is not None,
            "records": sorted(r.actor_id for r in serve_cleanup.list_registrations()),
            "actors": {a: actor_info(a) for a in [*registered, bystander]},
        },
    })


def main(argv: list[str]) -> None:
    command, gcs, mode = argv[1:4]
    ray.init(address=gcs, namespace=NAMESPACE, log_to_driver=False)
    try:
        if command == "setup":
            setup(mode, int(argv[4]))
        elif command == "shutdown":
            ids = json.loads(argv[4])
            shutdown(mode, ids["registered"], ids["bystander"], float(argv[5]))
        else:
            raise SystemExit(f"unknown command {command!r}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main(sys.argv)
