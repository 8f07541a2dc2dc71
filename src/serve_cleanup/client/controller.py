"""Finding the Serve controller from a connected process, and which kind it is."""

from __future__ import annotations

from typing import Literal, Optional

import ray
from ray.actor import ActorHandle

from serve_cleanup import _compat

ControllerKind = Literal["durable", "plain", "none"]

# A method only the durable controller (and its subclasses) has; see controller.py.
MARKER_METHOD = "serve_cleanup_status"


def connect() -> None:
    """Connect to the running cluster like Serve's own APIs do."""
    if not ray.is_initialized():
        ray.init(namespace=_compat.SERVE_NAMESPACE)


def find_controller() -> Optional[ActorHandle]:
    """The Serve controller actor, or None if Serve is not running."""
    try:
        return ray.get_actor(_compat.SERVE_CONTROLLER_NAME, namespace=_compat.SERVE_NAMESPACE)
    except ValueError:
        return None


def controller_kind(handle: Optional[ActorHandle] = None) -> ControllerKind:
    """``"durable"``, ``"plain"`` (upstream Serve) or ``"none"``.

    Decided from the handle's method table (no RPC): the durable controller, or any
    subclass of it, has ``serve_cleanup_status``.
    """
    handle = handle if handle is not None else find_controller()
    if handle is None:
        return "none"
    return "durable" if _compat.handle_has_method(handle, MARKER_METHOD) else "plain"
