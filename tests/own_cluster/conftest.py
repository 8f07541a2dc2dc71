"""Fixtures for the tests that start clusters of their own (one cluster at a time on this
machine: each stops the session's shared cluster first; defined in ray_helpers)."""

from ray_helpers import _ray_down_at_exit, redis_address  # noqa: F401  (pytest finds fixtures by name here)
