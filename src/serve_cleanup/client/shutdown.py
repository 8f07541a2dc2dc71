"""Shutting Serve down to the end, and saying what is left (``serve_cleanup.shutdown``).

Serve's own ``serve.shutdown()`` can do nothing at all: in a process that already talked
to Serve it asks the controller ``check_alive`` with a 5 s timeout, and when a controller
that was just restarted (or is busy) does not answer in time it logs "Nothing to shut
down" and returns, leaving Serve and every registered actor alive. This module instead:

1. waits for the controller to answer (bounded by ``timeout_s``),
2. asks it to shut down (``graceful_shutdown(wait=False)``), and repeats that while a
   controller runs (a controller restarted mid-shutdown is asked again), until the
   controller actor is gone: that is when Serve's shutdown has finished, the durable
   controller's kills included;
3. compares the records before and after: which registered actors were killed, which
   were dead already, and which records the KV still holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import ray

from serve_cleanup.serve_adapter import _ray
from serve_cleanup.serve_adapter.kv import KvStore
from serve_cleanup.client.args import check_timeout
from serve_cleanup.client.controller import ControllerKind, connect, controller_kind, find_controller
from serve_cleanup.client.gcs import actor_states, read_kv
from serve_cleanup.core import records as rec
from serve_cleanup.core.records import Record
from serve_cleanup.core.reaper import Outcome
from serve_cleanup.errors import ControllerUnavailableError

DEFAULT_SHUTDOWN_TIMEOUT_S = 120.0
_POLL_S = 0.5
_CALL_TIMEOUT_S = 2.0  # one check_alive / graceful_shutdown call; a longer wait just asks again


@dataclass(frozen=True)
class ShutdownReport:
    """What ``shutdown()`` did. ``killed`` and ``already_dead`` hold records the KV held
    when it started and no longer holds (their ``Outcome``: the actor was alive before and
    is dead now, or was dead before); ``left`` the records the KV still holds, with the
    actor state of each in ``states``."""

    controller: ControllerKind  # which controller ran when the shutdown started
    killed: list[Record] = field(default_factory=list)
    already_dead: list[Record] = field(default_factory=list)
    left: list[Record] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        """Serve is down and no record is left."""
        return not self.left

    def outcome(self, record: Record) -> str:
        """The ``Outcome`` name of a record that is gone."""
        return (Outcome.KILLED if record in self.killed else Outcome.ALREADY_DEAD).value


def shutdown(
    *, timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S, waiting: Optional[Callable[[str], None]] = None,
) -> ShutdownReport:
    """Shut Serve down and wait until its controller is gone; report what was killed and
    which records are left (a record left means an actor that could not be killed, or a
    plain controller that ignored the records: ``serve-cleanup list`` shows them,
    ``serve-cleanup purge`` deletes them).

    Raises ``ControllerUnavailableError`` if the controller still runs after ``timeout_s``
    (it did not answer, or its shutdown is still under way). ``waiting(what)`` is called
    each time it starts waiting for something else. Connects like Serve's own API if
    this process is not connected yet. Blocks.
    """
    timeout_s = check_timeout(timeout_s)
    began = time.monotonic()
    deadline = began + timeout_s
    connect()
    gcs = _ray.driver_gcs_client()
    before, _ = read_kv(gcs, slim=True)
    live_before = actor_states([r.actor_id for r in before])
    handle = find_controller()
    kind = controller_kind(handle)
    phase = ""

    def wait_for(what: str) -> None:
        nonlocal phase
        if what != phase and waiting is not None:
            waiting(what)
        phase = what

    while handle is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ControllerUnavailableError(
                f"the Serve controller was still running after {timeout_s:g}s (waiting for "
                f"{phase or 'it to answer'}). Run `serve-cleanup shutdown` again (it picks up "
                "where this one stopped), or see `serve-cleanup status --detail`."
            )
        try:
            ray.get(handle.check_alive.remote(), timeout=min(_CALL_TIMEOUT_S, remaining))
            ray.get(handle.graceful_shutdown.remote(False), timeout=min(_CALL_TIMEOUT_S, remaining))
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            wait_for("the Serve controller to answer")
        else:
            stored = _count_records(gcs)
            wait_for("Serve to finish shutting down" + ("" if stored is None else f" ({stored} record(s) stored)"))
        time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))
        handle = find_controller()
    _ray.forget_serve_client()

    after, _ = read_kv(gcs, slim=True)
    remaining_ids = {r.actor_id for r in after}
    states = actor_states([r.actor_id for r in before if r.actor_id not in remaining_ids] + [r.actor_id for r in after])
    gone = [r for r in before if r.actor_id not in remaining_ids]
    return ShutdownReport(
        controller=kind,
        # A record gone while its actor lives on was unregistered meanwhile: neither.
        killed=[r for r in gone if live_before.get(r.actor_id) != "DEAD" and states.get(r.actor_id) == "DEAD"],
        already_dead=[r for r in gone if live_before.get(r.actor_id) == "DEAD"],
        left=after,
        states=states,
        seconds=time.monotonic() - began,
    )


def _count_records(gcs: object) -> Optional[int]:
    """Keys under the record prefix (one KV request), or None if GCS did not answer."""
    try:
        return len(KvStore(gcs, timeout_s=5).keys(rec.KEY_PREFIX))
    except Exception:
        return None
