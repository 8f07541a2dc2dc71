"""Fixtures for the chaos test (defined in ray_helpers)."""

from ray_helpers import _ray_down_at_exit, no_serve, ray_cluster  # noqa: F401  (pytest finds fixtures by name here)
