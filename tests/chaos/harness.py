"""Chaos harness: register actors while the Serve controller is killed at random moments.

Each round, on a fresh durable Serve instance:

1. deploy an app whose 2 replicas register actors on request;
2. create unregistered *bystander* actors;
3. concurrently: driver threads register actors with ``serve_cleanup.register``, replicas
   register actors they create, and a killer crashes the controller
   (``ray.kill(controller, no_restart=False)``) at seeded random moments;
4. ``serve.shutdown()``, in half the rounds with another controller kill in the middle.

Then the promise is checked: every actor whose registration call *returned* is dead
(else "leaked"), every bystander is alive (else "wrongly killed"), no record is left in
the KV, and the controller restarted no more often than it was killed (no crash loop).

Run standalone (starts its own local Ray)::

    python tests/chaos/harness.py --rounds 100 --seed 20261127

or through pytest (``pytest tests/chaos --chaos-rounds 100``).
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional

import ray
from ray import cloudpickle, serve

import serve_cleanup
from serve_cleanup import _compat, client, records
from serve_cleanup.store import GcsRecordStore

# Workers need not import this file: ship its classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

NAMESPACE = "serve-cleanup-chaos"


@ray.remote(num_cpus=0)
class Payload:
    def ping(self) -> str:
        return "pong"


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0})
class Registrant:
    """A replica that creates and registers actors, like a router would."""

    def spawn(self, n: int, tag: str) -> list[tuple[object, bool]]:
        out = []
        for i in range(n):
            opts = {"lifetime": "detached"}
            if i % 2 == 0:
                opts.update(name=f"{tag}-{i}", namespace=NAMESPACE)
            actor = Payload.options(**opts).remote()
            ray.get(actor.ping.remote())
            try:
                serve_cleanup.register(actor, timeout_s=60)
                ok = True
            except Exception:  # any failure: not "returned", so no promise to check
                ok = False
            out.append((actor, ok))
        return out


@dataclass
class Config:
    drivers: int = 2            # driver threads registering
    per_driver: int = 3         # actors each driver thread registers
    per_replica_call: int = 2   # actors each replica call registers
    replica_calls: int = 2
    kills: tuple = (1, 3)       # controller kills during registration: min, max
    kill_window_s: float = 2.0  # kills land at uniform times in this window
    bystanders: int = 2
    timeout_s: float = 90.0


@dataclass
class Totals:
    rounds: int = 0
    registrations: int = 0
    failed_calls: int = 0
    kills: int = 0
    leaked: list = field(default_factory=list)
    wrongly_killed: list = field(default_factory=list)
    records_left: int = 0
    crash_loops: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.leaked or self.wrongly_killed or self.records_left or self.crash_loops)

    def summary(self, seed: int) -> str:
        return (
            f"chaos: rounds={self.rounds} registrations={self.registrations} "
            f"kills={self.kills} leaked={len(self.leaked)} wrongly_killed={len(self.wrongly_killed)} "
            f"records_left={self.records_left} crash_loops={self.crash_loops} "
            f"failed_calls={self.failed_calls} seed={seed} seconds={self.seconds:.0f}"
        )


def _wait(predicate: Callable[[], object], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except Exception:
            pass
        time.sleep(0.05)
    return False


def _state(actor_id: str) -> str:
    info = _compat.lookup_actor_sync(_compat.driver_gcs_client(), actor_id, 5.0)
    return "DEAD" if info is None else info.state


def _controller():
    return ray.get_actor(_compat.SERVE_CONTROLLER_NAME, namespace=_compat.SERVE_NAMESPACE)


def _record_keys() -> list[str]:
    return list(GcsRecordStore(_compat.driver_gcs_client()).scan(records.KEY_PREFIX))


def run_round(rng: random.Random, cfg: Config, totals: Totals, log: Callable[[str], None]) -> None:
    tag = uuid.uuid4().hex[:6]
    serve.shutdown()
    serve_cleanup.start()
    ctrl_id = _controller()._actor_id.hex()
    handle = serve.run(Registrant.bind(), name="chaos", route_prefix=None)

    bystanders = [
        Payload.options(name=f"by-{tag}-{i}", namespace=NAMESPACE, lifetime="detached").remote()
        if i % 2 == 0
        else Payload.options(lifetime="detached").remote()
        for i in range(cfg.bystanders)
    ]
    ray.get([b.ping.remote() for b in bystanders])

    returned: list[str] = []      # registration call returned: must be dead after shutdown
    attempted: list = []          # every actor made for registration (cleaned up at the end)
    lock = threading.Lock()
    failed = [0]

    def driver(i: int) -> None:
        for k in range(cfg.per_driver):
            opts = {"lifetime": "detached"}
            if (i + k) % 2 == 0:
                opts.update(name=f"drv-{tag}-{i}-{k}", namespace=NAMESPACE)
            actor = Payload.options(**opts).remote()
            with lock:
                attempted.append(actor)
            try:
                ray.get(actor.ping.remote())
                serve_cleanup.register(actor, timeout_s=60)
                with lock:
                    returned.append(actor._actor_id.hex())
            except Exception:
                with lock:
                    failed[0] += 1

    replica_results: list = []

    def replicas() -> None:
        refs = [handle.spawn.remote(cfg.per_replica_call, f"rep-{tag}-{j}") for j in range(cfg.replica_calls)]
        for ref in refs:
            try:
                replica_results.extend(ref.result(timeout_s=cfg.timeout_s))
            except Exception:
                with lock:
                    failed[0] += 1

    n_kills = rng.randint(*cfg.kills)
    kill_times = sorted(rng.uniform(0, cfg.kill_window_s) for _ in range(n_kills))

    landed = [0]  # kills whose ray.kill call went through

    def killer() -> None:
        started = time.monotonic()
        for t in kill_times:
            time.sleep(max(0.0, t - (time.monotonic() - started)))
            try:
                ray.kill(_controller(), no_restart=False)
                landed[0] += 1
            except Exception:
                pass

    threads = [threading.Thread(target=driver, args=(i,)) for i in range(cfg.drivers)]
    threads += [threading.Thread(target=replicas), threading.Thread(target=killer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(cfg.timeout_s)
    kills = landed[0]
    for actor, ok in replica_results:
        attempted.append(actor)
        if ok:
            returned.append(actor._actor_id.hex())

    # Shutdown, in half the rounds with a crash in the middle of it.
    kill_in_shutdown = rng.random() < 0.5
    delay = rng.uniform(0.0, 2.0)
    shutdown = threading.Thread(target=serve.shutdown)
    shutdown.start()
    if kill_in_shutdown:
        time.sleep(delay)
        try:
            ray.kill(_controller(), no_restart=False)
            kills += 1
        except Exception:
            pass  # shutdown already finished
    shutdown.join(cfg.timeout_s)
    if not _wait(lambda: client.find_controller() is None, cfg.timeout_s):
        raise AssertionError("the controller did not finish shutdown")

    leaked = [a for a in returned if not _wait(lambda a=a: _state(a) == "DEAD", 30)]
    wrongly = [b._actor_id.hex() for b in bystanders if _state(b._actor_id.hex()) != "ALIVE"]
    left = _record_keys()
    info = _compat.lookup_actor_sync(_compat.driver_gcs_client(), ctrl_id, 5.0)
    restarts = info.num_restarts if info else 0
    crash_loop = restarts > kills

    totals.rounds += 1
    totals.registrations += len(returned)
    totals.failed_calls += failed[0]
    totals.kills += kills
    totals.leaked += leaked
    totals.wrongly_killed += wrongly
    totals.records_left += len(left)
    totals.crash_loops += int(crash_loop)
    log(
        f"round {totals.rounds}: {len(returned)} registered, {kills} kills "
        f"({'one during shutdown' if kill_in_shutdown else 'none during shutdown'}), "
        f"{restarts} restarts, leaked {len(leaked)}, wrongly killed {len(wrongly)}, "
        f"records left {len(left)}"
    )

    # Clean up for the next round: everything this round made, and any stray records.
    for actor in attempted + bystanders:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:
            pass
    gcs = _compat.driver_gcs_client()
    for key in left:
        gcs.internal_kv_del((_compat.serve_kv_key_prefix() + key).encode(), False, _compat.SERVE_INTERNAL_KV_NAMESPACE)


def run(rounds: int, seed: int, cfg: Optional[Config] = None, log: Callable[[str], None] = print) -> Totals:
    """Run ``rounds`` rounds on the Ray cluster this process is connected to."""
    cfg = cfg or Config()
    rng = random.Random(seed)
    totals = Totals()
    started = time.monotonic()
    for _ in range(rounds):
        run_round(rng, cfg, totals, log)
    totals.seconds = time.monotonic() - started
    log(totals.summary(seed))
    return totals


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seed", type=int, default=20261127)
    p.add_argument("--address", default=None, help="a running cluster (default: start a local one)")
    args = p.parse_args(argv)
    if args.address:
        ray.init(address=args.address, namespace=NAMESPACE, log_to_driver=False)
    else:
        # address="local": a new cluster even where RAY_ADDRESS names another one.
        ray.init(address="local", num_cpus=2, include_dashboard=False, namespace=NAMESPACE, log_to_driver=False)
    try:
        totals = run(args.rounds, args.seed, log=lambda m: print(m, flush=True))
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0 if totals.ok else 1


if __name__ == "__main__":
    sys.exit(main())
