"""Turn ``benchmarks.json`` into docs/reports/benchmarks.md (and one plot): issue 14's targets,
each with a before and an after column, then issue 21's rows where the data exists (rows
1, 3, 4, 7, 10), then issue 22's (placement groups, job owners, graceful kills: sections
``pgs``, ``jobs``, ``grace``), then each section's own figures."""

from __future__ import annotations

import math
import os
import platform
import sys
from pathlib import Path
from typing import Optional

import ray

from benchmarks.harness import DURABLE, PLAIN, stored_layout

# Which section each target row comes from, and the command that re-runs only it.
SECTION_OF = {"1": "floor", "2": "history", "3": "shutdown", "4": "memory", "5": "list"}
# The same for issue 21's rows (its "Targets" table).
SECTION_OF_21 = {"1": "memory", "3": "memory", "4": "list", "5": "live100k", "6": "live100k", "7": "memory",
                 "8": "floor", "9": "floor", "10a": "owners3", "10b": "owners3", "11": "shutdown"}

# Issue 22's rows (placement groups, job owners, graceful kills): no "before" (plain Serve
# has none of them); each row's section and the command that ran it.
SECTION_OF_22 = {"1": "pgs", "2a": "pgs", "2b": "pgs", "3": "jobs", "5": "grace"}


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (f"{os.cpu_count()} cores ({cpu}){mem}; {platform.system()} {platform.release()}; "
            f"Python {sys.version.split()[0]}; ray {ray.__version__}")


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def _rounds(xs: list) -> str:
    return ", ".join(f"{x:.2f}" for x in xs)


def _level(h: dict, dead: int) -> Optional[dict]:
    return next((lv for lv in h["levels"] if lv["dead_target"] == dead), None)


def target_rows(results: dict) -> list[dict]:
    """One row per issue-14 target: key, target, figure shown, detail, verdict (None: no limit)."""
    rows: list[dict] = []

    def add(key, target, value, limit, detail, fmt="{:.2f}×", higher_is_better=False, shown=None):
        ok = None if value is None or limit is None else (value >= limit if higher_is_better else value <= limit)
        rows.append({"key": key, "target": target, "value": value, "ok": ok, "detail": detail,
                     "shown": shown or ("—" if value is None else fmt.format(value))})

    f = results.get("floor")
    if f:
        p, d, put = f[PLAIN], f[DURABLE], f["put_p50"]
        rr = [r["ratios"] for r in f["rounds"]]
        hb = f["handle_bytes"]
        add("1a", "new registration p50, named actors (created beforehand) ≤ 1.15 × (plain p50 + one KV put p50)",
            _ratio(d["named_p50"], p["named_p50"] + put), 1.15,
            f"durable {d['named_p50']:.2f} ms; plain {p['named_p50']:.2f} + put {put:.2f} ms; per round "
            f"{_rounds([r['named'] for r in rr])}; {f['n_named']} calls a side, handles {hb['named']:.0f} B")
        add("1b", "new registration p50, anonymous actors registered right after `.remote()` ≤ 1.15 × (plain + put)",
            _ratio(d["anon_p50"], p["anon_p50"] + put), 1.15,
            f"durable {d['anon_p50']:.2f} ms (p99 {d['anon_p99']:.1f}); plain {p['anon_p50']:.2f} + put "
            f"{put:.2f} ms; per round {_rounds([r['anon'] for r in rr])}; {f['n_anon']} calls a side, "
            f"handles {hb['anon']:.0f} B")
        probe = f["probe_put_cpu_ms"]
        add("1c", f"controller CPU per registration in a burst of {f['burst_registrants']} registrants ≤ 1.15 × "
            "(plain CPU + one async KV put's CPU in a probe actor)",
            _ratio(d["burst_cpu_ms"], p["burst_cpu_ms"] + probe), 1.15,
            f"durable {d['burst_cpu_ms']:.2f} ms, plain {p['burst_cpu_ms']:.2f} ms, probe put {probe:.2f} ms "
            f"(one at a time {f['probe_put_cpu_ms_sequential']:.2f}, own GcsClient "
            f"{f['probe_put_cpu_ms_own_client']:.2f}); per round {_rounds([r['burst_cpu'] for r in rr])}; "
            f"{f['burst_registrations']} registrations a burst")
        add("1d", "burst throughput, durable vs plain (no limit in issue 14)",
            _ratio(d["burst_per_s"], p["burst_per_s"]), None,
            f"durable {d['burst_per_s']:.0f}/s, plain {p['burst_per_s']:.0f}/s; per round "
            f"{_rounds([r['throughput'] for r in rr])}")
        add("1e", "`serve_cleanup.register` p50 (public path; its extra checks may stay; no limit)",
            f["public_p50"], None,
            f"vs the upstream path on the same controller {d['named_p50']:.2f} ms: "
            f"{f['public_p50'] - d['named_p50']:+.2f} ms; per round "
            f"{_rounds([r['public_vs_named'] for r in rr])}× the upstream path; {f['n_public']} calls",
            fmt="{:.2f} ms")
    h = results.get("history")
    if h:
        base = h["levels"][0]
        for i, lv in enumerate(h["levels"][1:]):
            dead = lv["dead_target"]
            k = "abc"[i] if i < 3 else str(i)
            add(f"2{k}", f"registration p50 with {dead:,} dead actors cached ≤ 1.1 × its empty-table value",
                _ratio(lv[DURABLE]["reg_p50"], base[DURABLE]["reg_p50"]), 1.1,
                f"durable {lv[DURABLE]['reg_p50']:.2f} ms vs {base[DURABLE]['reg_p50']:.2f} ms "
                f"({lv['dead_in_table']:,} vs {base['dead_in_table']:,} dead in GCS); plain "
                f"{lv[PLAIN]['reg_p50']:.2f} vs {base[PLAIN]['reg_p50']:.2f} ms "
                f"({_ratio(lv[PLAIN]['reg_p50'], base[PLAIN]['reg_p50']):.2f}×)")
        for i, lv in enumerate(h["levels"]):
            dead = lv["dead_target"]
            pg, dg = lv[PLAIN]["gcs_idle_cores"], lv[DURABLE]["gcs_idle_cores"]
            add(f"2g{i}", f"gcs_server idle CPU with {h['registered']} registered actors, {dead:,} dead cached "
                "≤ 1.25 × plain's" + (" (no limit at 0 dead)" if not dead else ""),
                _ratio(dg, pg), 1.25 if dead else None,
                f"durable {dg * 100:.1f} %, plain {pg * 100:.1f} %, no Serve {lv['gcs_idle_no_serve'] * 100:.1f} % "
                f"of a core ({h['window_s']:.0f} s windows, median of {h['reps']})")
        if h.get("list"):
            li = h["list"]
            add("5b", f"`serve-cleanup list --json` over {li['records']:,} records with {li['dead_in_table']:,} "
                "dead actors cached ≤ 2 s", li["seconds"], 2.0,
                f"{li['entries']:,} entries, fresh process (Serve not running)", fmt="{:.2f} s")
    s = results.get("shutdown")
    if s:
        r = s["records"]
        left = r["left_at_10s"]
        gone = r["all_gone_s"]
        add("3a", f"`serve.shutdown()` with {r['stored']:,} records of dead or unknown actors: none left 10 s after the call",
            left, 0, f"{r['dead_records']:,} of them DEAD in GCS, the rest unknown to it; shutdown returned after "
            f"{r['returned_s']:.1f} s; " + (f"all gone after {gone:.1f} s" if gone is not None else
                                            f"{r['left_at_end']:,} still left after {r['waited_s']:.0f} s"),
            shown="—" if left is None else f"{left:,} left")
        lv = s["live"]
        add("3b", f"`serve.shutdown()` with {lv['pending'] + lv['real']:,} registered live actors ≤ plain + 2 s",
            lv[DURABLE]["shutdown_s"] - lv[PLAIN]["shutdown_s"], 2.0,
            f"durable {lv[DURABLE]['shutdown_s']:.2f} s, plain {lv[PLAIN]['shutdown_s']:.2f} s ({lv['pending']:,} "
            f"PENDING_CREATION + {lv['real']} real actors{', one app' if lv['with_app'] else ''}; median of "
            f"{lv['reps']}); not dead 5 s later: durable {lv[DURABLE]['not_dead_after_5s']}, plain "
            f"{lv[PLAIN]['not_dead_after_5s']}", fmt="{:+.2f} s")
    m = results.get("memory")
    if m:
        sm = m["summary"]
        add("4a", f"controller RSS growth with {m['records']:,} records ≤ +60 MB", sm["rss_growth_mb"], 60,
            f"RSS as the restarted controller answers: {sm['none_rss_mb']:.0f} MB with none → {sm['records_rss_mb']:.0f} MB with "
            f"{sm['records_at_start']:,.0f} (plain {sm['plain_rss_mb']:.0f} MB); value {m['seed']['value_bytes_mean']:.0f} B "
            f"a record", fmt="{:+.0f} MB")
        add("4b", f"rehydrate {m['records']:,} records ≤ 0.5 s (controller's own figure)",
            None if sm["rehydrate_ms"] is None else sm["rehydrate_ms"] / 1000, 0.5,
            f"`serve_cleanup_status` rehydrate_ms {sm['rehydrate_ms']:.0f} ms; log line "
            + ("—" if sm["log_rehydrate_ms"] != sm["log_rehydrate_ms"] or sm["log_rehydrate_ms"] is None
               else f"{sm['log_rehydrate_ms']:.0f} ms"), fmt="{:.2f} s")
        add("4c", f"kill → restarted controller answers, {m['records']:,} records, vs plain's restart ≤ +0.5 s "
            "(driver-side)", sm["answer_vs_plain_s"], 0.5,
            f"durable {sm['records_answer_s']:.2f} s with records, {sm['none_answer_s']:.2f} s with none; plain "
            f"{sm['plain_answer_s']:.2f} s (median of {m['restarts']})", fmt="{:+.2f} s")
    li = results.get("list")
    if li:
        add("5a", f"`serve-cleanup list --json` over {li['records']:,} records ≤ 2 s (a fresh process)",
            li["seconds"], 2.0, f"{li['entries']:,} entries; runs {_rounds([r['seconds'] for r in li['runs']])} s; "
            "Serve not running (a durable controller would drop these records of actors GCS never knew)", fmt="{:.2f} s")
    return sorted(rows, key=lambda r: r["key"])


