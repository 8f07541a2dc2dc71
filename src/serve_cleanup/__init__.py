"""Durable shutdown-cleanup registrations for Ray Serve.

    import serve_cleanup
    serve_cleanup.start()                 # Serve, with the durable controller
    serve_cleanup.register(actor_handle)  # killed at serve.shutdown(), even after
                                          # the controller crashed and restarted
    await serve_cleanup.register_async(actor_handle)  # the same, in async code

``serve_cleanup.gc`` and ``serve_cleanup.gc_async`` are aliases of ``collect`` and
``collect_async``; they are not in ``__all__`` because ``from serve_cleanup import *``
would then shadow the standard library's ``gc``.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

from serve_cleanup._compat import SUPPORTED_RAY
from serve_cleanup.client import (
    ControllerKind,
    Scope,
    collect,
    collect_async,
    controller_kind,
    gc,
    gc_async,
    list_registrations,
    register,
    register_async,
    start,
    unregister,
    unregister_async,
)
from serve_cleanup.errors import (
    ControllerRunningError,
    ControllerUnavailableError,
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
from serve_cleanup.records import Record

try:
    __version__ = _distribution_version("serve-cleanup")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "SUPPORTED_RAY",
    "ControllerKind",
    "ControllerRunningError",
    "ControllerUnavailableError",
    "DeadActorError",
    "NotDurableControllerError",
    "OwnerNotFoundError",
    "PersistenceError",
    "Record",
    "RecordDecodeError",
    "RegistrationError",
    "Scope",
    "ServeCleanupError",
    "SystemActorError",
    "UnknownSchemaVersionError",
    "UnsupportedRayVersionError",
    "collect",
    "collect_async",
    "controller_kind",
    "list_registrations",
    "register",
    "register_async",
    "start",
    "unregister",
    "unregister_async",
]
