"""Fixtures for the integration tests (defined in ray_helpers, importable by tests)."""

from ray_helpers import (  # noqa: F401  (pytest finds fixtures by name here)
    actors,
    durable_serve,
    plain_serve,
    slow_reconcile_serve,
    unique,
)