def _layout(seed: dict | None) -> str:
    """The layout a section seeded (runs before records v2 wrote v1 and did not say)."""
    return (seed or {}).get("layout", "v1")


def issue21_rows(results: dict) -> list[dict]:
    """Issue 21's rows that this run has data for: key (its row number), target, figure
    shown, detail, verdict (None: no limit)."""
    rows: list[dict] = []

    def add(key, target, value, ok, detail, shown):
        rows.append({"key": key, "target": target, "value": value, "ok": ok, "detail": detail, "shown": shown})

    def limit(value, most):
        return None if value is None or math.isnan(value) else value <= most  # NaN: no verdict

    m = results.get("memory")
    if m and m.get("summary"):
        s = m["summary"]
        rows_ms = [r.get("rehydrate_ms") for r in m["durable_records"]]
        layout = _layout(m.get("seed"))
        ms = s.get("rehydrate_ms")
        add("1", f"`rehydrate_ms`, {m['records']:,} v2 records ≤ 350 ms", ms, limit(ms, 350.0),
            f"{layout} records; median of {len(rows_ms)} restarts: {', '.join(str(x) for x in rows_ms)} ms; "
            f"records at start (log) {s.get('records_at_start')}",
            "—" if ms is None else f"{ms:.0f} ms")
        growth = s.get("rss_growth_mb")
        add("3", f"controller RSS as it first answers, {m['records']:,} records ≤ +45 MB over a fresh durable "
            "controller", growth, limit(growth, 45.0),
            f"{layout} records; {s['none_rss_mb']:.0f} MB with none → {s['records_rss_mb']:.0f} MB (medians)",
            "—" if growth is None else f"{growth:+.0f} MB")
        up = m.get("v1_upgrade")
        if up:
            r = up["restart"]
            gone = up.get("v1_gone_s")
            ok = gone is not None and gone <= up["waited_s"]
            add("7", f"first restart over {up['stored_v1']:,} v1 records: its time; no v1 key left after "
                f"{up['waited_s']:.0f} s", gone, ok,
                f"kill → answer {r['answer_s']:.2f} s, `rehydrate_ms` {r.get('rehydrate_ms')}, RSS "
                f"{r['rss_mb']:.0f} MB; {up['live']:,} of the records of live actors, {up['live_with_v2_key']:,} "
                f"of them held a v2 key then; "
                + (f"no v1 key left {gone:.1f} s after the kill" if gone is not None else
                   f"{up['v1_left']:,} v1 keys left after {up['waited_s']:.0f} s"),
                f"restart {r['answer_s']:.2f} s; v1 keys gone after {gone:.1f} s" if gone is not None
                else f"restart {r['answer_s']:.2f} s; {up['v1_left']:,} v1 keys left")
    li = results.get("list")
    if li:
        sec = li.get("seconds")
        add("4", f"`serve-cleanup list --json`, {li['records']:,} records, fresh process ≤ 1.4 s", sec,
            limit(sec, 1.4), f"{_layout(li.get('seed'))} records; {li['entries']:,} entries; runs "
            f"{_rounds([r['seconds'] for r in li['runs']])} s; Serve not running",
            "—" if sec is None else f"{sec:.2f} s")
    lv = (results.get("live100k") or {}).get("live")
    if lv:
        n = lv["pending"] + lv["real"]
        d, pl = lv[DURABLE], lv[PLAIN]
        sec = d.get("list_s")
        add("5", f"`list --json` with {n:,} live registered actors (pending) ≤ 2 s", sec, limit(sec, 2.0),
            f"runs {_rounds([x['seconds'] for r in lv['by_rep'][DURABLE] for x in r['list']])} s, "
            f"{sum(x['entries'] for r in lv['by_rep'][DURABLE] for x in r['list'][:1]):,} entries; Serve running",
            "—" if sec is None else f"{sec:.2f} s")
        ratio = _ratio(d.get("done_s"), pl.get("done_s"))
        add("6", f"`serve.shutdown()` with {n:,} live registered actors: every actor dead and every record gone "
            "within 1.1× plain Serve's time", ratio, limit(ratio, 1.1),
            f"durable {_s(d.get('done_s'))} (returned {d['shutdown_s']:.1f} s), plain {_s(pl.get('done_s'))} "
            f"(returned {pl['shutdown_s']:.1f} s), from the call until every actor was DEAD"
            f"{', one app' if lv['with_app'] else ''}; median of {lv['reps']}",
            "—" if ratio is None else f"{ratio:.2f}×")
    f = results.get("floor")
    if f:
        p, d, put, probe = f[PLAIN], f[DURABLE], f["put_p50"], f["probe_put_cpu_ms"]
        rr = [r["ratios"] for r in f["rounds"]]
        cpu = _ratio(d["burst_cpu_ms"], p["burst_cpu_ms"] + probe)
        worst = max(r["burst_cpu"] for r in rr) if rr else None
        add("8", f"controller CPU per registration in a burst of {f['burst_registrants']} registrants ≤ 1.12× "
            "(plain + one async put's CPU); no round above 1.25×", cpu,
            None if cpu is None or worst is None else cpu <= 1.12 and worst <= 1.25,
            f"durable {d['burst_cpu_ms']:.2f} ms, plain {p['burst_cpu_ms']:.2f} ms, probe put {probe:.2f} ms; "
            f"per round {_rounds([r['burst_cpu'] for r in rr])}",
            "—" if cpu is None else f"{cpu:.2f}×")
        lat = _ratio(d["named_p50"], p["named_p50"] + put)
        add("9", "latency p50 ≤ 1.10× (plain + one put)", lat, limit(lat, 1.10),
            f"durable {d['named_p50']:.2f} ms; plain {p['named_p50']:.2f} + put {put:.2f} ms (new registrations "
            f"of named actors, upstream method); per round {_rounds([r['named'] for r in rr])}",
            "—" if lat is None else f"{lat:.2f}×")
    sh = (results.get("shutdown") or {}).get("records")
    if sh:
        left = sh["left_at_10s"]
        add("11", f"`serve.shutdown()`, {sh['stored']:,} records of dead or unknown actors: none left 10 s after "
            "the call", left, None if left is None else left == 0,
            f"{sh['dead_records']:,} of them DEAD in GCS; returned after {sh['returned_s']:.1f} s",
            "—" if left is None else f"{left:,} left")
    o = results.get("owners3")
    if o:
        one, many, k = o["one"], o["many"], o["owners"]
        for key, field, what, unit in (("10a", "rehydrate_ms", "load (`rehydrate_ms`)", "ms"),
                                       ("10b", "list_s", "`list --json`", "s")):
            ratio = _ratio(many[field], one[field])
            fmt = "{:.0f}" if unit == "ms" else "{:.2f}"
            add(key, f"{o['actors']:,} actors × {k} owners each: {what} within 1.5× of {o['actors']:,} × 1 owner",
                ratio, limit(ratio, 1.5),
                f"× {k}: {fmt.format(many[field])} {unit}, × 1: {fmt.format(one[field])} {unit} (medians)",
                "—" if ratio is None else f"{ratio:.2f}×")
    return rows


