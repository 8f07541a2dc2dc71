"""Exceptions raised by serve_cleanup. Each message says what happened and what to do.

Errors raised inside the controller reach the caller through Ray; the client unwraps
them, so callers catch these classes directly. Every class takes a single message
argument so Ray can rebuild it on the caller's side.
"""

from __future__ import annotations


class ServeCleanupError(Exception):
    """Base class of every serve_cleanup error."""


class UnsupportedRayVersionError(ServeCleanupError, ImportError):
    """The installed Ray is outside the range this package was tested with."""


class RecordDecodeError(ServeCleanupError, ValueError):
    """Bytes in the KV are not a registration record this code can read."""


class UnknownSchemaVersionError(RecordDecodeError):
    """A record was written by a newer serve_cleanup (a schema version we do not know)."""


class RegistrationError(ServeCleanupError):
    """A registration was refused. Nothing new is registered: a record already written is
    taken back (best effort; see docs/architecture.md, "Limits")."""


class DeadActorError(RegistrationError, ValueError):
    """The actor to register is already dead (or unknown to the cluster)."""


class SystemActorError(RegistrationError, ValueError):
    """The actor is one of Serve's own (controller, proxy, replica or controller-managed
    deployment actor); Serve manages those."""


class OwnerNotFoundError(RegistrationError, ValueError):
    """The app or deployment named as the registration's owner does not exist."""


class PersistenceError(RegistrationError):
    """The record could not be written to the GCS KV store; the registration did not happen."""


class ControllerUnavailableError(ServeCleanupError, TimeoutError):
    """No durable Serve controller answered within the timeout."""


class NotDurableControllerError(ServeCleanupError):
    """A plain Ray Serve controller runs where the durable one is needed."""


class ControllerVersionError(ServeCleanupError):
    """The running durable controller is an older serve_cleanup release than the call
    needs (a rolling upgrade whose controller is not upgraded yet); it refused the call
    before doing anything."""


class ControllerRunningError(ServeCleanupError):
    """A Serve controller runs, so the KV must not be edited behind its back
    (``serve-cleanup purge``)."""

    @classmethod
    def for_kind(cls, kind: str) -> "ControllerRunningError":
        return cls(
            f"a {kind} Serve controller is running; purge edits the KV only while Serve is "
            "down. With the durable controller use `serve-cleanup unregister <actor id>` or "
            "`serve-cleanup gc`; or run `serve shutdown` first."
        )
