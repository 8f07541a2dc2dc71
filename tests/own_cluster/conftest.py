"""Fixtures for the tests that start clusters of their own (one cluster at a time on this
machine: each stops the session's shared cluster first; the Ray ones defined in ray_helpers),
and the demo's run.

``serve-cleanup demo`` starts a local Ray of its own and takes ~20 s. When every test the
session runs before test_demo needs no cluster (tests/no_ray, tests/ray_no_cluster: the
README's command), the demo is started as soon as the tests are collected and runs while
those do; test_demo then only waits for its result. Otherwise test_demo starts it itself.
Either way it is the only cluster on the machine while it runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Optional

import pytest

from ray_helpers import _ray_down_at_exit, redis_address, stop_ray, temp_dir_of_its_own  # noqa: F401

DEMO_TEST = "test_demo.py"
NO_CLUSTER = ("no_ray", "ray_no_cluster")  # the folders whose tests start no cluster
DEMO_TIMEOUT_S = 280.0


class DemoRun:
    """`serve-cleanup demo` in a subprocess, its cluster in a temp dir of its own, its
    output in files there (a pipe could fill up and stall it)."""

    def __init__(self) -> None:
        self.temp_dir = temp_dir_of_its_own("demo")
        out, err = (open(Path(self.temp_dir) / name, "w+") for name in ("stdout", "stderr"))
        self._files = (out, err)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serve_cleanup.cli", "demo"],
            stdout=out, stderr=err, text=True, env={**env, "RAY_TMPDIR": self.temp_dir},
        )

    def result(self) -> subprocess.CompletedProcess:
        try:
            self.proc.wait(timeout=DEMO_TIMEOUT_S)
        finally:
            self.end()
        return self._done

    def end(self) -> None:
        """Stop the demo if it still runs (by pid), keep its output, remove its temp dir."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not hasattr(self, "_done"):
            out, err = self._files
            texts = []
            for f in (out, err):
                f.seek(0)
                texts.append(f.read())
                f.close()
            self._done = subprocess.CompletedProcess(self.proc.args, self.proc.returncode, *texts)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


_early_demo = pytest.StashKey[Optional[DemoRun]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    demo = [i for i, item in enumerate(session.items) if item.path.name == DEMO_TEST]
    if demo and all(item.path.parent.name in NO_CLUSTER for item in session.items[:demo[0]]):
        session.config.stash[_early_demo] = DemoRun()


def pytest_sessionfinish(session: pytest.Session) -> None:
    run = session.config.stash.get(_early_demo, None)
    if run is not None:
        run.end()  # test_demo did not run (deselected, or the session stopped first)


@pytest.fixture
def demo_run(request: pytest.FixtureRequest) -> Iterator[DemoRun]:
    """The demo's run: the one started with the session, else one started now (after
    stopping the shared cluster)."""
    run = request.config.stash.get(_early_demo, None)
    if run is None:
        stop_ray()
        run = DemoRun()
    else:
        request.config.stash[_early_demo] = None
    try:
        yield run
    finally:
        run.end()
