"""What every command shares: the exit codes, one-line failures, the Ray checks, the
driver connection, the options and arguments used by more than one command.

Importing this module imports neither Ray nor Serve; each helper imports what it needs
when a command calls it.
"""

from __future__ import annotations

import enum
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator, NoReturn, Optional

import click

RAY_INIT_ADDRESS_HELP = (
    "Address of the Ray cluster (host:port of the head node's GCS). Can also be set using "
    "the RAY_ADDRESS environment variable; 'auto' finds the latest `ray start` on this machine."
)


class Exit(enum.IntEnum):
    """Exit codes, the same for every command (docs/reference.md, "Exit codes")."""

    OK = 0  # status: the durable controller runs
    ERROR = 1  # anything else that went wrong (the message says what)
    USAGE = 2  # wrong arguments (click)
    PLAIN = 3  # a plain Ray Serve controller runs
    NO_SERVE = 4  # no Serve controller runs
    NO_CLUSTER = 5  # the Ray cluster cannot be reached
    NO_RAY = 6  # Ray is missing, broken or of an unsupported release here
    RECORDS_LEFT = 7  # shutdown: Serve is down but records remain in the KV
    TIMEOUT = 8  # shutdown: the controller still runs at the end of --timeout


KIND_EXIT = {"durable": Exit.OK, "plain": Exit.PLAIN, "none": Exit.NO_SERVE}

KIND_NAMES = {
    "durable": "durable (serve_cleanup)",
    "plain": "plain Ray Serve (registrations are NOT durable)",
    "none": "not running",
}


# --- failures -------------------------------------------------------------------------


class Failure(click.ClickException):
    """One ``Error: ...`` line and an exit code."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.exit_code = int(code)


@contextmanager
def failing_as(code: Exit = Exit.ERROR, errors: Optional[type[BaseException]] = None) -> Iterator[None]:
    """``errors`` (serve_cleanup's own by default) raised inside become a :class:`Failure`
    with their message and ``code``."""
    from serve_cleanup.errors import ServeCleanupError

    caught = ServeCleanupError if errors is None else errors
    try:
        yield
    except caught as e:
        raise Failure(code, str(e)) from None


def fail(e: BaseException) -> NoReturn:
    """An exception no command turned into a message: still one line, never a traceback."""
    from serve_cleanup.errors import ServeCleanupError

    if isinstance(e, ServeCleanupError):
        message = str(e)
    else:
        message = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    click.echo(f"Error: {message}", err=True)
    sys.exit(int(Exit.NO_CLUSTER if isinstance(e, ConnectionError) else Exit.ERROR))


# --- options and arguments -------------------------------------------------------------


def address_option(f: Any) -> Any:
    return click.option(
        "--address", "-a", default=os.environ.get("RAY_ADDRESS", "auto"), show_default=True,
        help=RAY_INIT_ADDRESS_HELP,
    )(f)


def json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(f)


def parse_actor_id(value: str, with_kind: bool = False) -> Any:
    """An id as typed on the command line, in the form records use (a usage error
    otherwise). ``with_kind``: ``(kind, id)``, where ``pg:<hex>`` names a placement group
    and a bare id (or ``actor:<hex>``) an actor (``records.parse_target``)."""
    from serve_cleanup.core.records import normalize_actor_id, parse_target

    try:
        return parse_target(value) if with_kind else normalize_actor_id(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def echo_json(obj: Any) -> None:
    import orjson

    sys.stdout.buffer.write(orjson.dumps(obj) + b"\n")
    sys.stdout.flush()


def waiting(what: str) -> Any:
    """The progress shown while a command waits for ``what`` (``progress.Waiting``)."""
    from serve_cleanup.cli.progress import Waiting

    return Waiting(what)


# --- Ray and the cluster -----------------------------------------------------------------


def ray_problem() -> Optional[str]:
    """Why Ray cannot be used from this Python, or None. Ray is imported only when its
    package metadata names a supported release."""
    from serve_cleanup.serve_adapter import versions

    version = versions.installed_ray_version()
    if version is None:
        return f"Ray is not installed in this Python ({sys.executable})"
    if not versions.is_supported(version):
        return f"ray {version} is installed, but serve_cleanup supports ray[serve]{versions.SUPPORTED_RAY}"
    try:
        import ray  # noqa: F401

        from serve_cleanup.serve_adapter import _ray  # noqa: F401
    except Exception as e:
        return f"ray {version} is installed but cannot be imported ({type(e).__name__}: {e})"
    return None


def need_ray(command: str) -> None:
    problem = ray_problem()
    if problem is not None:
        raise Failure(
            Exit.NO_RAY,
            f"{problem}; `serve-cleanup {command}` needs a supported Ray. (`enable`, `disable` "
            "and `status` work without it.)",
        )


def connect(address: str) -> None:
    """Connect as a Ray driver (for commands that call the controller)."""
    import logging

    import ray

    from serve_cleanup.serve_adapter import _ray

    try:  # WARNING: no "Connecting to existing Ray cluster" lines around the command's output
        ray.init(address=address, namespace=_ray.SERVE_NAMESPACE, log_to_driver=False,
                 logging_level=logging.WARNING)
    except ConnectionError as e:
        raise Failure(Exit.NO_CLUSTER, f"could not connect to Ray at {address!r}: {e}") from None


def cluster_reader(address: str) -> Any:
    """The cluster's GCS, read without a Ray driver (``client.gcs.ClusterReader``)."""
    from serve_cleanup.client.gcs import ClusterReader, ClusterUnreachableError

    try:
        return ClusterReader(address)
    except ClusterUnreachableError as e:
        raise Failure(Exit.NO_CLUSTER, str(e)) from None


def needs_durable(command: str) -> None:
    """Fail at once unless the durable controller runs (checked before any wait)."""
    from serve_cleanup.client.controller import controller_kind

    kind = controller_kind()
    if kind == "none":
        raise Failure(
            Exit.NO_SERVE,
            f"Serve is not running, so there is no controller to {command}. The records stay "
            "in the GCS KV (`serve-cleanup list` shows them) and the next durable controller "
            "adopts them; to delete one now, without starting Serve: "
            "`serve-cleanup purge <actor id>`.",
        )
    if kind == "plain":
        raise Failure(
            Exit.PLAIN,
            f"a plain Ray Serve controller runs; `{command}` needs the durable one (start Serve "
            "with `serve-cleanup start` after `serve shutdown`, or `serve-cleanup enable`).",
        )
