"""Metrics the durable controller exports through ``ray.util.metrics``.

They reach Prometheus the same way Serve's own controller metrics do (Ray's metrics
agent on each node). Names are prefixed ``serve_cleanup_``; Ray adds ``ray_``.

==============================================  =======  ===================================
name                                            kind     tags
==============================================  =======  ===================================
serve_cleanup_actors                            gauge    kind
serve_cleanup_records                           gauge    scope, kind
serve_cleanup_set_aside_records                 gauge
serve_cleanup_registrations_total               counter  scope, kind
serve_cleanup_kills_total                       counter  reason (shutdown, owner_deleted, gc), kind,
                                                         how (graceful, forced)
serve_cleanup_kill_failures_total               counter  reason, kind
serve_cleanup_reconcile_duration_s              gauge
==============================================  =======  ===================================

``kind`` is ``actor`` or ``pg`` (a placement group; its "kill" is its removal). ``how``
is ``graceful`` for an actor that ended of its graceful exit (``grace_s``) and ``forced``
for every other kill: immediate ones and those whose grace ran out.
``serve_cleanup_actors`` counts registrations, each once, per kind (the name is 0.1.x's:
sum over ``kind`` for what it counted then plus placement groups); ``serve_cleanup_records``
counts (actor or placement group, owner) pairs per scope and kind (one shared by two apps
counts twice, as ``app``; one without owners once, as ``serve``).

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
        self._registered: collections.Counter[tuple[str, str]] = collections.Counter()
        self.actors_gauge = ray_metrics.Gauge(
            "serve_cleanup_actors",
            "Registered actors and placement groups (kind), each counted once whatever its owners.",
            tag_keys=("kind",),
        )
        self.records_gauge = ray_metrics.Gauge(
            "serve_cleanup_records",
            "Durable cleanup registrations as (actor or placement group, owner) pairs, by scope and kind.",
            tag_keys=("scope", "kind"),
        )
        self.set_aside = ray_metrics.Gauge(
            "serve_cleanup_set_aside_records", "Unreadable records left in the KV."
        )
        self.registrations = ray_metrics.Counter(
            "serve_cleanup_registrations_total", "Accepted new registrations.", tag_keys=("scope", "kind")
        )
        self.kills = ray_metrics.Counter(
            "serve_cleanup_kills_total", "Registered actors killed and placement groups removed.",
            tag_keys=("reason", "kind", "how"),
        )
        self.kill_failures = ray_metrics.Counter(
            "serve_cleanup_kill_failures_total",
            "Kill (removal) or record-delete attempts that failed and will be retried.",
            tag_keys=("reason", "kind"),
        )
        self.reconcile_gauge = ray_metrics.Gauge(
            "serve_cleanup_reconcile_duration_s", "Time of the last owner reconcile pass."
        )

    def registered(self, scope: str, kind: str = "actor") -> None:
        self._registered[(scope, kind)] += 1

    def killed(self, reason: str, kind: str = "actor", how: str = "forced") -> None:
        self.kills.inc(tags={"reason": reason, "kind": kind, "how": how})

    def kill_failed(self, reason: str, kind: str = "actor") -> None:
        self.kill_failures.inc(tags={"reason": reason, "kind": kind})

    def records(self, counts: dict[tuple[str, str], int], set_aside: int, by_kind: dict[str, int]) -> None:
        if self._registered:
            for (scope, kind), n in self._registered.items():
                self.registrations.inc(n, tags={"scope": scope, "kind": kind})
            self._registered.clear()
        for (kind, scope), n in counts.items():
            self.records_gauge.set(n, tags={"scope": scope, "kind": kind})
        for kind, n in by_kind.items():
            self.actors_gauge.set(n, tags={"kind": kind})
        self.set_aside.set(set_aside)

    def reconcile_duration(self, seconds: float) -> None:
        self.reconcile_gauge.set(seconds)
