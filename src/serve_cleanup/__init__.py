"""Durable shutdown-cleanup registrations for Ray Serve.

    import serve_cleanup
    serve_cleanup.start()                 # Serve, with the durable controller
    serve_cleanup.register(actor_handle)  # killed at serve.shutdown(), even after
                                          # the controller crashed and restarted
"""

from serve_cleanup._compat import SUPPORTED_RAY
from serve_cleanup.client import (
    controller_kind,
    gc,
    list_registrations,
    register,
    start,
    unregister,
)
from serve_cleanup.errors import (
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

__version__ = "0.1.0"

__all__ = [
    "SUPPORTED_RAY",
    "ControllerUnavailableError",
    "DeadActorError",
    "NotDurableControllerError",
    "OwnerNotFoundError",
    "PersistenceError",
    "Record",
    "RecordDecodeError",
    "RegistrationError",
    "ServeCleanupError",
    "SystemActorError",
    "UnknownSchemaVersionError",
    "UnsupportedRayVersionError",
    "controller_kind",
    "gc",
    "list_registrations",
    "register",
    "start",
    "unregister",
]
