"""The durable controller's metrics, scraped from Ray's own metrics endpoint.

A local cluster of this test's own with a metrics export port (the node's metrics agent
runs without the dashboard too), the durable controller, two registrations (one Serve-wide,
one owned by an app), the app deleted so its actor is killed: then Ray's Prometheus
endpoint of every node is polled, with a deadline, until the controller's figures show
there. Ray pushes metrics to its agent every few seconds, so nothing is asserted before
the figures arrive; a figure that never arrives fails the test with the last scrape.

Every metric the Grafana dashboard (docs/grafana/serve_cleanup.json) queries must be
served under that very name: Ray (not the package) decides the exported names (the
``ray_`` prefix, and a ``_total`` suffix it adds to counters that lack one).
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

import serve_cleanup
from ray_helpers import TEST_NAMESPACE, start_local_ray, stop_ray
from ray_helpers import Aux, free_port, wait_dead, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "serve_cleanup.json"
PREFIX = "ray_serve_cleanup_"
APP = "metrics-app"
DEADLINE_S = 90.0  # Ray's agent exports every ~10 s; the first export comes later on a busy machine
# Counters Ray exports only once incremented; this test makes no cleanup attempt fail.
ONLY_AFTER_FIRST_INCREMENT = {"ray_serve_cleanup_kill_failures_total"}


@pytest.fixture
def metrics_cluster() -> Iterator[int]:
    """A local cluster of this test's own, exporting metrics on a free port."""
    stop_ray()  # the session's cluster has no metrics port; one cluster at a time
    port = free_port()
    # Workers report their metrics to the node's agent every second (Ray's default is ten,
    # as Ray Serve's own tests shorten it too): the figures arrive sooner, nothing else changes.
    start_local_ray(_metrics_export_port=port, _system_config={"metrics_report_interval_ms": 1000})
    try:
        yield port
    finally:
        stop_ray()  # serve.shutdown() and ray.shutdown(); the next test starts a fresh cluster


def _endpoints() -> list[str]:
    return [
        f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
        for n in ray.nodes()
        if n["Alive"]
    ]


def scrape() -> list[tuple[str, dict[str, str], float]]:
    """Every ``ray_serve_cleanup_*`` sample of every node: (name, labels, value)."""
    samples = []
    for url in _endpoints():
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                if s.name.startswith(PREFIX):
                    samples.append((s.name, dict(s.labels), s.value))
    return samples


def total(samples, name: str, **tags: str) -> Optional[float]:
    """Sum of the samples of ``name`` carrying ``tags`` (None: no such sample)."""
    values = [v for n, labels, v in samples if n == name and all(labels.get(k) == t for k, t in tags.items())]
    return sum(values) if values else None


def observed(samples) -> dict[str, Optional[float]]:
    return {
        "actors": total(samples, "ray_serve_cleanup_actors"),
        "records serve": total(samples, "ray_serve_cleanup_records", scope="serve"),
        "records app": total(samples, "ray_serve_cleanup_records", scope="app"),
        "records deployment": total(samples, "ray_serve_cleanup_records", scope="deployment"),
        "set aside": total(samples, "ray_serve_cleanup_set_aside_records"),
        "registrations serve": total(samples, "ray_serve_cleanup_registrations_total", scope="serve"),
        "registrations app": total(samples, "ray_serve_cleanup_registrations_total", scope="app"),
        "kills owner_deleted": total(samples, "ray_serve_cleanup_kills_total", reason="owner_deleted"),
        "kills shutdown": total(samples, "ray_serve_cleanup_kills_total", reason="shutdown"),
    }


EXPECTED = {
    "actors": 1.0,  # the Serve-wide one
    "records serve": 1.0,
    "records app": 0.0,  # its one record went with the app
    "records deployment": 0.0,  # scopes without records are reported as 0
    "set aside": 0.0,
    "registrations serve": 1.0,
    "registrations app": 1.0,
    "kills owner_deleted": 1.0,
    "kills shutdown": None,  # no shutdown yet: the counter has no such series
}


def figures_are(expected: dict) -> list:
    """Every node's samples, once the figures are ``expected`` (for ``wait_for``: an
    endpoint not listening yet, or other figures, fail this try with what it saw)."""
    samples = scrape()
    last = observed(samples)
    assert last == expected, f"\nexpected: {expected}\nlast:     {last}"
    return samples


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Owner:
    def __call__(self) -> str:
        return "ok"


def test_metrics_reach_rays_prometheus_endpoint(metrics_cluster):
    assert _endpoints() == [f"http://{ray.nodes()[0]['NodeManagerAddress']}:{metrics_cluster}/metrics"]
    serve_cleanup.start()
    assert serve_cleanup.controller_kind() == "durable"
    serve.run(Owner.bind(), name=APP, route_prefix=None)

    made = []
    try:
        serve_wide = Aux.options(name="metrics-serve", namespace=TEST_NAMESPACE, lifetime="detached").remote()
        app_owned = Aux.options(name="metrics-app-owned", namespace=TEST_NAMESPACE, lifetime="detached").remote()
        made += [serve_wide, app_owned]
        ray.get([serve_wide.ping.remote(), app_owned.ping.remote()])
        serve_cleanup.register(serve_wide)
        serve_cleanup.register(app_owned, scope="app", app=APP)
        serve_cleanup.register(serve_wide)  # a repeat by the same owner writes nothing: not counted

        serve.delete(APP)  # the controller kills the app's actor (reason owner_deleted)
        wait_dead(app_owned, 60)
        assert ray.get(serve_wide.ping.remote(), timeout=30) == "pong"

        samples = wait_for(lambda: figures_are(EXPECTED), DEADLINE_S,
                           f"the expected figures on Ray's metrics endpoint(s) {_endpoints()}", interval_s=0.5)
        assert total(samples, "ray_serve_cleanup_reconcile_duration_s") is not None

        # Every metric the Grafana dashboard queries is served under that name.
        served = {name for name, _, _ in samples}
        queried = set(re.findall(r"\bray_serve_cleanup_[a-z_]+\b", json.dumps(json.loads(DASHBOARD.read_text()))))
        missing = queried - served - ONLY_AFTER_FIRST_INCREMENT
        assert not missing, f"the dashboard queries {sorted(missing)}, which Ray's endpoint does not serve: {sorted(served)}"

        serve.shutdown()  # kills the Serve-wide actor
        wait_dead(serve_wide, 60)
        wait_for(lambda: serve_cleanup.list_registrations() == [], 30, "no record left")
    finally:
        for handle in made:
            try:
                ray.kill(handle, no_restart=True)
            except Exception:
                pass
