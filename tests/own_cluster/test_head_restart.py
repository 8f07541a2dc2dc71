"""The whole head node dies; a new head starts on the same Redis; ``serve.shutdown()``.

The failure KubeRay's GCS fault tolerance exists for: the head pod (GCS, raylet, and the
Serve controller with them) dies while a worker node keeps the registered actors alive;
a new head comes up on the same Redis, the GCS re-creates the detached controller there
from its stored class, and ``serve.shutdown()`` must then kill every registered actor.

On one machine (the recipe of the facts note): a Redis server of the test's own
(Debian's ``redis-server``); ``ray start --head`` with ``RAY_REDIS_ADDRESS`` and
``--num-cpus=0``; a worker node ``ray start --address`` with a custom resource that every
test actor (and the Serve replica) is pinned to; each node with a private ``--temp-dir``
under /tmp, ports picked free, no dashboard HTTP server. The head's ``gcs_server`` and
raylet get SIGKILL; the raylet's workers (the Serve controller, the proxy) exit by
themselves within seconds; what Ray leaves of the old head after that (log monitor,
autoscaler monitor, client server, the headless dashboard process, sometimes the agents) is
killed too, as a dead pod has none. ``ray_current_cluster`` is deleted from the head's
temp dir (a new pod has a fresh disk) and ``ray start --head`` runs again on the same
port and Redis. The drivers are subprocesses (``headrestart_driver.py``), one before the
head dies and one after, so no driver is attached to the head that dies.

Every process is found by an environment variable ``ray start`` passes on to everything
it spawns (``SERVE_CLEANUP_HEADRESTART=<run>/<role>``) and ended by pid at teardown, also
when the test fails. Never ``ray stop``: it ends every Ray process of the machine. The
cluster gets its own auth token through ``RAY_AUTH_TOKEN``; ``~/.ray`` is not used.

Both scenarios (durable, and plain Serve as the guard that shows the first can fail)
run on one cluster, one after the other, each with a head restart of its own. Measured
here (2 shared cores, Ray 2.60; ``-s`` prints the phases): head and worker start ~10 s;
per scenario, Serve, the app and the registrations ~8 s, killing the head and starting
the new one ~9 s, from the kill to the controller answering a driver ~10 s,
``serve.shutdown()`` 3-4 s.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Iterator, Optional

import pytest

from processes import Seen, kill, marked_tree
from ray_helpers import TimedOut, free_port, stop_ray, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.timeout(360)]

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
DRIVER = os.path.join(HERE, "headrestart_driver.py")
TAG = "SERVE_CLEANUP_HEADRESTART"  # <run id>/<role>, inherited by every process of a node
WAIT_S = 60.0  # a driver's deadline for each thing it waits for (the controller, its exit, ...)


def parent(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def describe(pid: int, comm: str) -> str:
    """``ray::RuntimeEnvAgent``, ``monitor.py``, ``ray.util.client.server``, ... for a log line."""
    args = cmdline(pid).split()
    if comm.startswith("python") and len(args) > 1:
        tail = [a for a in args[1:] if not a.startswith("-")]
        return os.path.basename(tail[0]) if tail else comm
    return args[0] if args else comm


class HeadRestartCluster:
    """A head (on Redis) and one worker node, started with ``ray start``; knows its pids."""

    def __init__(self, redis_address: str) -> None:
        self.run = uuid.uuid4().hex[:12]
        self.redis_address = redis_address
        # Short paths: Ray's Unix sockets live under the temp dir (108-byte limit).
        self.head_dir = tempfile.mkdtemp(prefix="sc-hr-head-")
        self.worker_dir = tempfile.mkdtemp(prefix="sc-hr-worker-")
        self.gcs_port, self.head_nm_port, self.worker_nm_port = free_port(), free_port(), free_port()
        self.client_port, self.http_port = free_port(), free_port()
        self.gcs = f"127.0.0.1:{self.gcs_port}"
        # This run's own token, passed to every process: the test neither needs nor
        # writes ~/.ray/auth_token (`ray start` in token mode refuses to run without one).
        self.token = secrets.token_hex(32)
        self.head_generation = 0
        self.seen: dict[Optional[str], Seen] = {}  # role -> processes found so far
        self.timings: dict[str, float] = {}
        self.head_killed_at = 0.0

    # --- processes ----------------------------------------------------------------------

    def env(self, role: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_CLEANUP_")}
        env.pop("RAY_ADDRESS", None)
        # The drivers import this folder's modules and the tests' shared helpers one up.
        env["PYTHONPATH"] = os.pathsep.join([HERE, os.path.dirname(HERE)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        env["RAY_AUTH_MODE"] = "token"  # Ray 2.60's CLIs send the cluster token only with this
        env["RAY_AUTH_TOKEN"] = self.token
        env.pop("RAY_AUTH_TOKEN_PATH", None)
        env[TAG] = f"{self.run}/{role}"
        return {**env, **extra}

    def processes(self, role: Optional[str] = None) -> dict[int, str]:
        """pid -> command name of every live process of this run (of ``role``): those
        carrying its tag, the processes below them (a raylet's agents and workers rewrite
        their environment, see processes.py), and those seen so before that still run
        (orphans of a node killed first)."""
        tagged = marked_tree(TAG, f"{self.run}/{role}" if role else f"{self.run}/", prefix=role is None)
        self.seen.setdefault(role, Seen()).add(tagged)
        seen = [self.seen[role]] if role is not None else list(self.seen.values())
        found = {}
        for pid in tagged.union(*(s.alive() for s in seen)):
            try:
                with open(f"/proc/{pid}/comm") as f:
                    found[pid] = f.read().strip()
            except OSError:  # gone meanwhile
                pass
        return found

    def kill(self, pids, sig: int = signal.SIGKILL) -> None:
        kill(pids, sig)

    def ray(self, role: str, *args: str, **env: str) -> None:
        out = subprocess.run(
            [os.path.join(BIN, "ray"), "start", *args], capture_output=True, text=True,
            timeout=180, env=self.env(role, **env),
        )
        assert out.returncode == 0, f"ray start {args} failed:\n{out.stdout}\n{out.stderr}"

    def common_args(self, temp_dir: str, node_manager_port: int) -> list[str]:
        return [
            f"--temp-dir={temp_dir}", f"--node-manager-port={node_manager_port}",
            "--dashboard-agent-listen-port=0", "--min-worker-port=0", "--max-worker-port=0",
            "--object-store-memory=78643200", "--disable-usage-stats",
        ]

    def start_head(self) -> None:
        self.head_generation += 1
        self.ray(
            f"head{self.head_generation}", "--head", f"--port={self.gcs_port}",
            "--num-cpus=0",  # as KubeRay recommends for the head: only Serve's actors there
            "--include-dashboard=false", f"--ray-client-server-port={self.client_port}",
            *self.common_args(self.head_dir, self.head_nm_port),
            RAY_REDIS_ADDRESS=self.redis_address,
        )

    def start_worker(self) -> None:
        self.ray(
            "worker", f"--address={self.gcs}", "--num-cpus=1",
            '--resources={"worker_node": 100}',
            *self.common_args(self.worker_dir, self.worker_nm_port),
            # The worker raylet waits this long for a GCS that is gone (default 60 s).
            RAY_gcs_rpc_server_reconnect_timeout_s="120",
        )

    def kill_head(self) -> dict[str, list[str]]:
        """The head node dies: SIGKILL to its GCS and raylet; the raylet's workers (the
        Serve controller among them) exit by themselves; what is left of the head after
        that (the raylet's agents, log monitor, autoscaler monitor, client server, the
        headless dashboard: Ray leaves them running) is killed too, as a dead pod has none."""
        role = f"head{self.head_generation}"
        head = self.processes(role)
        names = {pid: describe(pid, comm) for pid, comm in head.items()}
        core = {comm: pid for pid, comm in head.items() if comm in ("gcs_server", "raylet")}
        assert sorted(core) == ["gcs_server", "raylet"], head
        workers = {
            pid: comm for pid, comm in head.items()
            if parent(pid) == core["raylet"] and comm.startswith("ray::") and "Agent" not in cmdline(pid)
        }
        assert "ray::ServeContr" in workers.values(), f"no Serve controller on the head: {head}"
        self.kill(core.values())
        self.head_killed_at = time.time()
        wait_for(lambda: not set(workers) & set(self.processes(role)), 30,
                 f"the raylet's workers {sorted(workers.values())} to exit with it")
        rest = self.processes(role)
        self.kill(rest)
        wait_for(lambda: not self.processes(role), 30, "the rest of the old head to exit")
        # A new head pod has a fresh disk: with this file left, `ray start --head` would
        # find the worker raylet's --gcs-address for the same address and refuse.
        os.remove(os.path.join(self.head_dir, "ray_current_cluster"))
        return {
            "killed": sorted(core),
            "exited with the raylet": sorted(names[p] for p in workers),
            "left, then killed": sorted(names.get(p, comm) for p, comm in rest.items()),
        }

    def stop(self) -> None:
        """End every process of this run by SIGKILL (SIGTERM takes 10 s for a raylet and
        more than 30 s for the GCS here); remove the temp dirs."""
        self.kill(self.processes())
        try:
            wait_for(lambda: not self.processes(), 30, "this run's processes to exit")
        except TimedOut:
            pass  # the fixture reports what is left
        for d in (self.head_dir, self.worker_dir):
            shutil.rmtree(d, ignore_errors=True)

    # --- drivers ------------------------------------------------------------------------

    def driver(self, *args: str) -> dict:
        out = subprocess.run(
            [sys.executable, DRIVER, args[0], self.gcs, *args[1:]], capture_output=True,
            text=True, timeout=WAIT_S * 3 + 30, env=self.env("driver"),
        )
        results = [line[len("RESULT "):] for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        assert out.returncode == 0 and len(results) == 1, (
            f"driver {args[0]} failed (exit {out.returncode}):\n{out.stdout}\n{out.stderr[-4000:]}"
        )
        return json.loads(results[0])


@pytest.fixture(scope="module")
def cluster(redis_address) -> Iterator[HeadRestartCluster]:
    """One cluster for the module: the durable scenario and plain Serve's guard each
    restart its head once (the second starts where the first left Serve: shut down)."""
    stop_ray()  # the session's embedded cluster, if any: one cluster at a time
    c = HeadRestartCluster(redis_address)
    try:
        t0 = time.monotonic()
        c.start_head()
        c.start_worker()
        print(f"start head and worker {time.monotonic() - t0:.1f}s")
        yield c
    finally:
        c.stop()
        left = c.processes()
        assert not left, f"processes of this test still running after teardown: {left}"


def run_scenario(c: HeadRestartCluster, mode: str) -> tuple[dict, dict]:
    """Register, kill the head, start a new one, shut Serve down; the drivers' reports."""
    t0 = time.monotonic()
    setup = c.driver("setup", mode, str(c.http_port))
    c.timings["serve, app, registrations"] = time.monotonic() - t0

    t0 = time.monotonic()
    killed = c.kill_head()
    c.start_head()
    c.timings["kill head, start new head"] = time.monotonic() - t0
    print(f"\nhead killed: {killed}")

    t0 = time.monotonic()
    ids = {"registered": list(setup["registered"].values()), "bystander": setup["bystander"]}
    report = c.driver("shutdown", mode, json.dumps(ids), str(WAIT_S))
    c.timings["controller back, serve.shutdown()"] = time.monotonic() - t0
    c.timings["head killed -> controller answered a driver"] = (
        report["controller_answered_at"] - c.head_killed_at
    )
    c.timings["of which serve.shutdown()"] = report["shutdown_s"]
    print("phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in c.timings.items()))
    return setup, report


def assert_head_restarted_under_live_actors(setup: dict, report: dict) -> None:
    """The scenario really happened: actors on the worker, a new head, actors untouched."""
    worker_nodes = {a["node"] for a in setup["actors"].values()}
    assert len(worker_nodes) == 1 and setup["head"] not in worker_nodes, setup
    assert setup["controller_node"] == setup["head"]
    before = report["before"]
    assert before["head"] != setup["head"], "no new head node"
    assert before["controller_node"] == before["head"], "controller not re-created on the new head"
    for actor_id, info in before["actors"].items():
        # Alive in the same process as before the head died: not restarted, not re-created.
        assert info == {**setup["actors"][actor_id], "state": "ALIVE"}, (actor_id, info)


def test_serve_shutdown_after_head_restart_kills_registered_worker_actors(cluster):
    """Durable Serve (``serve_cleanup.start()``): three actors on the worker node are
    registered (by a replica and by a driver through the upstream method, and through
    ``serve_cleanup.register``); after the head restart ``serve.shutdown()`` kills all
    three, leaves the unregistered bystander alive, and leaves no record and no controller."""
    setup, report = run_scenario(cluster, "durable")
    registered = setup["registered"]
    assert set(registered) == {"hr-helper", "driver-upstream", "hr-direct"}
    assert setup["records"] == sorted(registered.values())  # all three durable
    assert_head_restarted_under_live_actors(setup, report)
    assert report["before"]["controller_kind"] == "durable"  # re-created from its class
    assert report["before"]["records"] == setup["records"]  # the KV came back from Redis

    after = report["after"]
    states = {label: after["actors"][actor_id]["state"] for label, actor_id in registered.items()}
    assert states == {label: "DEAD" for label in registered}
    assert after["actors"][setup["bystander"]]["state"] == "ALIVE"
    assert after["records"] == []
    assert after["controller"] is False


def test_plain_serve_leaks_registered_worker_actors_after_head_restart(cluster):
    """The guard: the same sequence on plain Serve (``serve.start()``) leaves the actors
    registered through the upstream method alive, so the test above can fail."""
    setup, report = run_scenario(cluster, "plain")
    registered = setup["registered"]
    assert set(registered) == {"hr-helper", "driver-upstream"}
    assert_head_restarted_under_live_actors(setup, report)
    assert report["before"]["controller_kind"] == "plain"

    after = report["after"]
    assert after["controller"] is False
    states = {label: after["actors"][actor_id]["state"] for label, actor_id in registered.items()}
    assert states == {label: "ALIVE" for label in registered}  # leaked
    assert after["actors"][setup["bystander"]]["state"] == "ALIVE"
