"""Where the controller's CPU goes during a burst of registrations (py-spy), plain vs durable.

    python -m benchmarks.profile_burst [--registrants 8] [--per-registrant 250] [--out DIR]

For each controller kind: start Serve, create ``registrants x per_registrant`` distinct
actors that stay PENDING_CREATION (they ask for a resource no node has: live to the actor
table, so every registration takes the full new-registration path, but no worker process
each), attach ``py-spy record`` to the controller process, run the burst (one thread per
registrant, every call a new registration through the upstream method), stop py-spy and
read the controller's CPU time from psutil. Prints, per registration: process CPU,
sampled Python CPU, and the functions that take it (self and inclusive), and writes the
raw stacks and a speedscope profile per kind into ``--out``.

Needs ``pip install py-spy`` and the right to ptrace the controller (root, or
``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import ray

from benchmarks.harness import (
    DURABLE,
    PLAIN,
    burst,
    connect,
    controller,
    log,
    package_commit,
    purge_records,
    start_serve,
    stop_serve,
)

RATE_HZ = 250


@ray.remote(num_cpus=0, resources={"serve_cleanup_bench_never": 1})
class Pending:
    """Never scheduled: PENDING_CREATION in the actor table, no process."""


def pending_actors(n: int) -> list:
    return [Pending.options(lifetime="detached", name=f"pending-{os.urandom(6).hex()}",
                            namespace="serve-cleanup-bench").remote() for _ in range(n)]


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (``/proc/<pid>/task/*/comm``; same names summed)."""
    out: dict[str, float] = collections.defaultdict(float)
    for t in psutil.Process(pid).threads():
        try:
            name = Path(f"/proc/{pid}/task/{t.id}/comm").read_text().strip()
        except OSError:
            name = "?"
        out[name] += t.user_time + t.system_time
    return out


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*)\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    parts = path.replace("\\", "/").split("/")
    tail = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{m.group('func')} ({tail})"


# Where a sample's time belongs: the first category (in this order) any of whose markers
# appears in the sample's stack. Markers are function names as py-spy prints them.
CATEGORIES = [
    ("Serve control loop", ("ServeController.run_control_loop",)),
    ("handle argument deserialization", ("_actor_handle_deserializer", "Worker.deserialize_objects")),
    ("logging (logger.info)", ("Logger.info", "Logger._log", "Logger.handle")),
    ("metrics (Counter.inc, gauges)", ("Counter.inc", "Metric._record", "Gauge.set", "set_records")),
    ("GCS KV put (call + record encode)", ("GcsRecordStore.put", "Registry.add", "records.py")),
    ("GCS actor lookup (call + parse)", ("lookup_actor", "parse_actor_table_entry")),
    ("handle bytes + proto parse", ("handle_to_bytes", "handle_name_namespace", "_serialization_helper")),
    ("per-actor lock", ("KeyedLocks", "_AsyncGeneratorContextManager")),
    ("future plumbing (GCS futures -> asyncio)", ("wrap_future", "_chain_future", "_set_concurrent_future_state",
                                                  "Future.set_result", "incremented_fut")),
    ("registration logic (serve_cleanup)", ("serve_cleanup/",)),
    ("task dispatch (run_coroutine_threadsafe, result serialization)", (
        "run_coroutine_threadsafe", "ensure_future", "SerializationContext.serialize", "Future.result",
        "actor_method_executor", "Future.__init__")),
]


def categorize(path: Path) -> collections.Counter:
    out: collections.Counter = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        for name, markers in CATEGORIES:
            if any(m in stack for m in markers):
                out[name] += int(count)
                break
        else:
            out["other"] += int(count)
    return out


def parse_raw(path: Path) -> tuple[int, collections.Counter, collections.Counter, collections.Counter]:
    """Total samples; self samples per frame; inclusive samples per frame; per thread."""
    total = 0
    self_c: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        if frames and frames[0].startswith(("thread (", "process ")):
            threads[frames[0]] += n
            frames = frames[1:]
        frames = [_short(f) for f in frames]
        total += n
        if frames:
            self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return total, self_c, incl, threads


