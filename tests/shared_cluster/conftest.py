"""Fixtures for the tests on the session's shared local cluster (defined in ray_helpers)."""

from ray_helpers import (  # noqa: F401  (pytest finds fixtures by name here)
    _ray_down_at_exit,
    actors,
    durable_serve,
    fresh_durable_serve,
    no_serve,
    plain_serve,
    ray_cluster,
    slow_reconcile_serve,
    unique,
)
