"""Issue 14, targets 4 and 5, and issue 21, rows 1, 3, 4, 7 and 10: 100,000 records in the
durable controller and in the CLI.

Records are written through serve_cleanup's KV store in the layout it writes, records v2
(``harness.record_items``: one key per (actor, owner) pair; one serve-wide key per actor
unless said otherwise), with real-sized handles (a real serialized handle of a named
actor, its actor id, name and namespace replaced per record through Ray's
``ActorHandle`` proto; half named with a namespace, half anonymous), for actors GCS never
knew, dated 10 minutes back. Only the upgrade step below seeds 0.1.0's v1 layout, and its
figures are reported apart.

``memory``: controller kill -> a new controller process answers (``get_pid``), measured
from the driver, ``restarts`` times each for plain Serve, the durable controller with no
record, and the durable controller with ``records`` records; after each restart,
``settle_s`` of rest, then the controller's RSS (psutil), its ``serve_cleanup_status``
(``rehydrate_ms``, records) and the "rehydrated N registration(s) in X ms" line of its
log. Before each restart with records the KV is purged and the controller restarted over
none (not timed: the previous one may still be reaping records by bucket prefix), then
the records are seeded. RSS growth is the median with ``records`` minus the median with
none.

Then, in the same section, the upgrade (issue 21, row 7; skipped when ``v1_records`` is
0): ``v1_records`` v1 records (one key per actor, ``KEY_PREFIX`` + id) behind the running
durable controller, ``v1_live`` of them of live actors (PENDING_CREATION, real handles;
their records must be rewritten as v2, not dropped), the rest of actors GCS never knew,
dated 10 minutes back (the first sweeps drop them); then one controller kill, timed as
above (kill -> answer, RSS, ``rehydrate_ms``), and the KV's keys listed every
``v1_poll_s`` until no v1 key is left or ``v1_wait_s`` (120 s) after the kill passed.
Reported: the restart, when the last v1 key went (seconds after the kill), and how many
of the live actors hold a v2 key then.

``list``: ``serve-cleanup list --json`` over ``records`` records in a fresh process (the
console script), wall clock, ``list_runs`` times, with Serve down (a durable controller's
first liveness sweep drops records of actors GCS never knew, as these are).

``owners3`` (issue 21, row 10; only with ``--only``): ``actors`` actors of ``owners`` app
owners each (one v2 key per pair, so ``actors`` x ``owners`` keys) against the same
actors of one app owner: the restarted controller's ``rehydrate_ms`` and RSS
(``restarts`` kills of each, alternating which goes first; every kill over freshly
seeded records, the KV purged first), then ``serve-cleanup list --json`` with Serve
down (``list_runs`` runs of each, alternating). The owner apps are not deployed: a
running controller finds them gone and reaps those records after its load, which is
timed before that.
"""

from __future__ import annotations

import re
from typing import Callable, Optional
import time
from dataclasses import dataclass

from benchmarks.harness import (
    DURABLE,
    PLAIN,
    V1,
    actor_items,
    app_owners,
    cli_list_json,
    cli_seconds,
    controller_process,
    controller_status,
    is_v1_key,
    key_actor_id,
    kill_actors,
    kill_controller_and_wait,
    log,
    median,
    pending_actors,
    profiling,
    purge_records,
    put_records,
    record_count,
    record_keys,
    seed_unknown_records,
    session_dir,
    start_serve,
    stop_serve,
    template_handle,
)


@dataclass
class ScaleSizes:
    records: int = 100_000
    restarts: int = 3
    settle_s: float = 2.0
    list_runs: int = 3
    # The upgrade step of ``memory`` (issue 21, row 7): 0 skips it.
    v1_records: int = 100_000
    v1_live: int = 1000
    v1_wait_s: float = 120.0
    v1_poll_s: float = 1.0


QUICK = ScaleSizes(records=1000, restarts=1, settle_s=0.2, list_runs=1, v1_records=100, v1_live=4,
                   v1_wait_s=60.0, v1_poll_s=0.2)


@dataclass
class OwnerSetSizes:
    actors: int = 10_000
    owners: int = 3
    restarts: int = 3
    settle_s: float = 2.0
    list_runs: int = 3


OWNERS_QUICK = OwnerSetSizes(actors=100, restarts=1, settle_s=0.2, list_runs=1)

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


def _empty_controller() -> None:
    """Purge the KV's records, then restart the durable controller over none (not timed).
    The previous one may still be reaping its load's records, by bucket prefix deletes
    that would take records seeded meanwhile with them."""
    purge_records()
    kill_controller_and_wait()


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

    def reseed() -> None:
        _empty_controller()
        seeds.append(seed_unknown_records(sizes.records, time.time() - 600))

    out["durable_records"] = _restarts(DURABLE, sizes.restarts, sizes.settle_s, reseed=reseed)
    out["seed"] = seeds[0]
    if sizes.v1_records:
        _empty_controller()
        out["v1_upgrade"] = v1_upgrade(sizes)
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


