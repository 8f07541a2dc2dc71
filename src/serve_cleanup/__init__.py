"""Durable shutdown-cleanup registrations for Ray Serve.

    import serve_cleanup
    serve_cleanup.start()                 # Serve, with the durable controller
    serve_cleanup.register(actor_handle)  # killed at serve.shutdown(), even after
                                          # the controller crashed and restarted
    await serve_cleanup.register_async(actor_handle)  # the same, in async code
    serve_cleanup.shutdown()              # Serve's shutdown, driven to the end

Importing the package imports neither Ray nor Serve: each name below is loaded on first
use (PEP 562), so ``import serve_cleanup`` stays cheap and works where Ray is missing.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from serve_cleanup.serve_adapter.versions import SUPPORTED_RAY
from serve_cleanup.errors import (
    ControllerRunningError,
    ControllerUnavailableError,
    ControllerVersionError,
    DeadActorError,
    NotDurableControllerError,
    OwnerNotFoundError,
    PersistenceError,
    RecordDecodeError,
    RegistrationError,
    ServeCleanupError,
    SystemActorError,
    UnknownSchemaVersionError,
    UnsupportedRayVersionError,
)

if TYPE_CHECKING:
    from serve_cleanup.client.args import Scope
    from serve_cleanup.client.calls import (
        collect,
        collect_async,
        register,
        register_async,
        unregister,
        unregister_async,
    )
    from serve_cleanup.client.controller import ControllerKind, controller_kind
    from serve_cleanup.client.gcs import list_registrations
    from serve_cleanup.client.shutdown import ShutdownReport, shutdown
    from serve_cleanup.client.start import start
    from serve_cleanup.core.records import Record

_LAZY = {
    "ControllerKind": "serve_cleanup.client.controller",
    "Scope": "serve_cleanup.client.args",
    "collect": "serve_cleanup.client.calls",
    "collect_async": "serve_cleanup.client.calls",
    "controller_kind": "serve_cleanup.client.controller",
    "list_registrations": "serve_cleanup.client.gcs",
    "register": "serve_cleanup.client.calls",
    "register_async": "serve_cleanup.client.calls",
    "shutdown": "serve_cleanup.client.shutdown",
    "ShutdownReport": "serve_cleanup.client.shutdown",
    "start": "serve_cleanup.client.start",
    "unregister": "serve_cleanup.client.calls",
    "unregister_async": "serve_cleanup.client.calls",
    "Record": "serve_cleanup.core.records",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("serve-cleanup")
        except PackageNotFoundError:  # imported from a source tree that was never installed
            return "0+unknown"
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'serve_cleanup' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"__version__"})


__all__ = [
    "SUPPORTED_RAY",
    "ControllerKind",
    "ControllerRunningError",
    "ControllerUnavailableError",
    "ControllerVersionError",
    "DeadActorError",
    "NotDurableControllerError",
    "OwnerNotFoundError",
    "PersistenceError",
    "Record",
    "RecordDecodeError",
    "RegistrationError",
    "Scope",
    "ServeCleanupError",
    "ShutdownReport",
    "SystemActorError",
    "UnknownSchemaVersionError",
    "UnsupportedRayVersionError",
    "collect",
    "collect_async",
    "controller_kind",
    "list_registrations",
    "register",
    "register_async",
    "shutdown",
    "start",
    "unregister",
    "unregister_async",
]