def issue22_rows(results: dict) -> list[dict]:
    """Issue 22's rows (sections ``pgs``, ``jobs``, ``grace``): key, measure, target,
    figure shown, detail, verdict (None: no verdict, e.g. a --quick run's NaN)."""
    rows = _pg_rows(results.get("pgs") or {})
    rows += _jobs_rows(results.get("jobs"))
    rows += _grace_rows(results.get("grace"))
    return rows


def _jobs_rows(j: Optional[dict]) -> list[dict]:
    if not j:
        return []
    empty, full = j["levels"]
    reg, idle = j["reg_ratio"], j.get("gcs_idle_ratio")
    new = j.get("new_job_reg_ratio")  # a new running job per registration (since the section had them)
    worst = max(reg, new if new is not None else reg)
    ok = None if idle is None or math.isnan(worst) else worst <= 1.15 and idle <= 1.15
    new_detail = "" if new is None else (
        f"owned by a new running job each (no driver; each its job's first registration) "
        f"{full['new_job']['p50_ms']:.2f} vs {empty['new_job']['p50_ms']:.2f} ms ({new:.2f}×, p90 "
        f"{full['new_job']['p90_ms']:.2f} vs {empty['new_job']['p90_ms']:.2f}); ")

    def pct(x: float) -> str:
        return f"{x * 100:.2f} %"

    probe = [lv["probe"] for lv in (empty, full)]
    return [{
        "key": "3",
        "measure": f"{j['finished_jobs']:,} finished jobs in GCS's job table, {j['owners']} job owners (Serve "
                   "started by another driver): job-owned registration p50 and gcs_server idle CPU, vs an empty "
                   "job table",
        "target": "registration p50 and gcs_server idle CPU within 1.15× of an empty job table",
        "value": max(worst, idle or 0.0), "ok": ok,
        "shown": f"registration {reg:.2f}×" + ("" if new is None else f" (own job), {new:.2f}× (new jobs)")
                 + ", gcs_server idle " + ("—" if idle is None else f"{idle:.2f}×"),
        "detail": (f"registration p50 owned by this driver's job {full['job']['p50_ms']:.2f} ms with "
                   f"{full['jobs']:,} jobs vs {empty['job']['p50_ms']:.2f} ms with {empty['jobs']} (p90 "
                   f"{full['job']['p90_ms']:.2f} vs {empty['job']['p90_ms']:.2f}); {new_detail}"
                   f"serve-wide registrations in turn with them, the control: "
                   f"{full['serve']['p50_ms']:.2f} vs {empty['serve']['p50_ms']:.2f} ms "
                   f"({j['serve_reg_ratio']:.2f}×); gcs_server idle with the job-owned registrations held "
                   f"{pct(full['gcs_idle_owned'])} vs {pct(empty['gcs_idle_owned'])} of a core, with none "
                   f"{pct(full['gcs_idle_no_owner'])} vs {pct(empty['gcs_idle_no_owner'])} "
                   f"({j['window_s']:.0f} s windows, median of {j['reps']}); the job-table read from a driver: whole "
                   f"{probe[1]['whole']['p50_ms']:.2f} vs {probe[0]['whole']['p50_ms']:.2f} ms, filtered to one job "
                   f"{probe[1]['filtered']['p50_ms']:.2f} vs {probe[0]['filtered']['p50_ms']:.2f} ms; "
                   f"{j['finished_jobs']:,} finished jobs made in {j['make_s']:.1f} s (GCS job RPCs)"),
    }]


