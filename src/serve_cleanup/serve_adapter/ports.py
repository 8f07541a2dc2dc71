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
from serve_cleanup.core.ports import LIVE_STATES, PG_LIVE_STATES, ActorInfo, ServeState
from serve_cleanup.core.records import KIND_ACTOR, KIND_PLACEMENT_GROUP, Record

BY_ID_MAX = 16  # ids missing from the ALIVE set looked up one by one; more: bulk reads
REMOVALS_IN_FLIGHT = 8  # placement group removals sent at once (each a blocking GCS call)


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


def live_placement_groups(pg_ids: "set[str] | frozenset[str]", accessor: Any = None) -> dict[str, ActorInfo]:
    """Of ``pg_ids``, those not removed, with their entries: a lookup by id each for a
    few, one read of the placement group table for more. Blocking."""
    accessor = accessor or _ray.state_accessor()
    if len(pg_ids) <= BY_ID_MAX:
        infos = {pg_id: _ray.placement_group_info(pg_id, accessor) for pg_id in pg_ids}
    else:
        infos = dict(_ray.placement_groups_in(pg_ids, accessor))
    return {pg_id: info for pg_id, info in infos.items() if info is not None and info.state in PG_LIVE_STATES}


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

    async def lookup(self, actor_id: str, kind: str = KIND_ACTOR) -> Optional[ActorInfo]:
        find = _ray.actor_info if kind == KIND_ACTOR else _ray.placement_group_info
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, lambda: find(actor_id, self._get_accessor()))

    async def live(self, actor_ids: Collection[str], kind: str = KIND_ACTOR) -> dict[str, ActorInfo]:
        wanted = frozenset(actor_ids)
        if not wanted:
            return {}
        read = live_actors if kind == KIND_ACTOR else live_placement_groups
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, lambda: read(wanted, self._get_accessor()))


class RayKiller:
    """``ray.kill(no_restart=True)`` of exactly the recorded actor id: through a handle
    rebuilt from the handle bytes the record kept; or else one looked up by name and
    accepted only if its id is the recorded one; or else by the id alone, through GCS
    (``_ray.kill_by_id``): an anonymous actor whose value was unreadable (no handle
    bytes), or a handle Ray could not rebuild."""

    def __init__(self, logger: logging.Logger, gcs_address: Optional[str] = None) -> None:
        self._log = logger
        self._gcs_address = gcs_address
        self._removals: Optional[concurrent.futures.ThreadPoolExecutor] = None

    async def kill(self, record: Record) -> bool:
        if record.kind == KIND_PLACEMENT_GROUP:
            return self._remove(record.actor_id)
        handle = await self._handle_for(record)
        if handle is not None:
            ray.kill(handle, no_restart=True)
            return True
        address = self._gcs_address or ray.get_runtime_context().gcs_address
        sent = await asyncio.to_thread(_ray.kill_by_id, record.actor_id, address)
        if sent:
            self._log.info(f"serve_cleanup: killed actor {record.actor_id} by its id (no usable handle).")
        return sent

    async def terminate(self, record: Record) -> bool:
        """``__ray_terminate__`` through the record's handle (or its name): the actor runs
        its queued calls, then its ``__ray_shutdown__`` hook, and exits. False without a
        handle to exactly its id (the reaper kills it then)."""
        handle = await self._handle_for(record)
        if handle is None:
            return False
        handle.__ray_terminate__.remote()
        return True

    async def exited(self, where: dict[str, str]) -> set[str]:
        """Those whose worker process no longer answers at its address (one connect
        each, off the event loop)."""
        items = list(where.items())
        gone = await asyncio.to_thread(lambda: [_ray.process_exited(w) for _, w in items])
        return {a for (a, _), g in zip(items, gone) if g}

    async def kill_process(self, record: Record, where: str) -> None:
        await asyncio.to_thread(_ray.kill_worker_process, record.actor_id, where)

    def _remove(self, pg_id: str) -> bool:
        """Send the removal of placement group ``pg_id`` and return at once, as
        ``ray.kill`` does for an actor: the reaper confirms it in the placement group
        table (REMOVED) and retries one that is not. Up to ``REMOVALS_IN_FLIGHT`` removals
        run at once, off the event loop (each is a blocking GCS call)."""
        if self._removals is None:
            self._removals = concurrent.futures.ThreadPoolExecutor(
                REMOVALS_IN_FLIGHT, thread_name_prefix="serve_cleanup_pg")
        future = self._removals.submit(_ray.remove_placement_group, pg_id)

        def done(f: "concurrent.futures.Future[None]") -> None:
            if f.exception() is not None:
                self._log.warning(f"serve_cleanup: removing placement group {pg_id} failed: {f.exception()!r}")
        future.add_done_callback(done)
        return True

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


class GcsJobTable:
    """``JobTable`` over GCS's job RPC, asked with both skip flags (no submission info
    from the KV, no question to every live driver about its tasks). GCS reads its whole
    job table for it even when filtered: the core asks seldom (``CleanupCore.read_jobs``)."""

    def __init__(self, gcs_client: Any, timeout_s: float = 10.0) -> None:
        self._gcs = gcs_client
        self._timeout = timeout_s

    async def _jobs(self, job_id: Optional[str] = None) -> dict[str, bool]:
        """job id (hex) -> whether it has ended."""
        found = await self._gcs.async_get_all_job_info(
            job_or_submission_id=job_id, skip_submission_job_info_field=True,
            skip_is_running_tasks_field=True, timeout=self._timeout)
        return {jid.hex(): bool(data.is_dead) for jid, data in found.items()}

    async def ended(self, job_ids: Collection[str]) -> set[str]:
        jobs = await self._jobs()
        return {j for j in job_ids if jobs.get(j, True)}

    async def alive(self, job_id: str) -> bool:
        return (await self._jobs(job_id)).get(job_id) is False


class ServeFacts:
    """``Serve``: what the controller knows about its apps, deployments and own actors."""

    def __init__(self, controller: Any, controller_id: str, controller_job: str = "") -> None:
        self._controller = controller
        self.controller_id = controller_id
        self.controller_job = controller_job

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

    def is_own_placement_group(self, name: str, creator: str) -> bool:
        """Created by this controller (a restarted controller keeps its actor id), or
        named as Serve names a replica's or a gang's placement group. (Its namespace is
        the job's that started Serve, not ``serve``: not a sign.)"""
        return creator == self.controller_id or _ray.is_serve_placement_group_name(name)
