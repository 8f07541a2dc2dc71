"""Fixtures for the tests on the session's shared local cluster (defined in ray_env and
ray_helpers)."""

from ray_env import _ray_down_at_exit, ray_cluster  # noqa: F401  (pytest finds fixtures by name here)
from ray_helpers import (  # noqa: F401
    actors,
    durable_serve,
    plain_serve,
    slow_reconcile_serve,
    unique,
)