def _grace_rows(g: Optional[dict]) -> list[dict]:
    if not g:
        return []
    d, p = g[DURABLE], g[PLAIN]
    over = g["over_plain_s"]
    limit = g["grace_s"] + 2.0
    expected = g["actors"] - g["hanging"]
    ok = over <= limit and d["markers_done_min"] == expected and d["alive_at_end_max"] == 0
    reps_d, reps_p = g["by_rep"][DURABLE], g["by_rep"][PLAIN]
    return [{
        "key": "5",
        "measure": f"`serve.shutdown()` with {g['actors']} actors registered with `grace_s={g['grace_s']:g}`, "
                   f"{g['hanging']} of whose `__ray_shutdown__` hang, vs plain Serve's (the same actors, "
                   "unregistered); each hook that returns writes a marker",
        "target": f"shutdown ≤ plain + {g['grace_s']:g} s + 2 s; every `__ray_shutdown__` that can run has run",
        "value": over, "ok": ok,
        "shown": f"{over:+.2f} s; {d['markers_done_min']} of {expected} markers; "
                 f"{d['alive_at_end_max']} processes left",
        "detail": (f"durable {d['shutdown_s']:.2f} s (reps {_rounds([r['shutdown_s'] for r in reps_d])}), plain "
                   f"{p['shutdown_s']:.2f} s (reps {_rounds([r['shutdown_s'] for r in reps_p])}), from the call until "
                   f"the controller was gone; medians of {g['reps']}{', one app' if g['with_app'] else ''}; hooks "
                   f"returned (markers): {', '.join(str(r['markers_done']) for r in reps_d)}; begun: "
                   f"{', '.join(str(r['markers_begun']) for r in reps_d)}; actor processes left when the controller "
                   f"was gone: {', '.join(str(r['alive_at_end']) for r in reps_d)}"),
    }]


def _pg_rows(pg: dict) -> list[dict]:
    rows: list[dict] = []
    sh = pg.get("shutdown")
    if sh:
        d, p = sh[DURABLE], sh[PLAIN]
        removed = d.get("all_removed_s")
        over = None if removed is None else removed - p["shutdown_s"]
        left = d["not_removed_at_return"]
        ok = over is not None and over <= 2.0 and left == 0  # not all removed: missed
        reps_d, reps_p = sh["by_rep"][DURABLE], sh["by_rep"][PLAIN]
        rows.append({
            "key": "1",
            "measure": f"{sh['pgs']:,} registered placement groups (pending) at `serve.shutdown()`: from the call "
                       "until the last is REMOVED, vs plain Serve's `serve.shutdown()` (same placement groups, "
                       "unregistered)",
            "target": "all removed within plain Serve's shutdown time + 2 s",
            "value": over, "ok": ok,
            "shown": ("not all removed" if over is None else f"{over:+.2f} s") + f"; {left} not REMOVED at return",
            "detail": (f"durable: all REMOVED {_s2(removed)} after the call (reps "
                       f"{', '.join(_s2(r['all_removed_s']) for r in reps_d)}), shutdown {d['shutdown_s']:.2f} s "
                       f"(returned {d['returned_s']:.2f} s; reps {_rounds([r['shutdown_s'] for r in reps_d])}); "
                       f"plain: shutdown {p['shutdown_s']:.2f} s (reps {_rounds([r['shutdown_s'] for r in reps_p])}); "
                       f"medians of {sh['reps']}{', one app' if sh['with_app'] else ''}; not REMOVED when the durable "
                       f"shutdown returned: {', '.join(str(r['not_removed_at_return']) for r in reps_d)}"),
        })
    rg = pg.get("register")
    if rg and "pg_anon" in rg:
        a = rg["actor"]
        for key, kind, what in (("2a", "pg_anon", "anonymous"), ("2b", "pg_named", "named")):
            r = rg[kind]
            ratio = r["ratio_p50"]
            rows.append({
                "key": key,
                "measure": f"`serve_cleanup.register(pg)` p50, {what} placement groups, vs "
                           "`serve_cleanup.register(actor)` p50 (new registrations, in turn, durable controller)",
                "target": "≤ 1.15× registering an actor",
                "value": ratio, "ok": None if math.isnan(ratio) else ratio <= 1.15,
                "shown": f"{ratio:.2f}×",
                "detail": (f"{what} placement group p50 {r['p50_ms']:.2f} ms (p90 {r['p90_ms']:.2f}); actor p50 "
                           f"{a['p50_ms']:.2f} ms (p90 {a['p90_ms']:.2f}); p90 ratio {r['ratio_p90']:.2f}×; "
                           f"{rg['each']} of each; named and anonymous pooled: {rg['pg']['ratio_p50']:.2f}×"),
            })
    return rows


def _s2(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.2f} s"


def _issue22_table(results: Optional[dict]) -> list[str]:
    rows = issue22_rows(results) if results else []
    if not rows:
        return []
    lines = ["## Issue 22 targets (placement groups, job owners, graceful kills)", "",
             "Plain Serve has none of these (it cannot register a placement group, a job owner or a grace "
             "period): no before/after; the durable controller against plain Serve, or against the same cluster "
             "without the load, in one run (sections `pgs`, `jobs`, `grace`: `benchmarks/pgs.py`, `jobs.py`, "
             "`grace.py`). Row 4 (the soak) is `python -m benchmarks.soak`: docs/reports/soak.md.", "",
             "| # | measure | target | result | holds | command |", "|---|---|---|---|---|---|"]
    for r in rows:
        section = SECTION_OF_22[r["key"]]
        info = results.get("sections", {}).get(section, {})
        verdict = "—" if r["ok"] is None else ("holds" if r["ok"] else "**missed**")
        lines.append(f"| {r['key']} | {r['measure']} | {r['target']} | **{r['shown']}**<br>{r['detail']}"
                     f"<br>_{_commit(results, section)}_ | {verdict} | "
                     f"`{info.get('command', f'python -m benchmarks --only {section}')}` |")
    return lines + [""]


