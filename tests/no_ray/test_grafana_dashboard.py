"""docs/grafana/serve_cleanup.json against src/serve_cleanup/serve_adapter/metrics.py, without Ray.

metrics.py imports Ray, so its metric names and tag keys are read from its source (the
``Gauge(...)`` / ``Counter(...)`` calls). Every metric the dashboard queries must be one
the controller exports (Ray adds the ``ray_`` prefix), every exported metric must have a
panel, and every label a query groups or filters by must be one of that metric's tag keys
(or ``ray_io_cluster``, the label KubeRay's PodMonitor adds, as in Ray's own dashboards).
That the names are what Ray's endpoint really serves is checked on a real cluster by
tests/own_cluster/test_metrics.py.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
METRICS_PY = ROOT / "src" / "serve_cleanup" / "serve_adapter" / "metrics.py"
DASHBOARD = ROOT / "docs" / "grafana" / "serve_cleanup.json"
RAY_PREFIX = "ray_"
OUTSIDE_LABELS = {"ray_io_cluster"}
NAME = re.compile(r"\bray_serve_cleanup_[a-z_]+\b")


def defined_metrics() -> dict[str, set[str]]:
    """``{name: tag keys}`` of every ``<ray.util.metrics>.<Kind>("name", ..., tag_keys=(...))``."""
    tree = ast.parse(METRICS_PY.read_text())
    aliases = {  # the names ray.util.metrics is imported under (`from ray.util import metrics as ...`)
        a.asname or a.name
        for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "ray.util"
        for a in node.names if a.name == "metrics"
    }
    assert aliases, "metrics.py no longer imports ray.util.metrics; update this test"
    found: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if not (isinstance(node.func.value, ast.Name) and node.func.value.id in aliases):
            continue  # e.g. collections.Counter()
        if node.func.attr not in ("Gauge", "Counter", "Histogram"):
            continue
        name = ast.literal_eval(node.args[0])
        tags = next((ast.literal_eval(k.value) for k in node.keywords if k.arg == "tag_keys"), ())
        found[name] = set(tags)
    return found


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    out = []
    for p in dashboard()["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # panels inside a collapsed row
    return [p for p in out if p.get("type") != "row"]


def exprs() -> list[str]:
    return [t["expr"] for p in panels() for t in p["targets"]]


def test_metrics_py_is_read():
    metrics = defined_metrics()
    assert "serve_cleanup_records" in metrics and metrics["serve_cleanup_records"] == {"scope", "kind"}
    assert metrics["serve_cleanup_actors"] == {"kind"}
    assert len(metrics) == 7, metrics


def test_actors_and_pairs_are_both_shown():
    """Owner sets (0.2.0): an actor shared by two apps is one actor and two pairs."""
    by_title = {p["title"]: [t["expr"] for t in p["targets"]] for p in panels()}
    assert any("ray_serve_cleanup_actors" in e for e in by_title["Registered actors and placement groups"])
    assert any("ray_serve_cleanup_records" in e for e in by_title["(Actor or placement group, owner) pairs"])
    assert any("by (scope, kind)" in e for e in by_title["Pairs by scope and kind"])


def test_every_tagged_metric_is_kept_apart_by_kind():
    """Placement groups (0.3.0): every metric with a ``kind`` tag is grouped by it before
    a ``max`` or a sum across clusters, so an actor count never hides a placement group
    count (``max by (ray_io_cluster)`` over two kinds would take the larger)."""
    tagged = {name for name, tags in defined_metrics().items() if "kind" in tags}
    assert tagged >= {"serve_cleanup_actors", "serve_cleanup_records", "serve_cleanup_kills_total"}
    for expr in exprs():
        names = {n[len(RAY_PREFIX):] for n in NAME.findall(expr)}
        if names & tagged and "max by" in expr:
            assert all("kind" in g for g in re.findall(r"\bmax by\s*\(([^)]*)\)", expr)), expr
    top = sorted((p["gridPos"]["x"], p["gridPos"]["w"]) for p in panels() if p["gridPos"]["y"] == 0)
    assert sum(w for _, w in top) == 24 and all(a[0] + a[1] == b[0] for a, b in zip(top, top[1:])), top


def test_every_metric_the_dashboard_queries_is_exported_and_every_export_has_a_panel():
    metrics = defined_metrics()
    text = DASHBOARD.read_text()
    used = {n[len(RAY_PREFIX):] for n in NAME.findall(text)}
    assert used, "the dashboard queries no ray_serve_cleanup_* metric"
    assert used - set(metrics) == set(), f"not defined in metrics.py: {sorted(used - set(metrics))}"
    in_panels = {n[len(RAY_PREFIX):] for e in exprs() for n in NAME.findall(e)}
    assert set(metrics) - in_panels == set(), f"no panel for {sorted(set(metrics) - in_panels)}"


@pytest.mark.parametrize("expr", exprs())
def test_labels_are_tag_keys_of_the_metric(expr: str):
    metrics = defined_metrics()
    names = {n[len(RAY_PREFIX):] for n in NAME.findall(expr)}
    assert len(names) == 1, f"one metric per query keeps this check simple: {expr}"
    name = names.pop()
    assert name in metrics, f"{expr}: {name} is not defined in metrics.py"
    tags = metrics[name] | OUTSIDE_LABELS
    for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
        labels = {label.strip() for label in group.split(",") if label.strip()}
        assert labels <= tags, f"{expr}: groups by {labels - tags}, not a tag of the metric"
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
        assert labels <= tags, f"{expr}: filters on {labels - tags}, not a tag of the metric"


def test_legends_name_grouped_labels():
    for p in panels():
        for t in p["targets"]:
            grouped = {
                label.strip()
                for group in re.findall(r"\bby\s*\(([^)]*)\)", t["expr"])
                for label in group.split(",")
            }
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
                assert label in grouped, f"panel {p['title']!r}: legend {{{{{label}}}}} is not grouped by"


def test_importable_like_rays_dashboards():
    """A data-source variable instead of a fixed data source (as Ray's dashboards do), so
    the JSON imports into any Grafana; unique panel ids; a uid to link to."""
    d = dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for p in panels():
        assert p["datasource"] == "${datasource}", p["title"]
        assert all(t["datasource"] == "${datasource}" for t in p["targets"]), p["title"]
        assert set(p["gridPos"]) == {"h", "w", "x", "y"}, p["title"]
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), ids
    assert d["uid"] and d["title"]
