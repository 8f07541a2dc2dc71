"""Reading the records and the actor table: from a connected process (the public
``list_registrations``), or straight from GCS without becoming a Ray driver (the CLI's
``list`` and ``status``).

:class:`ClusterReader` is what a probe needs: ``ray.init()`` would register a new driver
at every probe and start a local Ray where it finds none; this opens a bare GCS client
and a state accessor on the cluster's address, sends the cluster's auth token when this
machine has one (``_ray.use_cluster_token``), and reads:

* the records, with ``core.registry.read_all`` over ``serve_adapter.kv.AsyncKvStore`` (pages
  of keys, the next page requested while one is decoded);
* the actor states of many ids at once, from one bulk read of the live set
  (``serve_adapter.ports.live_actors``; never a lookup that scans the table per id);
* the Serve controller's actor-table entry, which says which class it runs: the durable
  controller's class module is one ``_startup.is_durable_controller_module`` accepts
  (its ``repr_name`` says so too).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any, Callable, Collection, Optional, TypeVar

from serve_cleanup._startup import is_durable_controller_module
from serve_cleanup.serve_adapter import _ray
from serve_cleanup.serve_adapter.kv import KvStore
from serve_cleanup.serve_adapter.ports import live_actors, live_placement_groups
from serve_cleanup.client.controller import ControllerKind, connect
from serve_cleanup.core import records as rec
from serve_cleanup.core.records import Record
from serve_cleanup.core.registry import SetAside, read_all

CONNECT_TIMEOUT_S = 10.0

T = TypeVar("T")


class ClusterUnreachableError(ConnectionError):
    """GCS could not be reached, or refused us (no cluster found, wrong address, no
    auth token). The message says which; ``address`` is the GCS address tried, if any."""

    def __init__(self, message: str, address: Optional[str] = None) -> None:
        super().__init__(message)
        self.address = address


def list_registrations() -> list[Record]:
    """Every durable registration, read from the GCS KV (works while the controller is
    down). Connects like Serve's own API if this process is not connected yet.

    Unreadable entries are skipped here; ``serve-cleanup status --detail`` reports them.
    """
    connect()
    return read_kv(_ray.driver_gcs_client())[0]


def read_kv(gcs_client: Any, *, slim: bool = False) -> tuple[list[Record], list[SetAside]]:
    """Records (oldest first) and set-aside entries as the GCS KV holds them now."""
    found, set_aside = asyncio.run(read_all(KvStore(gcs_client).aio, slim=slim))
    return sorted(found.values(), key=_oldest_first), list(set_aside.values())


def _oldest_first(r: Record) -> tuple[float, str]:
    pairs = r.pairs
    return (pairs[0][1] if len(pairs) == 1 else r.registered_at), r.actor_id


def actor_states(actor_ids: list[str], accessor: Any = None, pg_ids: Collection[str] = ()) -> dict[str, str]:
    """Table state per id: ALIVE, RESTARTING, ..., DEAD (or not known to the table) for
    an actor; CREATED, PENDING, ..., REMOVED for the placement groups of ``pg_ids``; or
    UNKNOWN when the table cannot be read. One bulk read of the live set per kind,
    however many ids (never a scan per id). ``accessor``: this process's own if None."""
    pgs = frozenset(pg_ids)
    try:
        live = live_actors(frozenset(actor_ids) - pgs, accessor)
        if pgs:
            live.update(live_placement_groups(pgs, accessor))
    except Exception:
        return {a: "UNKNOWN" for a in actor_ids}
    return {a: live[a].state if a in live else ("REMOVED" if a in pgs else "DEAD") for a in actor_ids}


def kind_of_entry(facts: Optional[dict[str, Any]]) -> ControllerKind:
    """The controller kind from its actor-table entry (``_ray.entry_facts``)."""
    if facts is None:
        return "none"
    return "durable" if is_durable_controller_module(facts["module"]) else "plain"


class ClusterReader:
    """The cluster's GCS, read without a Ray driver. Raises ``ClusterUnreachableError``
    (at construction) when GCS cannot be reached within ``timeout_s``."""

    def __init__(self, address: Optional[str], timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        try:
            gcs_address = _ray.resolve_gcs_address(address)
        except ValueError as e:
            raise ClusterUnreachableError(f"{address!r} is not a Ray cluster address (host:port): {e}") from None
        if gcs_address is None:
            raise ClusterUnreachableError(
                "no running Ray cluster found: pass --address host:port (the head node's GCS "
                "port, 6379 by default) or set RAY_ADDRESS"
            )
        self.address = gcs_address
        self._timeout = timeout_s
        host, _, port = gcs_address.rpartition(":")
        try:  # a refused or unroutable address fails here at once, not after Ray's 40 s
            socket.create_connection((host.strip("[]"), int(port)), timeout=min(timeout_s, 5.0)).close()
        except (OSError, ValueError) as e:
            raise ClusterUnreachableError(f"cannot reach GCS at {gcs_address}: {e}", gcs_address) from None
        _ray.use_cluster_token()

        def open_clients() -> tuple[Any, Any]:
            return _ray.bare_gcs_client(gcs_address), _ray.bare_state_accessor(gcs_address)

        self._gcs, self._accessor = self._bounded(open_clients, f"connecting to GCS at {gcs_address}")

    def _bounded(self, fn: Callable[[], T], what: str) -> T:
        """Run a blocking GCS call with a deadline (Ray's clients retry for up to a
        minute on their own). A call that overruns is left to finish in its thread."""
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["value"] = fn()
            except BaseException as e:  # handed to the caller
                result["error"] = e

        worker = threading.Thread(target=run, daemon=True, name="serve_cleanup_gcs")
        worker.start()
        worker.join(self._timeout)
        if worker.is_alive():
            raise ClusterUnreachableError(f"{what}: no answer within {self._timeout:g}s", self.address)
        if "error" in result:
            e = result["error"]
            if isinstance(e, Exception):
                raise ClusterUnreachableError(f"{what}: {type(e).__name__}: {e}", self.address) from None
            raise e
        return result["value"]

    def controller(self) -> Optional[dict[str, Any]]:
        """The Serve controller's actor-table entry (``_ray.entry_facts``) plus its
        ``kind``, or None if Serve is not running."""
        entry = self._bounded(
            lambda: _ray.named_actor_entry(_ray.SERVE_CONTROLLER_NAME, _ray.SERVE_NAMESPACE, self._accessor),
            "reading the actor table",
        )
        if entry is None:
            return None
        facts = _ray.entry_facts(entry)
        return {"kind": kind_of_entry(facts), **facts}

    def record_count(self) -> int:
        """Keys under the record prefix (set-aside entries included): one KV request."""
        keys = self._bounded(
            lambda: KvStore(self._gcs, self._timeout).keys(rec.KEY_PREFIX),
            "listing the records",
        )
        return len(keys)

    def records(self) -> tuple[list[Record], list[SetAside]]:
        """Every record (without its handle bytes) and every set-aside entry."""
        return self._bounded(lambda: read_kv(self._gcs, slim=True), "reading the records")

    def states(self, actor_ids: list[str], pg_ids: Collection[str] = ()) -> dict[str, str]:
        return actor_states(actor_ids, self._accessor, pg_ids)
