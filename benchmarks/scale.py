"""Issue 14, targets 4 and 5: 100,000 records in the durable controller and in the CLI.

Records are written with raw GCS KV puts in the documented v1 layout, with real-sized
handles (a real serialized handle of a named actor, its actor id, name and namespace
replaced per record through Ray's ``ActorHandle`` proto; half named with a namespace,
half anonymous), for actors GCS never knew, dated 10 minutes back.

``memory``: controller kill -> a new controller process answers (``get_pid``), measured
from the driver, ``restarts`` times each for plain Serve, the durable controller with no
record, and the durable controller with ``records`` records; after each restart,
``settle_s`` of rest, then the controller's RSS (psutil), its ``serve_cleanup_status``
(``rehydrate_ms``, records) and the "rehydrated N registration(s) in X ms" line of its
log. RSS growth is the median with ``records`` minus the median with none.

``list``: ``serve-cleanup list --json`` over ``records`` records in a fresh process (the
console script), wall clock, ``list_runs`` times, with Serve down (a durable controller's
first liveness sweep drops records of actors GCS never knew, as these are).
"""

from __future__ import annotations

import re
from typing import Callable, Optional
import time
from dataclasses import dataclass

from benchmarks.harness import (
    DURABLE,
    PLAIN,
    cli_list_json,
    cli_seconds,
    controller_process,
    controller_status,
    kill_controller_and_wait,
    log,
    median,
    profiling,
    purge_records,
    record_count,
    seed_unknown_records,
    session_dir,
    start_serve,
    stop_serve,
)


@dataclass
class ScaleSizes:
    records: int = 100_000
    restarts: int = 3
    settle_s: float = 2.0
    list_runs: int = 3


QUICK = ScaleSizes(records=1000, restarts=1, settle_s=0.2, list_runs=1)

_REHYDRATED = re.compile(r"rehydrated (\d+) registration\(s\) in ([0-9.]+) ms")


def _log_rehydrated(pid: int) -> tuple[Optional[int], Optional[float]]:
    """(records, ms) of the "rehydrated ..." line logged by the controller process ``pid``,
    if any: in Serve's controller log, or the worker's stderr file."""
    logs = session_dir()
    if logs is None:
        return None, None
    found: tuple[Optional[int], Optional[float]] = (None, None)
    paths = [*(logs / "logs" / "serve").glob(f"controller_{pid}*.log"), *(logs / "logs").glob(f"worker-*-{pid}.err")]
    for path in paths:
        for m in _REHYDRATED.finditer(path.read_text(errors="replace")):
            found = (int(m.group(1)), float(m.group(2)))
    return found


def _restarts(kind: str, n: int, settle_s: float, reseed: Optional[Callable[[], object]] = None) -> list[dict]:
    """``n`` controller kills, each measured as the new process answers (RSS then, with
    what it read at start in memory) and ``settle_s`` later. ``reseed`` runs before each
    kill: the durable controller's first liveness sweep rightly drops records of actors
    GCS never knew, so every restart with records needs them written again."""
    rows = []
    for _ in range(n):
        if reseed is not None:
            reseed()
        answer_s = kill_controller_and_wait()
        proc = controller_process()
        rss_answer = proc.memory_info().rss / 2**20
        time.sleep(settle_s)
        row = {"answer_s": answer_s, "rss_mb": rss_answer, "rss_settled_mb": proc.memory_info().rss / 2**20}
        if kind == DURABLE:
            status = controller_status()
            records, ms = _log_rehydrated(proc.pid)
            row.update({"rehydrate_ms": status.get("rehydrate_ms"), "records_at_start": records,
                        "log_rehydrate_ms": ms})
        rows.append(row)
    return rows


def memory(sizes: ScaleSizes) -> dict:
    purge_records()
    out: dict = {"records": sizes.records, "restarts": sizes.restarts}
    start_serve(PLAIN)
    out[PLAIN] = _restarts(PLAIN, sizes.restarts, sizes.settle_s)
    start_serve(DURABLE)
    out["durable_none"] = _restarts(DURABLE, sizes.restarts, sizes.settle_s)
    seeds: list[dict] = []
    out["durable_records"] = _restarts(
        DURABLE, sizes.restarts, sizes.settle_s,
        reseed=lambda: seeds.append(seed_unknown_records(sizes.records, time.time() - 600)))
    out["seed"] = seeds[0]
    purge_records()
    kill_controller_and_wait()  # a controller with no record shuts down at once
    stop_serve()

    def med(key: str, field: str) -> float:
        return median(r[field] for r in out[key] if r.get(field) is not None)

    out["summary"] = {
        "plain_answer_s": med(PLAIN, "answer_s"), "plain_rss_mb": med(PLAIN, "rss_mb"),
        "none_answer_s": med("durable_none", "answer_s"), "none_rss_mb": med("durable_none", "rss_mb"),
        "records_answer_s": med("durable_records", "answer_s"), "records_rss_mb": med("durable_records", "rss_mb"),
        "rehydrate_ms": med("durable_records", "rehydrate_ms"),
        "log_rehydrate_ms": med("durable_records", "log_rehydrate_ms"),
        "records_at_start": med("durable_records", "records_at_start"),
    }
    s = out["summary"]
    s["rss_growth_mb"] = s["records_rss_mb"] - s["none_rss_mb"]
    s["answer_vs_plain_s"] = s["records_answer_s"] - s["plain_answer_s"]
    log(f"memory: {s['records_at_start']:.0f} records: RSS {s['none_rss_mb']:.0f} -> {s['records_rss_mb']:.0f} MB "
        f"(+{s['rss_growth_mb']:.0f}); rehydrate {s['rehydrate_ms']:.0f} ms (log {s['log_rehydrate_ms']}); "
        f"kill -> answer {s['records_answer_s']:.2f} s vs plain {s['plain_answer_s']:.2f} s")
    return out


def list_json(sizes: ScaleSizes) -> dict:
    purge_records()
    stop_serve()
    floor = {"version_s": cli_seconds(["--version"])}
    floor["empty_list_s"], _ = cli_list_json()  # no record: start-up, connect, one KV scan
    # Serve stays down: a durable controller's first sweep would drop these records of
    # actors GCS never knew before the first run (list reads the KV either way).
    seed = seed_unknown_records(sizes.records, time.time() - 600)
    runs = []
    for _ in range(sizes.list_runs):
        took, entries = cli_list_json()
        runs.append({"seconds": took, "entries": entries, "stored": record_count()})
        log(f"list: serve-cleanup list --json printed {entries} entries in {took:.2f} s")
    if profiling():
        cli_list_json(profile_as="list-json-cli")  # not timed: py-spy slows it
    purge_records()
    log(f"list: fixed costs: `serve-cleanup --version` {floor['version_s']:.2f} s, `list --json` with no "
        f"record {floor['empty_list_s']:.2f} s")
    return {"records": sizes.records, "seed": seed, "runs": runs, "fixed": floor,
            "seconds": median(r["seconds"] for r in runs), "entries": runs[0]["entries"]}

