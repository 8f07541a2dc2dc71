"""Crash-point injection for testing, in the spirit of Serve's own
``_CRASH_AFTER_CHECKPOINT_PROBABILITY``. Off unless the controller's environment sets it.

``SERVE_CLEANUP_CRASH_POINTS``
    Comma-separated points at which the controller process exits hard (``os._exit``),
    right after a persistence step, so Ray restarts it:

    ``after_record_write``        a registration's record is in the KV, the actor not yet
                                  checked; the call has not returned (Ray retries it);
    ``after_refusal_decided``     a registration was refused after its write, the record
                                  not yet taken back;
    ``after_lookup_before_drop``  the liveness sweep found records' actors gone, the
                                  records not yet deleted;
    ``after_kill_before_delete``  registered actors were killed, their records not yet
                                  deleted;
    ``mid_rehydrate``             the controller is starting and has read some records.
``SERVE_CLEANUP_CRASH_PROBABILITY``
    Chance of crashing each time a listed point is reached (default 1.0).
``SERVE_CLEANUP_CRASH_REPEAT``
    ``0`` (default): each point crashes at most once per cluster, remembered in the GCS KV
    (so a crash at ``mid_rehydrate`` cannot crash-loop the controller). ``1``: every time.

Set them for the controller through ``serve_cleanup.start(controller_options={"runtime_env":
{"env_vars": {...}}})``.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Optional

from serve_cleanup.core.config import CRASH_POINTS
from serve_cleanup.serve_adapter.kv import KvStore

MARKER_PREFIX = "serve-cleanup-fault-"


def _configured(log: logging.Logger) -> frozenset[str]:
    raw = os.environ.get("SERVE_CLEANUP_CRASH_POINTS", "")
    points = frozenset(p.strip() for p in raw.split(",") if p.strip())
    unknown = points - set(CRASH_POINTS)
    if unknown:  # never raise here: it runs in the controller's constructor
        log.error(
            f"serve_cleanup: ignoring unknown SERVE_CLEANUP_CRASH_POINTS {sorted(unknown)}; "
            f"known: {CRASH_POINTS}"
        )
    return points & set(CRASH_POINTS)


class CrashPoints:
    """The core's ``Faults`` port: ``reached(point)`` exits the process when the
    environment asks for it."""

    def __init__(self, kv: Optional[KvStore] = None, logger: Optional[logging.Logger] = None) -> None:
        self._logger = logger or logging.getLogger(__name__)
        self._points = _configured(self._logger)
        try:
            self._probability = float(os.environ.get("SERVE_CLEANUP_CRASH_PROBABILITY", "1.0"))
        except ValueError:
            self._probability = 1.0
        self._repeat = os.environ.get("SERVE_CLEANUP_CRASH_REPEAT", "0") == "1"
        self._kv = kv

    def reached(self, point: str) -> None:
        if point not in self._points or random.random() >= self._probability:
            return
        if not self._repeat and not self._claim(point):
            return
        self._logger.warning(f"serve_cleanup: injected crash at {point} (testing).")
        for handler in self._logger.handlers + logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:
                pass
        os._exit(1)

    def _claim(self, point: str) -> bool:
        """True the first time ``point`` is claimed in this cluster (a KV marker)."""
        if self._kv is None:
            return True
        return self._kv.put(MARKER_PREFIX + point, b"1", overwrite=False)