def v1_upgrade(sizes: ScaleSizes) -> dict:
    """Issue 21, row 7: the first restart of the durable controller (running, with no
    record) over ``v1_records`` v1 records, and how long until no v1 key is left."""
    registered_at = time.time() - 600
    live_n = min(sizes.v1_live, sizes.v1_records)
    half = live_n // 2
    live = pending_actors(half) + pending_actors(live_n - half, named=False)
    seed = {"live_put_s": put_records(actor_items(live, registered_at, layout=V1))}
    seed.update(seed_unknown_records(sizes.v1_records - live_n, registered_at, template_handle(), layout=V1))
    keys = record_keys()
    stored_v1 = sum(1 for k in keys if is_v1_key(k))
    t0 = time.perf_counter()
    row = _restarts(DURABLE, 1, sizes.settle_s)[0]
    polls: list[tuple[float, int]] = []
    gone_s: float | None = None
    left = stored_v1
    while True:
        keys = record_keys()
        at = time.perf_counter() - t0
        left = sum(1 for k in keys if is_v1_key(k))
        polls.append((at, left))
        if left == 0:
            gone_s = at
            break
        if at >= sizes.v1_wait_s:
            break
        time.sleep(sizes.v1_poll_s)
    with_v2 = {key_actor_id(k) for k in keys if not is_v1_key(k)}
    live_ids = [a._actor_id.hex() for a in live]
    out = {
        "records": sizes.v1_records, "live": live_n, "stored_v1": stored_v1, "seed": seed,
        "restart": row, "v1_gone_s": gone_s, "v1_left": left, "waited_s": sizes.v1_wait_s,
        "live_with_v2_key": sum(1 for a in live_ids if a in with_v2),
        "v2_keys_then": sum(1 for k in keys if not is_v1_key(k)), "polls": polls,
    }
    kill_actors(live)
    log(f"memory, upgrade: {stored_v1} v1 records ({live_n} of live actors): kill -> answer {row['answer_s']:.2f} s, "
        f"rehydrate {row.get('rehydrate_ms')} ms, RSS {row['rss_mb']:.0f} MB; "
        + (f"no v1 key left {gone_s:.1f} s after the kill" if gone_s is not None else
           f"{left} v1 key(s) left after {sizes.v1_wait_s:.0f} s")
        + f"; {out['live_with_v2_key']} of {live_n} live actors hold a v2 key")
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



def owner_sets(sizes: OwnerSetSizes) -> dict:
    """Issue 21, row 10: ``actors`` actors of ``owners`` app owners each against one owner
    each: load (``rehydrate_ms``, RSS) and ``list --json``."""
    kinds = {"one": app_owners(1), "many": app_owners(sizes.owners)}
    template = template_handle()
    seeds: dict = {}

    def reseed(kind: str) -> Callable[[], object]:
        def run() -> None:
            if serving[0]:
                _empty_controller()
            else:
                purge_records()
            seeds[kind] = seed_unknown_records(sizes.actors, time.time() - 600, template, owners=kinds[kind])
        return run

    serving = [True]
    purge_records()
    start_serve(DURABLE)
    restarts: dict = {"one": [], "many": []}
    for rep in range(sizes.restarts):
        for kind in (("one", "many") if rep % 2 == 0 else ("many", "one")):
            restarts[kind] += _restarts(DURABLE, 1, sizes.settle_s, reseed=reseed(kind))
    purge_records()
    kill_controller_and_wait()  # a controller with no record shuts down at once
    stop_serve()
    serving[0] = False
    lists: dict = {"one": [], "many": []}
    for rep in range(sizes.list_runs):
        for kind in (("one", "many") if rep % 2 == 0 else ("many", "one")):
            reseed(kind)()
            took, entries = cli_list_json()
            lists[kind].append({"seconds": took, "entries": entries, "stored": record_count()})
    purge_records()
    out: dict = {"actors": sizes.actors, "owners": sizes.owners, "seed": seeds, "restarts": restarts,
                 "lists": lists}
    for kind in ("one", "many"):
        out[kind] = {
            "rehydrate_ms": median(r["rehydrate_ms"] for r in restarts[kind] if r.get("rehydrate_ms") is not None),
            "rss_mb": median(r["rss_mb"] for r in restarts[kind]),
            "answer_s": median(r["answer_s"] for r in restarts[kind]),
            "list_s": median(r["seconds"] for r in lists[kind]),
        }
    one, many = out["one"], out["many"]
    log(f"owners3: {sizes.actors} actors x {sizes.owners} owners vs x 1: rehydrate {many['rehydrate_ms']:.0f} vs "
        f"{one['rehydrate_ms']:.0f} ms; list --json {many['list_s']:.2f} vs {one['list_s']:.2f} s")
    return out
