"""The small interfaces through which the Ray-free core reaches the world.

``core.CleanupCore`` decides; these ports act. The durable controller plugs in Ray-backed
implementations (``ray_ports``); the unit tests plug in fakes that can delay, forget and
fail between any two steps (``tests/unit/fakes.py``). No Ray imports here.

==============  =============================================================================
port            what the core asks of it
==============  =============================================================================
``RecordStore`` put / delete / scan the KV records (``store.py``)
``ActorTable``  what the GCS actor table says about one actor id (``None``: not known [yet])
``Killer``      send a kill for exactly the recorded actor id (``False``: cannot reach it)
``Owners``      which apps and deployments Serve still has; whether Serve recovered or is
                shutting down
``Clock``       monotonic time, wall time, sleep
``Metrics``     counters and gauges (no-op by default)
==============  =============================================================================
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass
from typing import Optional, Protocol

from serve_cleanup.records import Record


@dataclass(frozen=True)
class ActorInfo:
    """What the GCS actor table says about one actor id."""

    actor_id: str
    name: str
    namespace: str
    state: str  # DEPENDENCIES_UNREADY, PENDING_CREATION, ALIVE, RESTARTING, DEAD
    node_id: str = ""
    num_restarts: int = 0

    @property
    def dead(self) -> bool:
        return self.state == "DEAD"


class ActorTable(Protocol):
    async def lookup(self, actor_id: str) -> Optional[ActorInfo]:
        """The table entry of ``actor_id``; None if the table does not know it. Raises on
        a failed lookup (GCS unreachable)."""

    async def snapshot(self) -> dict[str, ActorInfo]:
        """Every entry of the table, by actor id, in one read (for passes over many
        records). Raises on a failed read."""


class Killer(Protocol):
    async def kill(self, record: Record) -> bool:
        """Send a kill (no restart) to the actor with exactly ``record.actor_id``.

        False when no handle to that id can be had (the caller retries later). Must not
        block the event loop."""


class ServeState(enum.Enum):
    RECOVERING = "recovering"  # Serve has not recovered its apps yet: owners unknown
    RUNNING = "running"
    SHUTTING_DOWN = "shutting_down"


class Owners(Protocol):
    def state(self) -> ServeState: ...

    def live(self, apps: set[str]) -> tuple[set[str], set[tuple[str, str]]]:
        """Of ``apps``, those Serve still has; and every (app, deployment) it has."""


class Clock:
    """Real time. Tests substitute a clock whose ``sleep`` advances virtual time."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Metrics:
    """No-op metrics; ``metrics.ControllerMetrics`` exports them through Ray."""

    def registered(self, scope: str) -> None: ...

    def killed(self, reason: str) -> None: ...

    def kill_failed(self, reason: str) -> None: ...

    def records(self, counts: dict[str, int], set_aside: int) -> None: ...

    def reconcile_duration(self, seconds: float) -> None: ...
