"""Issue 22, target 5: graceful kills at ``serve.shutdown()``.

One local cluster; plain Serve and the durable controller alternate which goes first,
``reps`` each. Each run: Serve started, one app deployed (as in ``shutdown.py``'s live
case), ``actors`` real detached actors (``num_cpus=0``, one worker process each) of a class
whose ``__ray_shutdown__`` writes a marker file ``begun-<i>`` and then, for ``hanging`` of
them (every tenth), sleeps forever, and for the rest writes ``done-<i>`` and returns. Each
actor's pid comes from a method call.

* durable: each registered serve-wide with ``grace_s`` (``serve_cleanup.register(a,
  grace_s=...)``, one at a time from the driver);
* plain: the same actors exist, unregistered (plain Serve cannot register them with a
  grace).

Then ``settle_s`` of rest and ``serve.shutdown()``, timed until the controller is gone
(``shutdown_s``, as ``shutdown.py`` times it). Right then: the markers (``done`` must be
``actors - hanging`` for the durable controller: every hook that can return has run;
``begun`` shows the hanging ones started theirs), and which actor processes still exist
(``/proc/<pid>``, a zombie counts as gone); then up to ``gone_wait_s`` until none does
(``all_gone_s``, from the call). Plain Serve's actors are left alive: the driver kills them
(``ray.kill``, no hook) and waits until their processes are gone before the next run.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import ray
from ray import cloudpickle, serve

from benchmarks.harness import (
    DURABLE,
    PLAIN,
    BenchApp,
    controller,
    kill_actors,
    log,
    median,
    profiled,
    purge_records,
    record_count,
    register_public,
    start_serve,
    stop_serve,
    wait_for,
)

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass
class GraceSizes:
    actors: int = 100
    hanging: int = 10
    grace_s: float = 5.0
    reps: int = 3
    with_app: bool = True
    settle_s: float = 2.0
    gone_wait_s: float = 30.0


QUICK = GraceSizes(actors=10, hanging=1, grace_s=2.0, reps=1, with_app=False, settle_s=0.2, gone_wait_s=15.0)


@ray.remote(num_cpus=0)
class GracefulActor:
    """A real actor whose ``__ray_shutdown__`` leaves marker files (``begun-<i>``, then
    ``done-<i>`` when it returns); a hanging one never returns."""

    def __init__(self, marker_dir: str, index: int, hang: bool) -> None:
        self.dir, self.index, self.hang = marker_dir, index, hang

    def pid(self) -> int:
        return os.getpid()

    def __ray_shutdown__(self) -> None:
        Path(self.dir, f"begun-{self.index}").touch()
        while self.hang:
            time.sleep(3600)
        Path(self.dir, f"done-{self.index}").touch()


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _markers(path: Path, kind: str) -> int:
    return sum(1 for _ in path.glob(f"{kind}-*"))


def _one(kind: str, sizes: GraceSizes, rep: int) -> dict:
    start_serve(kind)
    if sizes.with_app:
        serve.run(BenchApp.bind(), name="bench", route_prefix=None)
    marker_dir = Path(tempfile.mkdtemp(prefix=f"grace-{kind}-"))
    every = max(1, sizes.actors // sizes.hanging) if sizes.hanging else 0
    hangs = [bool(every) and i % every == every - 1 and i // every < sizes.hanging for i in range(sizes.actors)]
    t = time.perf_counter()
    actors = [GracefulActor.options(lifetime="detached").remote(str(marker_dir), i, h) for i, h in enumerate(hangs)]
    pids = ray.get([a.pid.remote() for a in actors], timeout=900)
    started_s = time.perf_counter() - t
    mem = psutil.virtual_memory()
    uss = [psutil.Process(p).memory_full_info().uss for p in pids[:10]]
    registered_s = stored = None
    if kind == DURABLE:
        t = time.perf_counter()
        for a in actors:
            register_public(a, grace_s=sizes.grace_s)
        registered_s = time.perf_counter() - t
        stored = record_count()
    ctrl_pid = ray.get(controller().get_pid.remote())
    time.sleep(sizes.settle_s)
    called = time.perf_counter()
    with profiled(ctrl_pid, f"grace-{kind}-controller") if rep == 0 else _nothing():
        shutdown_s = stop_serve()
    alive_at_end = _alive(pids)
    done, begun = _markers(marker_dir, "done"), _markers(marker_dir, "begun")
    all_gone_s = None
    if kind == DURABLE:
        try:
            wait_for(lambda: not _alive(pids), sizes.gone_wait_s, "every actor process to end", every_s=0.05)
            all_gone_s = time.perf_counter() - called
        except TimeoutError:
            pass
    row = {"shutdown_s": shutdown_s, "actors": len(actors), "hanging": sum(hangs), "stored": stored,
           "markers_done": done, "markers_begun": begun, "alive_at_end": len(alive_at_end),
           "alive_after_wait": len(_alive(pids)), "all_gone_s": all_gone_s, "started_s": started_s,
           "registered_s": registered_s, "available_gb_with_actors": mem.available / 2**30,
           "actor_uss_mb": sum(uss) / len(uss) / 2**20 if uss else None}
    kill_actors(actors)
    wait_for(lambda: not _alive(pids), 120, "the actor processes to end", every_s=0.1)
    purge_records()
    shutil.rmtree(marker_dir, ignore_errors=True)
    log(f"grace rep {rep + 1} {kind}: shutdown {shutdown_s:.2f} s with {len(actors)} actors "
        f"({row['hanging']} hanging, " + (f"registered with grace_s={sizes.grace_s:g}" if kind == DURABLE else "unregistered")
        + f"); "
        f"markers done {done}, begun {begun}; {row['alive_at_end']} processes left when the controller was gone"
        + (f", all gone {all_gone_s:.2f} s after the call" if all_gone_s is not None else "")
        + f"; starting them took {started_s:.0f} s; {row['available_gb_with_actors']:.1f} GiB available with them, "
        f"{row['actor_uss_mb']:.0f} MB USS each")
    return row


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def grace(sizes: GraceSizes) -> dict:
    """Issue 22, target 5: ``serve.shutdown()`` with ``actors`` actors registered with
    ``grace_s`` (``hanging`` of whose hooks never return) vs plain Serve with the same
    actors unregistered."""
    by_kind: dict = {PLAIN: [], DURABLE: []}
    for rep in range(sizes.reps):
        for kind in ((PLAIN, DURABLE) if rep % 2 == 0 else (DURABLE, PLAIN)):
            by_kind[kind].append(_one(kind, sizes, rep))
    d, p = by_kind[DURABLE], by_kind[PLAIN]
    out = {"by_rep": by_kind, "actors": sizes.actors, "hanging": sizes.hanging, "grace_s": sizes.grace_s,
           "reps": sizes.reps, "with_app": sizes.with_app,
           PLAIN: {"shutdown_s": median(r["shutdown_s"] for r in p)},
           DURABLE: {"shutdown_s": median(r["shutdown_s"] for r in d),
                     "markers_done_min": min(r["markers_done"] for r in d),
                     "markers_begun_min": min(r["markers_begun"] for r in d),
                     "alive_at_end_max": max(r["alive_at_end"] for r in d),
                     "all_gone_s": None if any(r["all_gone_s"] is None for r in d)
                     else median(r["all_gone_s"] for r in d)}}
    out["over_plain_s"] = out[DURABLE]["shutdown_s"] - out[PLAIN]["shutdown_s"]
    log(f"grace: durable shutdown {out[DURABLE]['shutdown_s']:.2f} s vs plain {out[PLAIN]['shutdown_s']:.2f} s "
        f"({out['over_plain_s']:+.2f} s; target <= +{sizes.grace_s + 2:g} s); markers done (min) "
        f"{out[DURABLE]['markers_done_min']} of {sizes.actors - sizes.hanging} expected")
    return out
