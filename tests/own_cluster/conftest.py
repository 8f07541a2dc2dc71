"""Fixtures for the tests that start clusters of their own (one cluster at a time on this
machine: each stops the session's shared cluster first)."""

from ray_env import _ray_down_at_exit  # noqa: F401  (pytest finds fixtures by name here)
from ray_helpers import redis_address  # noqa: F401
