"""The durable controller's decisions, without Ray: importable and tested where Ray is not
installed (tests/no_ray/test_core_without_ray.py imports every module here with Ray blocked).

==================  ======================================================================
module              what it holds
==================  ======================================================================
``records``         the persisted record: schema, version, codec, key layout, the owner rule
``registry``        the records' in-memory mirror of the store, loading, bulk deletes
``admission``       which registrations are accepted
``reaper``          killing registered actors and dropping records of dead ones, in batches
``lifecycle``       the core's states and its one transition table
``engine``          ``CleanupCore``: registration, reconcile, sweep, gc, shutdown
``ports``           the interfaces the core acts through (Protocols)
``locks``           per-actor locks and the write gate
==================  ======================================================================
"""

from serve_cleanup.core.admission import Registration
from serve_cleanup.core.config import CRASH_POINTS, Config
from serve_cleanup.core.engine import CleanupCore
from serve_cleanup.core.lifecycle import State
from serve_cleanup.core.records import Record

__all__ = ["CRASH_POINTS", "CleanupCore", "Config", "Record", "Registration", "State"]
