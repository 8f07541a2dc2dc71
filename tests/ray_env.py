"""The Ray side of the test session (integration and chaos tests only; the unit tests run
where Ray is not installed): at most one local Ray cluster at a time, shut down at the end."""

from __future__ import annotations

import os
from typing import Iterator

import pytest
import ray
from ray import serve

TEST_NAMESPACE = "serve-cleanup-tests"
TESTS = os.path.dirname(os.path.abspath(__file__))
# Replicas unpickle deployment classes defined in test modules by reference (module name,
# class name): every folder holding such modules (and the shared helpers here) must be on
# the workers' PYTHONPATH.
WORKER_PATHS = [TESTS] + [os.path.join(TESTS, d) for d in ("shared_cluster", "own_cluster", "chaos")]


def worker_pythonpath() -> str:
    """``WORKER_PATHS`` first, then whatever PYTHONPATH this process already had."""
    old = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in WORKER_PATHS]
    return os.pathsep.join(WORKER_PATHS + old)


def start_local_ray(**init_kwargs) -> None:
    """The local test cluster: 2 CPUs, no dashboard (the facts note's setup); a test that
    needs more (a metrics export port) passes it in ``init_kwargs``.

    ``address="local"`` always starts a new cluster, also where ``RAY_ADDRESS`` names
    another one (KubeRay pods set it): the tests never touch a cluster they did not start.
    """
    # The raylet (and so every worker) inherits this path from the driver.
    os.environ["PYTHONPATH"] = worker_pythonpath()
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, namespace=TEST_NAMESPACE,
        log_to_driver=False, **init_kwargs,
    )


def stop_ray() -> None:
    """Shut down Serve and disconnect (stopping the local cluster if this process owns it)."""
    if ray.is_initialized():
        try:
            serve.shutdown()
        except Exception:
            pass
        ray.shutdown()


@pytest.fixture
def ray_cluster() -> Iterator[None]:
    """A local Ray cluster, started on first use and kept for the session (fast), unless a
    test with its own cluster (multi-node, Redis) shut it down in between."""
    if not ray.is_initialized():
        start_local_ray()
    yield


@pytest.fixture(scope="session", autouse=True)
def _ray_down_at_exit() -> Iterator[None]:
    yield
    stop_ray()