def _pgs_details(pg: dict) -> list[str]:
    lines = []
    sh = pg.get("shutdown")
    if sh:
        lines += ["## Placement groups at shutdown (issue 22, row 1)", "",
                  f"{sh['pgs']:,} pending placement groups (one bundle asking for a resource no node has), "
                  + ("one app deployed; " if sh["with_app"] else "")
                  + "durable: each registered serve-wide from the driver; plain: the same, unregistered. "
                  f"Shutdown: from the call until the controller is gone. The placement group table is read every "
                  f"{sh['poll_s'] * 1000:.0f} ms from the call on (in both kinds).", "",
                  "| rep | kind | shutdown s (returned) | all REMOVED s after the call | not REMOVED at return | "
                  "table at the call | registering s | shutdown passes (records in ms: outcomes) |",
                  "|---:|---|---:|---:|---:|---:|---:|---|"]
        for kind in (PLAIN, DURABLE):
            for i, r in enumerate(sh["by_rep"][kind]):
                removed = _s2(r["all_removed_s"]) if kind == DURABLE else "—"
                registering = "—" if r["register_s"] is None else f"{r['register_s']:.1f}"
                lines.append(f"| {i + 1} | {kind} | {r['shutdown_s']:.2f} ({r['returned_s']:.2f}) | {removed} | "
                             f"{r['not_removed_at_return']:,} | {r['table_at_call']:,} | {registering} | "
                             f"{'; '.join(r['passes']) or '—'} |")
        lines.append("")
    rg = pg.get("register")
    if rg and "pg_anon" in rg:
        def cell(k: str) -> str:
            r = rg[k]
            return f"{r['p50_ms']:.2f} / {r['p90_ms']:.2f} / {r['max_ms']:.1f}"
        lines += [f"Registration (issue 22, row 2): {rg['each']} new registrations of each through "
                  "`serve_cleanup.register`, in turn (actor, named, anonymous; the order rotating), ms "
                  "p50 / p90 / max: "
                  f"actor {cell('actor')}; anonymous placement group {cell('pg_anon')}; named placement group "
                  f"{cell('pg_named')}; both placement groups pooled {cell('pg')}.", ""]
    return lines


def _jobs_details(j: dict) -> list[str]:
    lines = [f"## Job owners with {j['finished_jobs']:,} finished jobs (issue 22, row 3)", "",
             f"Serve (durable) started by a short-lived driver (job {j['serve_started_by_job']}); per rep "
             f"{j['owners']} registrations owned by this benchmark driver's job ({j['driver_job']}), "
             + (f"{j['owners']} each owned by a new running job (no driver process), " if "new_job_reg_ratio" in j
                else "") + f"{j['owners']} serve-wide ones (unregistered before the windows), in turn; idle windows "
             f"of {j['window_s']:.0f} s with the job-owned registrations held, then with none; "
             f"% of a core. {j['finished_jobs']:,} finished jobs made in {j['make_s']:.1f} s through GCS's job RPCs "
             "(`GetNextJobID`, `AddJob`, `MarkJobFinished`; no driver process).", "",
             "| jobs in the table | rep | register p50 ms: own job / new job / serve-wide | gcs_server idle: job owners / "
             "none | controller idle: job owners / none | machine busy (cores) |",
             "|---:|---:|---|---|---|---|"]
    for lv in j["levels"]:
        for i, r in enumerate(lv["by_rep"]):
            a, b = r["idle_owned"], r["idle_no_owner"]
            new = f"{r['new_job_p50_ms']:.2f}" if "new_job_p50_ms" in r else "—"
            lines.append(f"| {lv['jobs']:,} ({lv['finished']:,} finished) | {i + 1} | {r['job_p50_ms']:.2f} / "
                         f"{new} / {r['serve_p50_ms']:.2f} | {a['gcs_cores'] * 100:.2f} / {b['gcs_cores'] * 100:.2f} | "
                         f"{a['controller_cores'] * 100:.2f} / {b['controller_cores'] * 100:.2f} | "
                         f"{a.get('machine_cores', float('nan')):.2f} / {b.get('machine_cores', float('nan')):.2f} |")
    lines += ["", "The job-table read (`GcsClient.async_get_all_job_info`, both skip flags) from a driver, "
              "awaited one at a time: p50 ms, gcs_server CPU ms per call:", "",
              "| jobs in the table | whole table | filtered to one job |", "|---:|---|---|"]
    for lv in j["levels"]:
        w, f = lv["probe"]["whole"], lv["probe"]["filtered"]
        lines.append(f"| {lv['jobs']:,} | {w['p50_ms']:.2f} ms, GCS {w['gcs_cpu_ms']:.2f} ms ({w['returned']:,} "
                     f"returned) | {f['p50_ms']:.2f} ms, GCS {f['gcs_cpu_ms']:.2f} ms |")
    return lines + [""]


