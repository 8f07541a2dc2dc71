"""The interfaces through which the Ray-free core reaches the world: one style, Protocols.

``engine.CleanupCore`` decides; these ports act. The durable controller plugs in the
Ray-backed implementations of ``serve_cleanup.serve_adapter`` (``ports``, ``kv``); the unit tests and the
simulation plug in fakes that delay, forget, fail and crash between any two steps
(``tests/no_ray/fakes.py``). Nothing here imports Ray.

===============  ==================================================================================
port             what the core asks of it
===============  ==================================================================================
``RecordStore``  bytes under keys (the GCS internal KV): put, delete, read many, list keys,
                 delete every key under a prefix in one request
``ActorTable``   what the actor (or placement group) table says: one by id (a hash lookup),
                 or which of many ids are not dead, read in bulk (never a scan per id)
``Killer``       send a kill (no restart) to exactly the recorded actor id, or remove
                 exactly the recorded placement group id
``Serve``        what Serve has (its state, its apps and deployments) and which actors are its own
``Clock``        monotonic time, wall time, sleep
``Metrics``      counters and gauges
``Faults``       crash points for tests (a real process exits there)
===============  ==================================================================================

``SystemClock``, ``NoMetrics`` and ``NoFaults`` are the implementations that need nothing
but the standard library.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass
from typing import Collection, Optional, Protocol, Union

from serve_cleanup.core.records import KIND_ACTOR, Record

Key = Union[str, bytes]

# Actor-table states that are not final: an actor in one of them may still run (or start).
LIVE_STATES = ("DEPENDENCIES_UNREADY", "PENDING_CREATION", "ALIVE", "RESTARTING")
# Placement-group states that are not final (REMOVED is).
PG_LIVE_STATES = ("PENDING", "PREPARED", "CREATED", "RESCHEDULING")
FINAL_STATES = ("DEAD", "REMOVED")  # an actor's, a placement group's


@dataclass(frozen=True)
class ActorInfo:
    """What the actor table (or the placement group table) says about one id."""

    actor_id: str
    name: str
    namespace: str
    state: str  # DEPENDENCIES_UNREADY, PENDING_CREATION, ALIVE, RESTARTING, DEAD; a
    # placement group's PENDING, PREPARED, CREATED, RESCHEDULING, REMOVED
    creator: str = ""  # a placement group's: the id of the actor that created it ("" if none)
    address: str = ""  # an actor's: where its worker process answers (opaque to the core)

    @property
    def dead(self) -> bool:
        return self.state in FINAL_STATES


class RecordStore(Protocol):
    """Bytes under keys. Keys are the package's own, below the store's fixed prefix; keys
    that come back are raw ``bytes`` (anyone can write a key that is not UTF-8). Every
    method raises on a failed request."""

    async def put(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` durably before returning."""

    async def delete(self, key: Key) -> None:
        """Remove ``key``; no error if it is absent."""

    async def get_many(self, keys: list[bytes]) -> dict[bytes, bytes]:
        """The values of those of ``keys`` that exist."""

    async def keys(self, prefix: Key) -> list[bytes]:
        """Every key that starts with ``prefix``."""

    async def delete_prefix(self, prefix: Key) -> int:
        """Delete every key that starts with ``prefix`` in one request; how many went. A
        key written under ``prefix`` while the request runs may be deleted too."""


class ActorTable(Protocol):
    """The actor table, and for ``kind="pg"`` the placement group table."""

    async def lookup(self, actor_id: str, kind: str = KIND_ACTOR) -> Optional[ActorInfo]:
        """The entry of ``actor_id`` (a lookup by id, whatever the table's size); None if
        the table does not know it."""

    async def live(self, actor_ids: Collection[str], kind: str = KIND_ACTOR) -> dict[str, ActorInfo]:
        """Of ``actor_ids``, those in a state that is not final (``LIVE_STATES``,
        ``PG_LIVE_STATES``), with their entries. An id left out is dead (removed), or not
        known to the table (yet). Read in bulk: the cost does not grow with the number
        of dead actors the table remembers."""


