"""The core's ports, backed by Ray: the GCS actor table, ``ray.kill``, Serve. (The
record store is ``kv.AsyncKvStore``.)

Each is a few lines over ``_ray`` (the one module that touches Ray's private API).
Nothing here blocks the controller's event loop: KV requests are async GCS calls;
actor-table reads go through Ray's synchronous state accessor in one worker thread (a
lookup by id is a hash lookup in GCS; the asynchronous GCS call Ray's Python offers for
one id scans every actor GCS remembers, dead ones included); a kill only sends a
message; the rare by-name lookup, or kill by id, of an actor whose stored handle cannot
be rebuilt runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any, Collection, Optional

import ray

from serve_cleanup.serve_adapter import _ray
from serve_cleanup.core.ports import LIVE_STATES, ActorInfo, ServeState
from serve_cleanup.core.records import Record

BY_ID_MAX = 16  # ids missing from the ALIVE set looked up one by one; more: bulk reads


def live_actors(actor_ids: "set[str] | frozenset[str]", accessor: Any = None) -> dict[str, ActorInfo]:
    """Of ``actor_ids``, those in a state that is not final, with their entries. One read
    of the ALIVE actors; the few ids not found there are looked up by id, many of them by
    one read per other live state. Never a scan per id. Blocking."""
    accessor = accessor or _ray.state_accessor()
    found = _ray.actors_in_state("ALIVE", actor_ids, accessor)
    missing = actor_ids - found.keys()
    if not missing:
        return found
    if len(missing) <= BY_ID_MAX:
        for actor_id in missing:
            info = _ray.actor_info(actor_id, accessor)
            if info is not None and info.state in LIVE_STATES:
                found[actor_id] = info
        return found
    for state in LIVE_STATES:
        if state != "ALIVE":
            found.update(_ray.actors_in_state(state, missing, accessor))
    return found


class GcsActorTable:
    """``ActorTable`` over the state accessor, in one worker thread of its own (the
    accessor is a blocking client; one thread keeps its calls in order)."""

    def __init__(self, accessor: Any = None) -> None:
        self._accessor = accessor
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="serve_cleanup_gcs")

    def _get_accessor(self) -> Any:
        if self._accessor is None:
            self._accessor = _ray.state_accessor()
        return self._accessor

    async def lookup(self, actor_id: str) -> Optional[ActorInfo]:
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, lambda: _ray.actor_info(actor_id, self._get_accessor()))

    async def live(self, actor_ids: Collection[str]) -> dict[str, ActorInfo]:
        wanted = frozenset(actor_ids)
        if not wanted:
            return {}
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, lambda: live_actors(wanted, self._get_accessor()))


class RayKiller:
    """``ray.kill(no_restart=True)`` of exactly the recorded actor id: through a handle
    rebuilt from the handle bytes the record kept; or else one looked up by name and
    accepted only if its id is the recorded one; or else by the id alone, through GCS
    (``_ray.kill_by_id``): an anonymous actor whose value was unreadable (no handle
    bytes), or a handle Ray could not rebuild."""

    def __init__(self, logger: logging.Logger, gcs_address: Optional[str] = None) -> None:
        self._log = logger
        self._gcs_address = gcs_address

    async def kill(self, record: Record) -> bool:
        handle = await self._handle_for(record)
        if handle is not None:
            ray.kill(handle, no_restart=True)
            return True
        address = self._gcs_address or ray.get_runtime_context().gcs_address
        sent = await asyncio.to_thread(_ray.kill_by_id, record.actor_id, address)
        if sent:
            self._log.info(f"serve_cleanup: killed actor {record.actor_id} by its id (no usable handle).")
        return sent

    async def _handle_for(self, record: Record) -> Optional[Any]:
        if record.handle:
            try:
                handle = _ray.handle_from_bytes(record.handle)
                if _ray.actor_id_hex(handle) == record.actor_id:
                    return handle
            except Exception as e:
                self._log.debug(f"serve_cleanup: stored handle of {record.actor_id} unusable: {e!r}")
        if not record.name:
            return None
        try:
            handle = await asyncio.to_thread(ray.get_actor, record.name, namespace=record.namespace)
        except ValueError:
            return None
        return handle if _ray.actor_id_hex(handle) == record.actor_id else None


class ServeFacts:
    """``Serve``: what the controller knows about its apps, deployments and own actors."""

    def __init__(self, controller: Any, controller_id: str) -> None:
        self._controller = controller
        self.controller_id = controller_id

    def state(self) -> ServeState:
        if _ray.serve_shutting_down(self._controller):
            return ServeState.SHUTTING_DOWN
        if not _ray.serve_done_recovering(self._controller):
            return ServeState.RECOVERING
        return ServeState.RUNNING

    def live_owners(self, apps: set[str]) -> tuple[set[str], set[tuple[str, str]]]:
        return _ray.live_owners(self._controller, apps)

    def is_own_actor(self, name: str, namespace: str) -> bool:
        return _ray.is_serve_system_actor(name, namespace)
