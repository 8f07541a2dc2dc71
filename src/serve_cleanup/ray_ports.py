"""The core's ports, backed by Ray: the GCS actor table, ``ray.kill``, Serve's own state.

Each is a few lines over ``_compat`` (the one module that touches Ray's private API).
Nothing here blocks the controller's event loop: lookups are async GCS calls, a kill only
sends a message, and the rare by-name lookup of an actor whose stored handle cannot be
rebuilt runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Optional

import ray

from serve_cleanup import _compat
from serve_cleanup.ports import ActorInfo, ServeState
from serve_cleanup.records import Record

LOOKUP_TIMEOUT_S = 5.0


class GcsActorTable:
    def __init__(self, gcs: Any, timeout_s: float = LOOKUP_TIMEOUT_S) -> None:
        self._gcs = gcs
        self._timeout = timeout_s

    async def lookup(self, actor_id: str) -> Optional[ActorInfo]:
        return await _compat.lookup_actor(self._gcs, actor_id, self._timeout)

    async def snapshot(self) -> dict[str, ActorInfo]:
        return await _compat.all_actors(self._gcs, self._timeout * 6)


class RayKiller:
    """``ray.kill(no_restart=True)`` through a handle to exactly the recorded actor id:
    rebuilt from the handle bytes the record kept, or else looked up by name and
    accepted only if its id is the recorded one."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger

    async def kill(self, record: Record) -> bool:
        handle = await self._handle_for(record)
        if handle is None:
            return False
        ray.kill(handle, no_restart=True)
        return True

    async def _handle_for(self, record: Record) -> Optional[Any]:
        try:
            handle = _compat.handle_from_bytes(record.handle)
            if _compat.actor_id_hex(handle) == record.actor_id:
                return handle
        except Exception as e:
            self._log.debug(f"serve_cleanup: stored handle of {record.actor_id} unusable: {e!r}")
        if not record.name:
            return None
        try:
            handle = await asyncio.to_thread(ray.get_actor, record.name, namespace=record.namespace)
        except ValueError:
            return None
        return handle if _compat.actor_id_hex(handle) == record.actor_id else None


class ServeOwners:
    """What the controller knows about its apps and deployments."""

    def __init__(self, controller: Any) -> None:
        self._controller = controller

    def state(self) -> ServeState:
        if _compat.serve_shutting_down(self._controller):
            return ServeState.SHUTTING_DOWN
        if not _compat.serve_done_recovering(self._controller):
            return ServeState.RECOVERING
        return ServeState.RUNNING

    def live(self, apps: set[str]) -> tuple[set[str], set[tuple[str, str]]]:
        return _compat.live_owners(self._controller, apps)