def _grace_details(g: dict) -> list[str]:
    lines = ["## Graceful kills at shutdown (issue 22, row 5)", "",
             f"{g['actors']} real actors (one process each, `num_cpus=0`), {g['hanging']} of whose "
             "`__ray_shutdown__` never return" + (", one app deployed" if g["with_app"] else "") + "; durable: "
             f"registered serve-wide with `grace_s={g['grace_s']:g}`; plain: unregistered. Shutdown: from the call "
             "until the controller is gone. Markers: `done` written by each hook that returned, `begun` by each "
             "that started. Processes: `/proc/<pid>` of each actor (a zombie counts as gone).", "",
             "| rep | kind | shutdown s | hooks returned | hooks begun | processes left at the end | all gone s "
             "after the call | starting the actors s | GiB available with them | USS MB an actor |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind in (PLAIN, DURABLE):
        for i, r in enumerate(g["by_rep"][kind]):
            lines.append(f"| {i + 1} | {kind} | {r['shutdown_s']:.2f} | {r['markers_done']} | {r['markers_begun']} | "
                         f"{r['alive_at_end']} | {_s2(r['all_gone_s']) if kind == DURABLE else '—'} | "
                         f"{r['started_s']:.0f} | {r['available_gb_with_actors']:.1f} | {r['actor_uss_mb']:.0f} |")
    return lines + [""]


def _s(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.1f} s"


def _issue21_table(before: dict | None, after: dict | None) -> list[str]:
    b = {r["key"]: r for r in issue21_rows(before)} if before else {}
    a = {r["key"]: r for r in issue21_rows(after)} if after else {}
    keys = sorted(set(b) | set(a), key=lambda k: (int(k.rstrip("ab")), k))
    if not keys:
        return []
    lines = ["## Issue 21 targets (records v2)", "",
             ("Rows of issue 21's \"Targets\" table that these sections measure. Rows 1, 3 and 4 read "
              "records of the layout the section seeded (shown in each cell: v2 since records v2; a run of older "
              "benchmarks seeded v1); row 7 is the v1 figure, reported apart."), "",
             "| # | target | before | after | command |", "|---|---|---|---|---|"]
    for k in keys:
        row = a.get(k) or b.get(k)
        section = SECTION_OF_21[k]
        bc = _cell(b.get(k)) + (f"<br>_{_commit(before, section)}_" if k in b else "")
        ac = _cell(a.get(k)) + (f"<br>_{_commit(after, section)}_" if k in a else "")
        lines.append(f"| {k} | {row['target']} | {bc} | {ac} | `python -m benchmarks --only {section}` |")
    return lines + [""]


def _cell(row: Optional[dict]) -> str:
    if row is None:
        return "not run"
    verdict = "" if row["ok"] is None else (" holds" if row["ok"] else " **missed**")
    return f"**{row['shown']}**{verdict}<br>{row['detail']}"


def _commit(results: Optional[dict], section: str) -> str:
    if not results:
        return ""
    s = results.get("sections", {}).get(section)
    return f"{s['commit']}{' (quick)' if s.get('quick') else ''}" if s else ""


def _targets_table(before: Optional[dict], after: Optional[dict]) -> list[str]:
    b = {r["key"]: r for r in target_rows(before)} if before else {}
    a = {r["key"]: r for r in target_rows(after)} if after else {}
    keys = sorted(set(b) | set(a))
    if not keys:
        return []
    lines = ["## Issue 14 targets", "",
             "| # | target | before | after | command |", "|---|---|---|---|---|"]
    for k in keys:
        row = a.get(k) or b.get(k)
        section = "list" if k == "5a" else ("history" if k == "5b" else SECTION_OF[k[0]])
        head = f"{row['target']}"
        cmd = f"`python -m benchmarks --only {section}`"
        bc = _cell(b.get(k)) + (f"<br>_{_commit(before, section)}_" if k in b else "")
        ac = _cell(a.get(k)) + (f"<br>_{_commit(after, section)}_" if k in a else "")
        lines.append(f"| {k} | {head} | {bc} | {ac} | {cmd} |")

    def held(rows: dict) -> str:
        limited = [r for r in rows.values() if r["ok"] is not None]
        return f"{sum(1 for r in limited if r['ok'])} of {len(limited)}"

    lines += ["", "Targets that hold: " + "; ".join(
        f"{label} {held(rows)}" for label, rows in (("before", b), ("after", a)) if rows) + ". "
        "Rows without a limit (—) are figures the issue asks for without a target.", ""]
    return lines


def _sections_table(label: str, results: Optional[dict]) -> list[str]:
    if not results or not results.get("sections"):
        return []
    lines = [f"**{label}**: sections, the serve_cleanup commit each imported, and the command:", "",
             "| section | commit | at | took | command |", "|---|---|---|---:|---|"]
    for name, s in results["sections"].items():
        lines.append(f"| `{name}` | {s['commit']} | {s['at']} | {s['seconds']:.0f} s | "
                     f"`{s.get('command', 'python -m benchmarks')}` |")
    return lines + [""]


def _floor_details(f: dict) -> list[str]:
    lines = ["## Floor: each round (target 1)", "",
             "p50 ms per round; kinds alternate which goes first. Ratios: named and anon = durable ÷ "
             "(plain + that round's put p50); CPU = durable ÷ (plain + probe put CPU); throughput = durable ÷ plain.",
             "",
             "| round | first | named plain / durable | anon plain / durable | put | public | burst CPU ms plain / "
             "durable / probe put | burst /s plain / durable | ratios named, anon, CPU, throughput |",
             "|---:|---|---|---|---:|---:|---|---|---|"]
    for r in f["rounds"]:
        p, d, q = r[PLAIN], r[DURABLE], r["ratios"]
        probe = (p["probe"]["burst"]["cpu_ms"] + d["probe"]["burst"]["cpu_ms"]) / 2
        lines.append(
            f"| {r['round']} | {r['order'][0]} | {p['named_p50']:.2f} / {d['named_p50']:.2f} | "
            f"{p['anon_p50']:.2f} / {d['anon_p50']:.2f} | {r['put_p50']:.2f} | {d.get('public_p50', 0):.2f} | "
            f"{p['burst_cpu_ms']:.2f} / {d['burst_cpu_ms']:.2f} / {probe:.2f} | "
            f"{p['burst_per_s']:.0f} / {d['burst_per_s']:.0f} | {q['named']:.2f}, {q['anon']:.2f}, "
            f"{q['burst_cpu']:.2f}, {q['throughput']:.2f} |")
    lines.append(f"| pooled | | {f[PLAIN]['named_p50']:.2f} / {f[DURABLE]['named_p50']:.2f} | "
                 f"{f[PLAIN]['anon_p50']:.2f} / {f[DURABLE]['anon_p50']:.2f} | {f['put_p50']:.2f} | "
                 f"{f['public_p50']:.2f} | {f[PLAIN]['burst_cpu_ms']:.2f} / {f[DURABLE]['burst_cpu_ms']:.2f} / "
                 f"{f['probe_put_cpu_ms']:.2f} | {f[PLAIN]['burst_per_s']:.0f} / {f[DURABLE]['burst_per_s']:.0f} | |")
    lines += ["", f"Idle controller CPU before the burst (median): plain {f[PLAIN]['idle_cores'] * 100:.1f} %, "
              f"durable {f[DURABLE]['idle_cores'] * 100:.1f} % of a core; burst CPU without it: plain "
              f"{f[PLAIN]['burst_cpu_ms_minus_idle']:.2f} ms, durable {f[DURABLE]['burst_cpu_ms_minus_idle']:.2f} ms. "
              f"p99: named plain {f[PLAIN]['named_p99']:.2f} / durable {f[DURABLE]['named_p99']:.2f} ms, anon "
              f"plain {f[PLAIN]['anon_p99']:.2f} / durable {f[DURABLE]['anon_p99']:.2f} ms, public "
              f"{f['public_p99']:.2f} ms.", ""]
    return lines


def _history_details(h: dict) -> list[str]:
    lines = ["## History: by dead actors cached in GCS (target 2)", "",
             f"{h['registered']} registered actors per kind and rep (all but 3 timed); idle CPU over "
             f"{h['window_s']:.0f} s windows (% of a core); median of {h['reps']} reps.", "",
             "| dead in GCS | registration p50 plain / durable ms | gcs_server idle: no Serve / plain / durable | "
             "controller idle plain / durable |", "|---:|---|---|---|"]
    for lv in h["levels"]:
        p, d = lv[PLAIN], lv[DURABLE]
        lines.append(f"| {lv['dead_in_table']:,} | {p['reg_p50']:.2f} / {d['reg_p50']:.2f} | "
                     f"{lv['gcs_idle_no_serve'] * 100:.1f} / {p['gcs_idle_cores'] * 100:.1f} / "
                     f"{d['gcs_idle_cores'] * 100:.1f} | {p['controller_idle_cores'] * 100:.1f} / "
                     f"{d['controller_idle_cores'] * 100:.1f} |")
    lines += ["", "### Reading the actor table: three ways, by dead actors cached", "",
              "From the driver, awaited one at a time, for one live (PENDING_CREATION) actor "
              "(`python -m benchmarks.lookup_vs_table`): p50 ms, and gcs_server CPU ms per call.", "",
              "| dead in GCS | `async_get_all_actor_info(actor_id=)` | `GlobalStateAccessor.get_actor_info` | "
              "`async_get_all_actor_info(actor_state_name=\"ALIVE\")` | KV put (control) |",
              "|---:|---|---|---|---|"]
    for lv in h["levels"]:
        c = lv["lookups"]

        def cell(k: str) -> str:
            extra = f" ({c[k]['returned']} returned)" if "returned" in c[k] else ""
            return f"{c[k]['p50_ms']:.3f} ms, GCS {c[k]['gcs_cpu_ms']:.3f} ms{extra}"

        lines.append(f"| {lv['dead_in_table']:,} | {cell('by_id_filter')} | {cell('accessor_by_id')} | "
                     f"{cell('alive_filter')} | {cell('kv_put')} |")
    return lines + [""]


def _shutdown_details(s: dict) -> list[str]:
    r, lv = s["records"], s["live"]
    pts = r["samples"]
    shown = [(t, n) for t, n in pts if round(t) in (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120) or n == 0]
    lines = ["## Shutdown (target 3)", "",
             f"Records left after `serve.shutdown()` was called with {r['at_call']['kv']:,} records in the KV "
             f"(the controller held {r['at_call']['controller']}); shutdown returned after {r['returned_s']:.1f} s, "
             f"the controller was gone after {r['controller_gone_s']:.1f} s:", "",
             "| s after the call | " + " | ".join(f"{t:.0f}" for t, _ in shown) + " |",
             "|---|" + "---:|" * len(shown),
             "| records left | " + " | ".join(f"{n:,}" for _, n in shown) + " |", "",
             "![records left after serve.shutdown()](benchmarks-shutdown-records.png)", "",
             f"Seeding: {r['dead_records']:,} actors created and killed with their real handles stored "
             f"({r['seed']['dead_s']:.0f} s + {r['seed']['dead_put_s']:.0f} s of puts), "
             f"{r['seed']['records']:,} records of unknown actors ({r['seed']['seed_s']:.0f} s, "
             f"{r['seed']['value_bytes_mean']:.0f} B a value).", "",
             f"Live actors: {lv['pending']:,} PENDING_CREATION + {lv['real']} real actors registered through the "
             "upstream method" + (", one app deployed" if lv["with_app"] else "") + ":", "",
             "| rep | kind | shutdown s | records stored | not DEAD at return | not DEAD 5 s later |",
             "|---:|---|---:|---:|---:|---:|"]
    for kind in (PLAIN, DURABLE):
        for i, row in enumerate(lv["by_rep"][kind]):
            lines.append(f"| {i + 1} | {kind} | {row['shutdown_s']:.2f} | "
                         f"{'—' if row['stored'] is None else row['stored']} | {row['not_dead_at_return']} | "
                         f"{row['not_dead_after_5s']} |")
    return lines + [""]


def _memory_details(m: dict, li: Optional[dict]) -> list[str]:
    lines = ["## Records at scale (targets 4 and 5; issue 21, rows 1, 3, 4 and 7)", "",
             "Each controller restart: `ray.kill(controller, no_restart=False)` until `get_pid` answers from a new "
             "process (driver-side), then RSS after a pause.", "",
             "| controller | kill → answer s | RSS MB | rehydrate_ms (status) | log line ms | records at start |",
             "|---|---|---|---|---|---|"]
    for key, label in ((PLAIN, "plain"), ("durable_none", "durable, no record"),
                       ("durable_records", f"durable, {m['records']:,} records")):
        rows = m[key]
        lines.append(f"| {label} | {_rounds([r['answer_s'] for r in rows])} | "
                     f"{', '.join('%.0f' % r['rss_mb'] for r in rows)} | "
                     f"{', '.join(str(r.get('rehydrate_ms', '—')) for r in rows)} | "
                     f"{', '.join(str(r.get('log_rehydrate_ms', '—')) for r in rows)} | "
                     f"{', '.join(str(r.get('records_at_start', '—')) for r in rows)} |")
    lines.append("")
    up = m.get("v1_upgrade")
    if up:
        r = up["restart"]
        gone = up.get("v1_gone_s")
        shown = [(t, n) for t, n in up["polls"]][:12]
        lines += [f"Upgrade (issue 21, row 7): the first restart over {up['stored_v1']:,} v1 records "
                  f"({up['live']:,} of live PENDING_CREATION actors, the rest of actors GCS never knew): kill → "
                  f"answer {r['answer_s']:.2f} s, `rehydrate_ms` {r.get('rehydrate_ms')}, RSS {r['rss_mb']:.0f} MB; "
                  + (f"no v1 key left {gone:.1f} s after the kill" if gone is not None else
                     f"{up['v1_left']:,} v1 keys left {up['waited_s']:.0f} s after the kill")
                  + f"; {up['live_with_v2_key']:,} of the {up['live']:,} live actors held a v2 key then "
                  f"({up['v2_keys_then']:,} v2 keys in all). v1 keys left, by seconds after the kill: "
                  + ", ".join(f"{t:.1f} s: {n:,}" for t, n in shown) + ".", ""]
    if li:
        fixed = li.get("fixed", {})
        lines += [f"`serve-cleanup list --json` over {li['records']:,} records: "
                  f"{_rounds([r['seconds'] for r in li['runs']])} s ({li['entries']:,} entries)"
                  + (f"; fixed costs in a fresh process: `serve-cleanup --version` {fixed['version_s']:.2f} s, "
                     f"`list --json` with no record {fixed['empty_list_s']:.2f} s" if fixed else "") + ".", ""]
    return lines


def _owner_sets_details(o: dict) -> list[str]:
    k = o["owners"]
    lines = [f"## Owner sets: {o['actors']:,} actors × {k} owners vs × 1 (issue 21, row 10)", "",
             (f"App owners that are not deployed (`benchmarks/scale.py`, `owner_sets`); × {k} stores {k} v2 keys "
              "per actor. Restarts alternate which goes first; `list --json` runs with Serve down."), "",
             "| owners per actor | rehydrate_ms | RSS MB | kill → answer s | `list --json` s (entries) |",
             "|---|---|---|---|---|"]
    for kind, label in (("one", "1"), ("many", str(k))):
        rs, ls = o["restarts"][kind], o["lists"][kind]
        rss = ", ".join(f"{r['rss_mb']:.0f}" for r in rs)
        runs = ", ".join(f"{r['seconds']:.2f} ({r['entries']})" for r in ls)
        lines.append(f"| {label} | {', '.join(str(r.get('rehydrate_ms')) for r in rs)} | "
                     f"{rss} | {_rounds([r['answer_s'] for r in rs])} | {runs} |")
    return lines + [""]


def _deletes_details(d: dict) -> list[str]:
    lines = [
        "## Delete concurrency (`Config.deletes_in_flight`)", "",
        f"{d['keys']:,} single-key deletes through `AsyncKvStore.delete`, a chunk gathered at a time "
        "(`benchmarks/deletes.py`); median of the reps; the stall is the longest gap of a 1 ms ticker "
        "on the same event loop.", "",
        "| in flight | total (s) | per key (us) | longest loop stall (ms) |", "|---|---|---|---|",
    ]
    for k, row in d["by_in_flight"].items():
        lines.append(f"| {k} | {row['s_median']:.2f} | {row['us_per_key']:.0f} | {row['stall_ms_max']:.1f} |")
    return lines + [""]


def _by_thread_role(cpu: dict[str, float]) -> dict[str, float]:
    """Thread names (``comm``) to roles: the controller's main thread carries the process
    title (``ray::ServeController``), the event-loop thread the title it had when it was
    created (``ray::IDLE``)."""
    out: dict[str, float] = {}
    for name, v in cpu.items():
        if name == "ray::IDLE":
            role = "event loop (`ray::IDLE`)"
        elif name.startswith("ray::"):
            role = "main: task receipt (`ray::<class>`)"
        else:
            role = f"`{name}`"
        out[role] = out.get(role, 0.0) + v
    return out


def _profile_tables(out_dir: Path) -> list[str]:
    """``python -m benchmarks.profile_burst --json docs/reports/benchmarks-profile-{before,after}.json``."""
    import json

    lines: list[str] = []
    for fname, label in (("benchmarks-profile-before.json", "before"), ("benchmarks-profile-after.json", "after")):
        path = out_dir / fname
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        meta = data.get("_meta", {})
        kinds = [k for k in data if not k.startswith("_")]
        lines += [f"## Where the controller's CPU goes in a burst (py-spy), {label}: {meta.get('commit', '?')} "
                  f"({meta.get('at', '?')})", "",
                  f"`python -m benchmarks.profile_burst --json docs/reports/{fname}`: {meta.get('registrants', 8)} registrant "
                  "threads, every call a new registration of a PENDING_CREATION actor; one burst per kind without "
                  "the profiler (process and per-thread CPU from psutil and `/proc/<pid>/task/*/comm`), then one "
                  "with `py-spy record --gil --nonblocking` attached (Python time holding the GIL, 250 Hz). "
                  "ms per new registration.", "",
                  "| | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
        lines.append("| throughput (no profiler) | " + " | ".join(f"{data[k]['clean']['per_s']:.0f}/s" for k in kinds) + " |")
        lines.append("| process CPU | " + " | ".join(f"{data[k]['clean']['cpu_ms_per_registration']:.3f}" for k in kinds) + " |")
        per_kind = {k: _by_thread_role(data[k]["clean"]["thread_cpu_ms_per_registration"]) for k in kinds}
        for t in sorted({t for k in kinds for t in per_kind[k]}):
            lines.append(f"| thread {t} | " + " | ".join(f"{per_kind[k].get(t, 0.0):.3f}" for k in kinds) + " |")
        cats = [c for c, _ in data[kinds[-1]].get("categories", [])]
        for c in cats:
            vals = []
            for k in kinds:
                d = data[k]
                got = dict(d.get("categories", []))
                vals.append(f"{got.get(c, 0) * 1000 / d['rate_hz'] / d['registrations']:.3f}" if "rate_hz" in d else "—")
            lines.append(f"| py-spy: {c} | " + " | ".join(vals) + " |")
        lines.append("")
    return lines


def write(results: dict, out_dir: Path, baseline: Optional[dict] = None) -> Path:
    """docs/reports/benchmarks.md from this run (``results``) and an optional earlier run."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    if baseline is not None:
        before, after = baseline, results
    elif results.get("label") == "before":
        before, after = results, None
    else:
        before, after = None, results
    quick = any(s.get("quick") for s in results.get("sections", {}).values())
    lines = [
        "# Benchmarks: serve_cleanup vs upstream Ray Serve (issue 14)", "",
        "_Generated by `python -m benchmarks`; do not edit by hand (the analysis below comes from "
        "docs/reports/benchmarks-analysis.md)._", "",
        ("_Smoke run with tiny sizes: the figures below are not meaningful._\n" if quick else ""),
        f"Machine: {_machine()}.", "",
        "Reproduce: `python -m benchmarks --label before` on the old code, then "
        "`python -m benchmarks --baseline docs/reports/benchmarks-before.json` on the new "
        "(`--only SECTION,...` re-runs sections and merges them into `benchmarks.json`). Each section starts "
        "its own local Ray cluster; plain Serve and the durable controller are measured in the same run, "
        "alternating which goes first. Timings are wall-clock from the driver; CPU is psutil on the "
        "process's pid.", "",
        *_sections_table("before", before), *_sections_table("after", after),
        *_targets_table(before, after),
        *_issue21_table(before, after),
        *_issue22_table(results),
    ]
    if results.get("floor"):
        lines += _floor_details(results["floor"])
    if results.get("history"):
        lines += _history_details(results["history"])
    if results.get("shutdown"):
        lines += _shutdown_details(results["shutdown"])
    if results.get("memory"):
        lines += _memory_details(results["memory"], results.get("list"))
    if results.get("owners3"):
        lines += _owner_sets_details(results["owners3"])
    if results.get("pgs"):
        lines += _pgs_details(results["pgs"])
    if results.get("jobs"):
        lines += _jobs_details(results["jobs"])
    if results.get("grace"):
        lines += _grace_details(results["grace"])
    if results.get("deletes"):
        lines += _deletes_details(results["deletes"])
    analysis = out_dir / "benchmarks-analysis.md"  # hand-written
    if analysis.exists():
        lines += [analysis.read_text().rstrip(), ""]
    lines += _profile_tables(out_dir)
    lines += [
        "## How each figure is taken", "",
        "- Actors that must stay live without a process ask for a resource no node has: `PENDING_CREATION` "
        "in the actor table (every registration takes the full new-registration path; they are killable), "
        "no worker process. Real actors cost ~100 MB each on this machine.",
        f"- Records are written through serve_cleanup's KV store in the layout it writes, records v2 "
        f"({stored_layout()}; the value a msgpack v2 map), one serve-wide key per actor unless said "
        "otherwise, with real-sized handles: a real serialized handle with the actor id, name and namespace "
        "replaced in Ray's `ActorHandle` proto. Only the upgrade figure (issue 21, row 7) seeds 0.1.0's v1 "
        "layout (one key per actor, its id alone after the prefix), and it is reported apart.",
        "- Dead actors are made the same way (created PENDING and killed: GCS caches them as DEAD, "
        "up to 100,000 by default).",
        "- Each section's module docstring (`benchmarks/floor.py`, `history.py`, `shutdown.py`, "
        "`scale.py`) says exactly what is timed.", "",
    ]
    md = out_dir / "benchmarks.md"
    md.write_text("\n".join(lines))
    (out_dir / "benchmarks.json").write_text(json.dumps(results, indent=2, default=list))
    _plot(before, after, out_dir)
    return md


def _plot(before: Optional[dict], after: Optional[dict], out_dir: Path) -> None:
    series = [(label, r["shutdown"]["records"]) for label, r in (("before", before), ("after", after))
              if r and r.get("shutdown")]
    if not series:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plot written")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rec in series:
        pts = [(0.0, rec["at_call"]["kv"])] + [tuple(p) for p in rec["samples"]]
        ax.plot([t for t, _ in pts], [n for _, n in pts], "o-", ms=3, label=label)
    ax.axvline(10, color="grey", ls="--", lw=1)
    ax.set_xlabel("seconds after serve.shutdown() was called")
    ax.set_ylabel("records left in the KV")
    ax.set_title("serve.shutdown() with 100,000 dead/unknown records")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "benchmarks-shutdown-records.png", dpi=100)
    plt.close(fig)
