"""Turn measurements into docs/benchmarks.md and two PNG plots."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import ray

from benchmarks.harness import DURABLE, PLAIN


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
    return (
        f"{os.cpu_count()} cores ({cpu}){mem}; {platform.system()} {platform.release()}; "
        f"Python {sys.version.split()[0]}; ray {ray.__version__}"
    )


def _slope(rows: list[dict], kind: str) -> float:
    """Least-squares seconds per extra registered actor."""
    xs = [r["k"] for r in rows]
    ys = [r[kind] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def _restart_verdict(measured: float, budget: float) -> str:
    if measured <= budget:
        return "holds"
    over = measured - budget
    return (
        f"**missed** by {over * 1000:.0f} ms ({over / budget:.1%}); importing serve_cleanup "
        "in the new process costs ~15 ms, and medians move by ~30 ms between runs"
    )


def _ok(flag: bool) -> str:
    return "holds" if flag else "**missed**"


def _fit(rows: list[dict], kind: str) -> tuple[float, float]:
    """Least-squares (intercept s, slope s per actor) of shutdown time against K."""
    xs = [r["k"] for r in rows]
    ys = [r[kind] for r in rows]
    slope = _slope(rows, kind)
    return sum(ys) / len(ys) - slope * sum(xs) / len(xs), slope


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def target_rows(results: dict) -> list[dict]:
    """One row per issue-11 target: what was measured, the ratio or figure, the limit."""
    rows: list[dict] = []

    def add(key, target, measured, value, limit, higher_is_better=False, fmt="{:.2f}×"):
        ok = None if value is None else (value >= limit if higher_is_better else value <= limit)
        rows.append({"key": key, "target": target, "measured": measured, "value": value,
                     "shown": "—" if value is None else fmt.format(value), "ok": ok})

    f = results.get("floor")
    if f:
        p, d = f[PLAIN], f[DURABLE]
        floor = p["new_p50"] + f["put_p50"]
        add("1", "new registration p50 ≤ 1.15 × (plain p50 + GCS KV put p50)",
            f"durable {d['new_p50']:.2f} ms; plain {p['new_p50']:.2f} + put {f['put_p50']:.2f} = "
            f"{floor:.2f} ms ({f['n_new']} calls per side, {f['n_puts']} puts)", _ratio(d["new_p50"], floor), 1.15)
        add("2a", f"controller CPU per new registration, burst of {f['burst_registrants']} registrants ≤ 1.5× plain",
            f"durable {d['burst_cpu_ms']:.2f} ms, plain {p['burst_cpu_ms']:.2f} ms "
            f"({f['burst_registrations']} registrations per burst, median of {f['burst_reps']})",
            _ratio(d["burst_cpu_ms"], p["burst_cpu_ms"]), 1.5)
        add("2b", "burst throughput ≥ 0.75× plain",
            f"durable {d['burst_per_s']:.0f}/s, plain {p['burst_per_s']:.0f}/s",
            _ratio(d["burst_per_s"], p["burst_per_s"]), 0.75, higher_is_better=True)
        add("2c", "repeat registration p50 ≤ 1.05× plain",
            f"durable {d['repeat_p50']:.2f} ms, plain {p['repeat_p50']:.2f} ms ({f['n_repeat']} calls per side)",
            _ratio(d["repeat_p50"], p["repeat_p50"]), 1.05)
    sc = results.get("scale")
    if sc:
        big, base, sh = sc["big"], sc["base"], sc["shutdown"]
        n = f"{sc['records']:,}"
        add("3a", f"rehydrate {n} records ≤ 1 s", f"{big['rehydrate_ms']:.0f} ms",
            big["rehydrate_ms"] / 1000, 1.0, fmt="{:.2f} s")
        add("3b", "controller RSS growth ≤ 150 MB",
            f"{base['rss_mb']:.0f} MB with {sc['base_records']} records → {big['rss_mb']:.0f} MB with {n}",
            sc["rss_growth_mb"], 150, fmt="{:.0f} MB")
        add("3c", "`serve-cleanup list --json` ≤ 5 s", f"{big['list_json_s']:.2f} s for "
            f"{big['list_json_entries']:,} entries (a fresh process, connect included)",
            big["list_json_s"], 5, fmt="{:.2f} s")
        add("3d", f"new registration p50 with {n} records ≤ 1.2× with {sc['base_records']}",
            f"{big['new_p50']:.2f} ms vs {base['new_p50']:.2f} ms (records stored while sampling: "
            f"{big['records_at_start']:,} → {big['records_after_samples']:,})",
            _ratio(big["new_p50"], base["new_p50"]), 1.2)
        gone = sh["all_gone_s"]
        add("3e", f"`serve.shutdown()` with {n} records of dead actors: every record gone ≤ 10 s",
            f"returned after {sh['returned_s']:.1f} s with {sh['left_at_return']:,} records left; "
            + (f"all gone after {gone:.1f} s" if gone is not None
               else f"{sh['left_at_end']:,} still stored after {sh['waited_s']:.0f} s"),
            gone if gone is not None else float("inf"), 10, fmt="{:.1f} s")
        if gone is None:
            rows[-1]["shown"] = f"> {sh['waited_s']:.0f} s"
    o = results.get("owners")
    if o:
        p, d = o[PLAIN], o[DURABLE]
        add("4a", f"{o['apps']} apps × {o['deployments_per_app']} deployments at 0 replicas: idle controller CPU ≤ 1.1× plain",
            f"durable {d['idle_cores'] * 100:.2f} %, plain {p['idle_cores'] * 100:.2f} % of a core "
            f"({o['window_s']:.0f} s windows, median of {o['reps']}; {d['records']:.0f} registrations each)",
            _ratio(d["idle_cores"], p["idle_cores"]), 1.1)
        add("4b", "Serve's control-loop duration ≤ 1.1× plain",
            f"mean of the last 100 loops: durable {d['loop_mean_ms']:.2f} ms, plain {p['loop_mean_ms']:.2f} ms",
            _ratio(d["loop_mean_ms"], p["loop_mean_ms"]), 1.1)
    shut = results.get("shutdown")
    if shut:
        top = shut[-1]
        extra = ""
        if len(shut) >= 2:
            (pa, ps), (da, ds) = _fit(shut, PLAIN), _fit(shut, DURABLE)
            at100 = (da + 100 * ds) - (pa + 100 * ps)
            extra = (f"; per actor durable {ds * 1000:.1f} ms, plain {ps * 1000:.1f} ms → "
                     f"K=100 extrapolated: {at100:+.2f} s")
        add("5", f"shutdown with K registered actors ≤ plain + 1 s (measured up to K={top['k']})",
            f"K={top['k']}: durable {top[DURABLE]:.2f} s, plain {top[PLAIN]:.2f} s "
            f"(difference {top[DURABLE] - top[PLAIN]:+.2f} s){extra}",
            top[DURABLE] - top[PLAIN], 1.0, fmt="{:+.2f} s")
    return rows


def _targets_table(results: dict, baseline: dict | None) -> list[str]:
    rows = target_rows(results)
    if not rows:
        return []
    before = {r["key"]: r for r in target_rows(baseline)} if baseline else {}
    head = "| # | target | measured | figure | |" + (" before | |" if before else "")
    sep = "|---|---|---|---:|---|" + ("---:|---|" if before else "")
    lines = ["## Issue 11 targets", "", head, sep]
    for r in rows:
        verdict = "—" if r["ok"] is None else _ok(r["ok"])
        line = f"| {r['key']} | {r['target']} | {r['measured']} | {r['shown']} | {verdict} |"
        if before:
            b = before.get(r["key"])
            line += (f" {b['shown']} | {'—' if b['ok'] is None else _ok(b['ok'])} |" if b else " | |")
        lines.append(line)
    held = sum(1 for r in rows if r["ok"])
    lines += ["", f"{held} of {len(rows)} hold." + (
        f" Before: {sum(1 for r in before.values() if r['ok'])} of {len(before)}"
        f" (commit {baseline.get('sections', {}).get('floor', {}).get('commit', '?')})." if before else ""), ""]
    return lines


def _by_thread_role(cpu: dict[str, float]) -> dict[str, float]:
    """Thread names (``comm``) to roles: the controller's main thread carries the process
    title (``ray::ServeController`` or the subclass's name), the event-loop thread the
    title it had when it was created (``ray::IDLE``)."""
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


def _extra_tables(out_dir: Path) -> list[str]:
    """Figures from ``python -m benchmarks.profile_burst --out`` / ``benchmarks.micro --json``."""
    lines: list[str] = []
    for fname, label in (("benchmarks-profile-before.json", "before: the pre-core controller (d5fdad3)"),
                         ("benchmarks-profile.json", "after: the CleanupCore controller")):
        prof = out_dir / fname
        if not prof.exists():
            continue
        data = json.loads(prof.read_text())
        lines += [f"## Where the controller's CPU goes in a burst (py-spy), {label}", "",
                  "`python -m benchmarks.profile_burst --json docs/" + fname + "`: 8 registrant threads, "
                  "every call a new registration; one burst per kind without the profiler "
                  "(process and per-thread CPU from psutil and `/proc/<pid>/task/*/comm`), then one "
                  "with `py-spy record --gil --nonblocking` attached (Python time holding the GIL, "
                  "250 Hz). ms per new registration.", "",
                  "| | " + " | ".join(data) + " |", "|---|" + "---:|" * len(data)]
        kinds = list(data)
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
    micro = out_dir / "benchmarks-micro.json"
    if micro.exists():
        data = json.loads(micro.read_text())
        lines += ["## The steps in isolation (driver-side micro-benchmarks)", "",
                  "`python -m benchmarks.micro --json docs/benchmarks-micro.json`: per call, wall time and CPU "
                  "of the calling process (all its threads: GCS client I/O included; an idle driver burns "
                  "about 0.1 ms of CPU per ms of wall time, which is inside the CPU column).", "",
                  "| step | wall µs | CPU µs |", "|---|---:|---:|",
                  *[f"| {k} | {v['wall_us']:.1f} | {v['cpu_us']:.1f} |" for k, v in data.items()], ""]
    return lines


_OLD_SECTIONS = ("latency", "breakdown", "scaling", "concurrent", "restart", "shutdown")


def write(results: dict, out_dir: Path, command: str, smoke: bool, baseline: dict | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = results.get("sizes", {})
    lines = [
        "# Benchmarks: serve_cleanup vs upstream Ray Serve",
        "",
        ("_Smoke run with tiny sizes: the figures below are not meaningful._\n" if smoke else ""),
        f"Machine: {_machine()}.",
        "",
        f"Reproduce: `{command}` (starts its own local Ray; both controllers are measured "
        "in the same run, A/B rounds alternating; `--only SECTION,...` re-runs sections and "
        "merges them into `benchmarks.json`). Timings are wall-clock from the driver.",
        "",
        "Sections and the code they ran on: "
        + "; ".join(f"`{k}` {v['commit']} at {v['at']} ({v['seconds']:.0f} s)"
                    for k, v in results.get("sections", {}).items()) + "."
        + (" Taken from an earlier run (not re-run since): "
           + ", ".join(f"`{k}`" for k in _OLD_SECTIONS if k in results and k not in results.get("sections", {}))
           + "." if any(k in results and k not in results.get("sections", {}) for k in _OLD_SECTIONS) else ""),
        "",
        *_targets_table(results, baseline),
    ]
    lat, scal, conc = results.get("latency"), results.get("scaling"), results.get("concurrent")
    rst, shut = results.get("restart"), results.get("shutdown")
    older = []
    if lat:
        ratio = lat["durable_p50"] / lat["plain_p50"]
        older += [
            f"| registration p50 through the upstream method (real actors, one at a time) | "
            f"durable {lat['durable_p50']:.2f} ms vs plain {lat['plain_p50']:.2f} ms = **{ratio:.2f}×** "
            f"({lat['n']} calls each) |",
            f"| registration p99 | durable {lat['durable_p99']:.2f} ms, plain {lat['plain_p99']:.2f} ms |",
        ]
    if scal:
        base, top = scal[0], scal[-1]
        older.append(f"| p50 with {top['records']:,} records vs {base['records']:,} | "
                     f"{top['p50']:.2f} ms vs {base['p50']:.2f} ms = {top['p50'] / base['p50']:.2f}×; "
                     f"rehydrate {top['rehydrate_ms']:.1f} ms |")
    if conc:
        older.append(f"| {sizes.get('concurrent', 8)} concurrent registrants (real actors): throughput, lost | "
                     f"durable {conc[DURABLE]['per_s']:.0f}/s, plain {conc[PLAIN]['per_s']:.0f}/s; "
                     f"lost {conc[DURABLE]['lost']} |")
    if rst:
        big = f"{DURABLE}-{results['restart_records']}"
        budget = rst[PLAIN]["p50_s"] + (rst[big]["rehydrate_ms"] or 0) / 1000
        older.append(f"| restarted controller answers (kill → first answer from the new process) | durable "
                     f"{rst[big]['p50_s']:.3f} s with {results['restart_records']:,} records (rehydrate "
                     f"{rst[big]['rehydrate_ms']:.1f} ms), {rst[DURABLE + '-0']['p50_s']:.3f} s with none; "
                     f"plain {rst[PLAIN]['p50_s']:.3f} s; budget plain + rehydrate: "
                     f"{_restart_verdict(rst[big]['p50_s'], budget)} |")
    if older:
        lines += ["## Other figures", "", "| figure | measured |", "|---|---|", *older, ""]
    if results.get("breakdown"):
        lines += [
            "## Where a registration's time goes", "",
            "Medians, same run, real actors.", "",
            "| step | p50 ms |", "|---|---:|",
            *[f"| {k} | {v:.3f} |" for k, v in results["breakdown"].items()], "",
        ]
    analysis = out_dir / "benchmarks-analysis.md"  # hand-written: where the time goes
    if analysis.exists():
        lines += [analysis.read_text().rstrip(), ""]
    lines += _extra_tables(out_dir)
    if scal:
        lines += [
            "## Registration latency vs stored records (durable)", "",
            "| records | p50 ms | p99 ms | rehydrate ms |", "|---:|---:|---:|---:|",
            *[f"| {r['records']:,} | {r['p50']:.2f} | {r['p99']:.2f} | {r['rehydrate_ms']:.1f} |" for r in scal],
            "", "![latency vs records](benchmarks-latency-vs-records.png)", "",
        ]
    if shut:
        lines += [
            "## Shutdown time with K registered actors (one app deployed)", "",
            "Most of either side's time is Serve's own shutdown of the app's replicas, which "
            "varies by a few hundred ms from run to run. The durable side deletes a record only "
            "once the actor table shows the actor `DEAD`, so it waits for the killed processes "
            "to exit (upstream returns while they are still dying). Real actors cost ~100 MB "
            "each here, so K stops at the largest value in the table; target 5 (K=100) is "
            "extrapolated from a least-squares line per side.", "",
            "| K | plain s | durable s | durable − plain s |", "|---:|---:|---:|---:|",
            *[f"| {r['k']} | {r[PLAIN]:.2f} | {r[DURABLE]:.2f} | {r[DURABLE] - r[PLAIN]:+.2f} |" for r in shut],
            "", "![shutdown vs K](benchmarks-shutdown-vs-k.png)", "",
        ]
    lines += [
        "## How each figure is taken", "",
        "- Targets 1, 2 and 4 register actors that stay `PENDING_CREATION` (they ask for a "
        "resource no node has): live in the actor table, so every call takes the full "
        "new-registration path, but no worker process each. Both kinds see the same actors.",
        "- Target 1: per round and kind one Serve instance; new registrations one at a time "
        "through `_register_shutdown_cleanup_actor`; then repeat registrations of one "
        "registered actor; then GCS KV puts from the driver (awaited one at a time, a "
        "300-byte value in Serve's KV namespace). Kinds alternate which goes first.",
        "- Target 2: controller CPU is `psutil` user+system time of the controller process "
        "(pid from Serve's own `get_pid`) across the burst, divided by the registrations; "
        "8 driver threads, each submitting its calls at once after a barrier.",
        "- Target 3: synthetic records of actors that never existed (so the actor table does "
        "not know them, as after GCS evicted dead actors) written through the package's own "
        "`GcsRecordStore`, then the controller is killed so the restarted one rehydrates them; "
        "RSS 1 s after the restart, against the same with 10 records; `list --json` runs in a "
        "fresh process; shutdown is `serve.shutdown()` and then polling the KV until no record is left.",
        "- Target 4: idle controller CPU over a window after the apps are deployed and every "
        "registration made; control-loop duration from Serve's own `get_health_metrics()` "
        "(mean of its last 100 loops), on both kinds.",
        "- Restart: `ray.kill(controller, no_restart=False)` until a call (`get_pid`) is "
        "answered by a new controller process; one app deployed.",
        "- Shutdown: `serve.shutdown()` until the controller actor is gone; the same app and "
        "the same number of registrations (real actors) on both sides.",
        "",
    ]
    md = out_dir / "benchmarks.md"
    md.write_text("\n".join(lines))
    (out_dir / "benchmarks.json").write_text(json.dumps(results, indent=2))
    if scal and shut:
        _plots(scal, shut, out_dir)
    return md


def _plots(scal: list[dict], shut: list[dict], out_dir: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plots written")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["records"] for r in scal], [r["p50"] for r in scal], "o-", label="p50")
    ax.plot([r["records"] for r in scal], [r["p99"] for r in scal], "s--", label="p99")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("records already stored")
    ax.set_ylabel("registration latency (ms)")
    ax.set_title("Durable registration latency vs stored records")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "benchmarks-latency-vs-records.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["k"] for r in shut], [r[PLAIN] for r in shut], "o-", label="plain Ray Serve")
    ax.plot([r["k"] for r in shut], [r[DURABLE] for r in shut], "s-", label="serve_cleanup")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("registered actors K")
    ax.set_ylabel("serve.shutdown() (s)")
    ax.set_title("Shutdown time vs registered actors")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "benchmarks-shutdown-vs-k.png", dpi=100)
    plt.close(fig)
