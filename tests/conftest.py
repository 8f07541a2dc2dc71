"""Shared by every test directory: at most one Ray cluster at a time, shut down at the end."""

from __future__ import annotations

import os
from typing import Iterator

import pytest
import ray
from ray import serve

TEST_NAMESPACE = "serve-cleanup-tests"
_HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-rounds", type=int, default=3,
        help="rounds of the chaos harness (CI runs a few; a long run is e.g. 100)",
    )
    parser.addoption("--chaos-seed", type=int, default=20261127, help="seed of the chaos harness")
    parser.addoption(
        "--sim-seeds", type=int, default=40,
        help="seeds of the core's simulation test (tests/unit/test_simulation.py); e.g. 2000 for a long run",
    )


def pytest_report_header(config: pytest.Config) -> str:
    ignored = f"; RAY_ADDRESS={os.environ['RAY_ADDRESS']!r} is ignored" if os.environ.get("RAY_ADDRESS") else ""
    return (
        f"ray {ray.__version__}: the Ray tests start their own local cluster "
        f"(ray.init(address='local')){ignored}, and shut Serve and it down at the end"
    )


def start_local_ray() -> None:
    """The local test cluster: 2 CPUs, no dashboard (the facts note's setup).

    ``address="local"`` always starts a new cluster, also where ``RAY_ADDRESS`` names
    another one (KubeRay pods set it): the tests never touch a cluster they did not start.
    """
    # Replicas unpickle deployment classes defined in test modules by reference; the
    # raylet (and so every worker) inherits this path from the driver.
    paths = [os.path.join(_HERE, d) for d in ("integration", "chaos")]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, namespace=TEST_NAMESPACE,
        log_to_driver=False,
    )


def stop_ray() -> None:
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
