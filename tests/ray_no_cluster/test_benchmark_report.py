"""The benchmarks' pure parts, without a cluster: the seeders' record entries (records v2 by
default, v1 on request) and the report's issue-21 rows over results shaped as the
sections write them. The sections themselves need a cluster
(tests/shared_cluster/test_benchmarks_smoke.py runs them at tiny sizes)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness, report
from serve_cleanup.core import records

AID = "5b" * 16


def test_seeded_records_are_v2_keys_one_per_owner():
    owners = harness.app_owners(3)
    items = harness.record_items(AID, "router/1", "prod", b"handle", 1714000000.5, owners)
    parsed = records.parse_keys([k.encode() for k, _ in items])
    assert len(parsed) == 3 and not parsed.v1 and not parsed.bad
    assert parsed.owners == owners and set(parsed.ids) == {AID}
    assert parsed.names == ["router/1"] * 3 and parsed.namespaces == ["prod"] * 3
    for (key, value), t in zip(items, parsed.times):
        record = records.decode(value)
        assert record.handle == b"handle" and record.pairs[0][1] == t  # the value's time is the key's
        assert harness.key_actor_id(key.encode()) == AID and not harness.is_v1_key(key.encode())


def test_seeded_records_default_to_one_serve_wide_key():
    (key, value), = harness.record_items(AID, "", "", b"h", 1714000000.0)
    assert records.parse_key(key.encode()).owner == records.SERVE_OWNER
    assert records.decode(value).owner == records.SERVE_OWNER


def test_v1_layout_on_request():
    (key, value), = harness.record_items(AID, "n", "ns", b"h", 1714000000.0, harness.app_owners(2), layout=harness.V1)
    assert key == records.record_key(AID) and harness.is_v1_key(key.encode())
    assert harness.key_actor_id(key.encode()) == AID
    assert records.parse_keys([key.encode()]).v1 == [key.encode()]
    assert records.decode(value).owner == harness.app_owners(1)[0]  # the first owner


def _sections(*names: str) -> dict:
    return {n: {"commit": "abc1234 (src abc1234)", "at": "2025-01-01 00:00 UTC", "seconds": 1.0, "quick": False,
                "profiled": False, "command": f"python -m benchmarks --only {n}"} for n in names}


def _restart(rss: float, ms: float | None = None) -> dict:
    row = {"answer_s": 1.0, "rss_mb": rss, "rss_settled_mb": rss}
    if ms is not None:
        row.update({"rehydrate_ms": ms, "records_at_start": 100_000, "log_rehydrate_ms": ms})
    return row


def _results(v2: bool) -> dict:
    memory = {
        "records": 100_000, "restarts": 1, "plain": [_restart(100.0)], "durable_none": [_restart(120.0, 0.1)],
        "durable_records": [_restart(160.0, 300.0)],
        "seed": {"records": 100_000, "seed_s": 5.0, "value_bytes_mean": 420.0, "handle_bytes_template": 300},
        "summary": {"plain_answer_s": 1.0, "plain_rss_mb": 100.0, "none_answer_s": 1.0, "none_rss_mb": 120.0,
                    "records_answer_s": 1.0, "records_rss_mb": 160.0, "rehydrate_ms": 300.0,
                    "log_rehydrate_ms": 300.0, "records_at_start": 100_000, "rss_growth_mb": 40.0,
                    "answer_vs_plain_s": 0.0},
    }
    lst = {"records": 100_000, "seed": {"records": 100_000}, "runs": [{"seconds": 1.2, "entries": 100_000}],
           "fixed": {"version_s": 0.3, "empty_list_s": 0.6}, "seconds": 1.2, "entries": 100_000}
    out = {"memory": memory, "list": lst, "sections": _sections("memory", "list")}
    if v2:
        memory["seed"]["layout"] = lst["seed"]["layout"] = "v2"
        memory["v1_upgrade"] = {
            "records": 100_000, "live": 1000, "stored_v1": 100_000, "seed": {}, "restart": _restart(200.0, 900.0),
            "v1_gone_s": 31.5, "v1_left": 0, "waited_s": 120.0, "live_with_v2_key": 1000, "v2_keys_then": 1000,
            "polls": [[3.0, 99_000], [31.5, 0]],
        }
        out["owners3"] = {
            "actors": 10_000, "owners": 3, "seed": {},
            "restarts": {"one": [_restart(130.0, 40.0)], "many": [_restart(140.0, 70.0)]},
            "lists": {"one": [{"seconds": 0.8, "entries": 10_000, "stored": 10_000}],
                      "many": [{"seconds": 1.0, "entries": 10_000, "stored": 30_000}]},
            "one": {"rehydrate_ms": 40.0, "rss_mb": 130.0, "answer_s": 1.0, "list_s": 0.8},
            "many": {"rehydrate_ms": 70.0, "rss_mb": 140.0, "answer_s": 1.0, "list_s": 1.0},
        }
        out["sections"].update(_sections("owners3"))
    return out


def test_issue21_rows():
    rows = {r["key"]: r for r in report.issue21_rows(_results(v2=True))}
    assert set(rows) == {"1", "3", "4", "7", "10a", "10b"}
    assert rows["1"]["ok"] and rows["1"]["shown"] == "300 ms" and "v2 records" in rows["1"]["detail"]
    assert rows["3"]["ok"] and rows["3"]["shown"] == "+40 MB"
    assert rows["4"]["ok"] and rows["4"]["shown"] == "1.20 s"
    assert rows["7"]["ok"] and "31.5 s" in rows["7"]["shown"]
    assert rows["10a"]["ok"] is False and rows["10a"]["shown"] == "1.75×"  # 70 / 40 ms
    assert rows["10b"]["ok"] and rows["10b"]["shown"] == "1.25×"


def test_issue21_rows_of_a_run_before_records_v2():
    rows = {r["key"]: r for r in report.issue21_rows(_results(v2=False))}
    assert set(rows) == {"1", "3", "4"}  # no v1 upgrade step, no owners3
    assert "v1 records" in rows["1"]["detail"]


def test_v1_keys_left_after_the_deadline_miss_row_7():
    results = _results(v2=True)
    results["memory"]["v1_upgrade"].update({"v1_gone_s": None, "v1_left": 12})
    (row,) = [r for r in report.issue21_rows(results) if r["key"] == "7"]
    assert row["ok"] is False and "12 v1 keys left" in row["shown"]


def test_report_renders_both_tables_and_says_v2(tmp_path):
    md = report.write(_results(v2=True), tmp_path, baseline=_results(v2=False)).read_text()
    assert "## Issue 14 targets" in md and "## Issue 21 targets" in md
    assert "| 7 | first restart over 100,000 v1 records" in md
    assert "## Owner sets: 10,000 actors × 3 owners" in md
    assert "Upgrade (issue 21, row 7)" in md
    assert "records v2" in md and "documented v1 layout" not in md
