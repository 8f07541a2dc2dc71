"""Shared by every test directory. Imports no Ray: the unit tests (the core, the simulation,
the switch) run where Ray is not installed; the Ray fixtures live in ray_helpers.py."""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-rounds", type=int, default=3,
        help="rounds of the chaos harness (CI runs a few; a long run is e.g. 100)",
    )
    parser.addoption("--chaos-seed", type=int, default=20261127, help="seed of the chaos harness")
    parser.addoption(
        "--sim-seeds", type=int, default=300,
        help="seeds of the core's simulation (tests/core/test_simulation.py); e.g. 100000 for a long run",
    )


def pytest_report_header(config: pytest.Config) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ray_version = version("ray")
    except PackageNotFoundError:
        return "ray: not installed (the unit tests run; the Ray tests need it)"
    ignored = f"; RAY_ADDRESS={os.environ['RAY_ADDRESS']!r} is ignored" if os.environ.get("RAY_ADDRESS") else ""
    return (
        f"ray {ray_version}: the Ray tests start their own local cluster "
        f"(ray.init(address='local')){ignored}, and shut Serve and it down at the end"
    )
