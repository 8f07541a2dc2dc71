"""Metrics the durable controller exports through ``ray.util.metrics``.

They reach Prometheus the same way Serve's own controller metrics do (Ray's metrics
agent on each node). Names are prefixed ``serve_cleanup_``; Ray adds ``ray_``.

==============================================  =======  ===================================
name                                            kind     tags
==============================================  =======  ===================================
serve_cleanup_actors                            gauge
serve_cleanup_records                           gauge    scope
serve_cleanup_set_aside_records                 gauge
serve_cleanup_registrations_total               counter  scope
serve_cleanup_kills_total                       counter  reason (shutdown, owner_deleted, gc)
serve_cleanup_kill_failures_total               counter  reason
serve_cleanup_reconcile_duration_s              gauge
==============================================  =======  ===================================

``serve_cleanup_actors`` counts registered actors, each once; ``serve_cleanup_records``
counts (actor, owner) pairs per scope (an actor shared by two apps counts twice, as
``app``; an actor without owners once, as ``serve``), as in 0.1.x, where every actor had
one owner, so the two were equal.

A failed kill is retried with per-record backoff, so ``kill_failures_total`` grows by a
few a minute per stuck actor, not by two a second.
"""

from __future__ import annotations

import collections

from ray.util import metrics as ray_metrics


class ControllerMetrics:
    """The core's ``Metrics`` port, exported through ``ray.util.metrics``.

    Registrations are counted in a dict and handed to Ray's counter on the next
    ``records`` call (every reconcile tick, 0.5 s): a ``Counter.inc`` costs the
    registration's hot path tens of microseconds, a dict increment well under one.
    """

    def __init__(self) -> None:
        self._registered: collections.Counter[str] = collections.Counter()
        self.actors_gauge = ray_metrics.Gauge(
            "serve_cleanup_actors", "Registered actors, each counted once whatever its owners."
        )
        self.records_gauge = ray_metrics.Gauge(
            "serve_cleanup_records", "Durable cleanup registrations as (actor, owner) pairs, by scope.",
            tag_keys=("scope",),
        )
        self.set_aside = ray_metrics.Gauge(
            "serve_cleanup_set_aside_records", "Unreadable records left in the KV."
        )
        self.registrations = ray_metrics.Counter(
            "serve_cleanup_registrations_total", "Accepted new registrations.", tag_keys=("scope",)
        )
        self.kills = ray_metrics.Counter(
            "serve_cleanup_kills_total", "Registered actors killed.", tag_keys=("reason",)
        )
        self.kill_failures = ray_metrics.Counter(
            "serve_cleanup_kill_failures_total",
            "Kill or record-delete attempts that failed and will be retried.",
            tag_keys=("reason",),
        )
        self.reconcile_gauge = ray_metrics.Gauge(
            "serve_cleanup_reconcile_duration_s", "Time of the last owner reconcile pass."
        )

    def registered(self, scope: str) -> None:
        self._registered[scope] += 1

    def killed(self, reason: str) -> None:
        self.kills.inc(tags={"reason": reason})

    def kill_failed(self, reason: str) -> None:
        self.kill_failures.inc(tags={"reason": reason})

    def records(self, counts: dict[str, int], set_aside: int, actors: int) -> None:
        if self._registered:
            for scope, n in self._registered.items():
                self.registrations.inc(n, tags={"scope": scope})
            self._registered.clear()
        for scope, n in counts.items():
            self.records_gauge.set(n, tags={"scope": scope})
        self.actors_gauge.set(actors)
        self.set_aside.set(set_aside)

    def reconcile_duration(self, seconds: float) -> None:
        self.reconcile_gauge.set(seconds)