class Killer(Protocol):
    async def kill(self, record: Record) -> bool:
        """An actor (``record.kind``): send a kill (no restart) to the actor with exactly
        ``record.actor_id``, reached through ``record.handle`` (empty when the stored
        value was unreadable), else by name or by the id alone. A placement group: send
        its removal, by exactly ``record.actor_id``. False when nothing could be sent to
        that id. Returns once sent (the table says when it is done); must not block the
        event loop."""

    async def terminate(self, record: Record) -> bool:
        """Ask the actor with exactly ``record.actor_id`` to exit gracefully (Ray's
        ``__ray_terminate__``: its queued calls, then its ``__ray_shutdown__`` hook),
        through ``record.handle`` or its name. False when it cannot be reached that way
        (the caller kills it instead). Returns once sent; must not block the event loop.

        Ray marks such an actor DEAD in its table at once, while its process runs the
        hook: the table cannot tell when the exit has ended, ``exited`` can."""

    async def exited(self, where: dict[str, str]) -> set[str]:
        """Of the actors ``where`` maps to their process's address (``ActorInfo.address``),
        those whose process has ended."""

    async def kill_process(self, record: Record, where: str) -> None:
        """Force the process at ``where`` to end if it still runs exactly
        ``record.actor_id`` (a graceful exit past its deadline: Ray's table says DEAD, so
        ``kill`` no longer reaches it)."""


class JobTable(Protocol):
    """GCS's job table (Ray jobs: drivers). Its RPC reads the whole table even when
    filtered, so the core reads it at most once a liveness interval, and only while a job
    owns something."""

    async def ended(self, job_ids: Collection[str]) -> set[str]:
        """Those of ``job_ids`` that have ended, or that GCS does not know: one read."""

    async def alive(self, job_id: str) -> bool:
        """Whether the job ``job_id`` runs (for a registration naming it)."""


class NoJobs:
    """A ``JobTable`` for a core without one: every job runs (none ends)."""

    async def ended(self, job_ids: Collection[str]) -> set[str]:
        return set()

    async def alive(self, job_id: str) -> bool:
        return True


class ServeState(enum.Enum):
    RECOVERING = "recovering"  # Serve has not recovered its apps yet: owners unknown
    RUNNING = "running"
    SHUTTING_DOWN = "shutting_down"


class Serve(Protocol):
    controller_id: str  # the controller's own actor id: never registered
    controller_job: str  # the job that started Serve (its controller's): never an owner

    def state(self) -> ServeState: ...

    def live_owners(self, apps: set[str]) -> tuple[set[str], set[tuple[str, str]]]:
        """Of ``apps``, those Serve still has; and every (app, deployment) it has."""

    def is_own_actor(self, name: str, namespace: str) -> bool:
        """Whether an actor of that name is one of Serve's own (controller, proxy,
        replica, controller-managed deployment actor): never registered, never killed."""

    def is_own_placement_group(self, name: str, creator: str) -> bool:
        """Whether a placement group of that name, created by the actor ``creator``, is
        one of Serve's own (a replica's, a gang's): never registered, never removed."""


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class Metrics(Protocol):
    def registered(self, scope: str, kind: str = KIND_ACTOR) -> None: ...

    def killed(self, reason: str, kind: str = KIND_ACTOR, how: str = "forced") -> None: ...

    def kill_failed(self, reason: str, kind: str = KIND_ACTOR) -> None: ...

    def records(self, counts: dict[tuple[str, str], int], set_aside: int, by_kind: dict[str, int]) -> None:
        """``counts``: (actor or placement group, owner) pairs per ``(kind, scope)``;
        ``by_kind``: registrations per kind, each counted once."""

    def reconcile_duration(self, seconds: float) -> None: ...


class Faults(Protocol):
    def reached(self, point: str) -> None:
        """Called at each crash point (``engine.CRASH_POINTS``); a test build may end the
        process here."""


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class NoMetrics:
    def registered(self, scope: str, kind: str = KIND_ACTOR) -> None: ...

    def killed(self, reason: str, kind: str = KIND_ACTOR, how: str = "forced") -> None: ...

    def kill_failed(self, reason: str, kind: str = KIND_ACTOR) -> None: ...

    def records(self, counts: dict[tuple[str, str], int], set_aside: int, by_kind: dict[str, int]) -> None: ...

    def reconcile_duration(self, seconds: float) -> None: ...


class NoFaults:
    def reached(self, point: str) -> None: ...
