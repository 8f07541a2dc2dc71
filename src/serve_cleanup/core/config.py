"""The core's tunables and the names of its crash points, in a module of their own so
that every part of the core can read them without importing the engine."""

from __future__ import annotations

from dataclasses import dataclass

# Where a test build may end the process (``Faults.reached``): right after a step that
# changed the KV, before the step that completes it.
CRASH_POINTS = (
    "after_record_write",  # a registration's record is in the KV; the call has not returned
    "after_refusal_decided",  # a registration was refused after its write; not taken back yet
    "after_lookup_before_drop",  # the sweep found records' actors gone; records not deleted yet
    "after_kill_before_delete",  # registered actors were killed; their records not deleted yet
    "mid_rehydrate",  # the controller is starting and has read some records
    "mid_graceful_exit",  # graceful exits asked for (deadlines stored), none forced yet
)


@dataclass(frozen=True)
class Config:
    reconcile_interval_s: float = 0.5  # owner reconcile, per tick
    liveness_interval_s: float = 5.0  # the sweep: one bulk read of the live set at most this often
    unknown_actor_wait_s: float = 2.0  # `register` waits this long for GCS to learn of its actor
    unknown_grace_s: float = 5.0  # an actor the table does not know is gone once its record is this old
    confirm_death_s: float = 5.0  # a killed actor must leave the live set within this
    bulk_drop_min: int = 64  # a drop of this many records uses prefix deletes (Registry.drop_bulk)
    shutdown_retry_s: float = 1.0  # pause between shutdown passes that left records
    shutdown_grace_s: float = 20.0  # then shutdown gives up on what is left (records stay)
    load_wait_s: float = 10.0  # a registration waits this long for the records to be read
    # Single-key deletes in flight at once, when records cannot go by prefix (a bucket
    # shared with a live record) or are fewer than bulk_drop_min. Measured (docs/reports/
    # benchmarks.md, "Delete concurrency"): 145-163 us a key at 16, 64, 256 or 1,024 in
    # flight alike, but the event loop stalls ~8 ms at 16 against ~100 ms at 256 and
    # ~200 ms at 1,024 while a chunk's replies arrive: the loop is Serve's too.
    deletes_in_flight: int = 16
    migrations_in_flight: int = 16  # v1 records rewritten as v2 at once, in the background
