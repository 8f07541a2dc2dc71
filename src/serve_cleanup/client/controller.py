"""Finding the Serve controller from a connected process, and which kind it is."""

from __future__ import annotations

from typing import Literal, Optional

import ray
from ray.actor import ActorHandle

from serve_cleanup._startup import is_durable_controller_module
from serve_cleanup.serve_adapter import _ray

ControllerKind = Literal["durable", "plain", "none"]


def connect() -> None:
    """Connect to the running cluster like Serve's own APIs do."""
    if not ray.is_initialized():
        ray.init(namespace=_ray.SERVE_NAMESPACE)


def find_controller() -> Optional[ActorHandle]:
    """The Serve controller actor, or None if Serve is not running."""
    try:
        return ray.get_actor(_ray.SERVE_CONTROLLER_NAME, namespace=_ray.SERVE_NAMESPACE)
    except ValueError:
        return None


def controller_kind(handle: Optional[ActorHandle] = None) -> ControllerKind:
    """``"durable"``, ``"plain"`` (upstream Serve) or ``"none"``.

    Decided from the class the handle was created from (no RPC), by the switch's one
    rule (``_startup.is_durable_controller_module``).
    """
    handle = handle if handle is not None else find_controller()
    if handle is None:
        return "none"
    return "durable" if is_durable_controller_module(_ray.handle_class_module(handle)) else "plain"