def profile_kind(kind: str, registrants: int, per: int, out: Path, pyspy: str) -> dict:
    start_serve(kind)
    ctrl = controller()
    pid = ray.get(ctrl.get_pid.remote())
    proc = psutil.Process(pid)
    all_groups = [pending_actors(per) for _ in range(2 * registrants)]
    groups = all_groups
    warm = pending_actors(5)
    ray.get([ctrl._register_shutdown_cleanup_actor.remote(a) for a in warm])
    time.sleep(1.0)  # let the controller settle after start
    idle0, t0 = cpu_s(proc), time.perf_counter()
    time.sleep(2.0)
    idle_rate = (cpu_s(proc) - idle0) / (time.perf_counter() - t0)  # CPU s per s

    # A clean pass first (no profiler attached): process and per-thread CPU.
    th0, c0 = thread_cpu(pid), cpu_s(proc)
    clean_took = burst(ctrl, groups[:registrants])
    c1, th1 = cpu_s(proc), thread_cpu(pid)
    n = registrants * per
    per_thread = {k: (th1.get(k, 0.0) - th0.get(k, 0.0)) / n * 1000 for k in th1}
    per_thread = dict(sorted(((k, v) for k, v in per_thread.items() if v > 0.001), key=lambda kv: -kv[1]))
    clean = {"burst_s": clean_took, "per_s": n / clean_took,
             "cpu_ms_per_registration": (c1 - c0) / n * 1000,
             "cpu_ms_per_registration_minus_idle": (c1 - c0 - idle_rate * clean_took) / n * 1000,
             "thread_cpu_ms_per_registration": per_thread}
    groups = groups[registrants:]

    raw = out / f"profile-{kind}.txt"
    spy = subprocess.Popen(
        [pyspy, "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--format", "raw",
         "--nolineno", "--threads", "--nonblocking", "--gil", "--output", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # py-spy attaches
    c0 = cpu_s(proc)
    took = burst(ctrl, groups)
    c1 = cpu_s(proc)
    time.sleep(0.2)
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
    n = registrants * per
    busy_s = c1 - c0
    result = {
        "clean": clean,
        "kind": kind, "registrations": n, "burst_s": took, "per_s": n / took,
        "cpu_ms_per_registration": busy_s / n * 1000,
        "cpu_ms_per_registration_minus_idle": (busy_s - idle_rate * took) / n * 1000,
        "idle_cpu_fraction": idle_rate,
    }
    if raw.exists():
        total, self_c, incl, threads = parse_raw(raw)
        sampled_s = 1.2 + took  # the window py-spy sampled (attach to stop)
        result.update({
            "samples": total, "rate_hz": RATE_HZ, "window_s": sampled_s,
            "threads": dict(threads.most_common()),
            "categories": categorize(raw).most_common(),
            "self_top": self_c.most_common(40), "inclusive_top": incl.most_common(80),
        })
    else:
        result["error"] = spy.stderr.read().decode()[-2000:] if spy.stderr else "no output"
    stop_serve()
    purge_records()
    for g in all_groups + [warm]:
        for a in g:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_burst", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registrants", type=int, default=8)
    p.add_argument("--per-registrant", type=int, default=250)
    p.add_argument("--address", default=None)
    p.add_argument("--out", default="/tmp/serve-cleanup-profile", help="raw stacks and profile.json go here")
    p.add_argument("--json", default=None, help="also write the summary here (e.g. docs/reports/benchmarks-profile-after.json)")
    args = p.parse_args(argv)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    connect(args.address)
    results = {}
    try:
        stop_serve()
        purge_records()
        for kind in (PLAIN, DURABLE):
            log(f"profiling {kind} ...")
            results[kind] = profile_kind(kind, args.registrants, args.per_registrant, out, pyspy)
            r = results[kind]
            log(f"{kind}: {r['registrations']} in {r['burst_s']:.2f}s ({r['per_s']:.0f}/s), "
                f"CPU {r['cpu_ms_per_registration']:.3f} ms/registration "
                f"({r['cpu_ms_per_registration_minus_idle']:.3f} without idle)")
    finally:
        try:
            stop_serve()
            purge_records()
        finally:
            ray.shutdown()
    meta = {"_meta": {"commit": package_commit(), "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      "registrants": args.registrants, "per_registrant": args.per_registrant}}
    (out / "profile.json").write_text(json.dumps({**meta, **results}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({**meta, **results}, indent=2))
    for kind, r in results.items():
        print(f"\n== {kind}: {r['registrations']} registrations, {r['per_s']:.0f}/s, "
              f"process CPU {r['cpu_ms_per_registration']:.3f} ms per registration")
        if "samples" not in r:
            print("  py-spy failed:", r.get("error"))
            continue
        per_sample_ms = 1000 / r["rate_hz"]
        n = r["registrations"]
        c = r["clean"]
        print(f"  without profiler: {c['per_s']:.0f}/s, process CPU {c['cpu_ms_per_registration']:.3f} ms "
              f"per registration ({c['cpu_ms_per_registration_minus_idle']:.3f} without idle); per thread: "
              + ", ".join(f"{k} {v:.3f}" for k, v in c["thread_cpu_ms_per_registration"].items()))
        print(f"  py-spy: {r['samples']} samples at {r['rate_hz']} Hz over {r['window_s']:.1f}s; "
              f"threads {r['threads']}")
        print("  by category (ms per registration of GIL-holding Python time, % of samples):")
        for name, c in r["categories"]:
            print(f"    {c * per_sample_ms / n:7.4f}  {100 * c / r['samples']:5.1f}%  {name}")
        print("  self time (ms per registration, % of sampled):")
        for frame, c in r["self_top"][:25]:
            print(f"    {c * per_sample_ms / n:7.4f}  {100 * c / r['samples']:5.1f}%  {frame}")
        print("  inclusive:")
        for frame, c in r["inclusive_top"][:45]:
            print(f"    {c * per_sample_ms / n:7.4f}  {100 * c / r['samples']:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
