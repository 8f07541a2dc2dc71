"""The README's first command, `serve-cleanup demo`, end to end.

The demo starts a local Ray of its own, so the session's cluster is stopped first (one
cluster at a time); it shuts its own down at the end. Its temp dir is one of the test's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from ray_helpers import stop_ray, temp_dir_of_its_own

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def test_demo_shows_plain_serve_leaking_and_serve_cleanup_not():
    stop_ray()
    # The demo's cluster gets a temp dir of its own (Ray reads RAY_TMPDIR for its default).
    temp_dir = temp_dir_of_its_own("demo")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    try:
        out = subprocess.run(
            [sys.executable, "-m", "serve_cleanup.cli", "demo"],
            capture_output=True, text=True, timeout=280, env={**env, "RAY_TMPDIR": temp_dir},
        )
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert out.returncode == 0, f"demo failed:\n{out.stdout}\n{out.stderr[-3000:]}"
    assert "OK: plain Serve leaked 3 actor(s); serve_cleanup leaked 0 and killed no bystander." in out.stdout, out.stdout
    assert re.search(r"helpers alive after shutdown\s+3 LEAKED\s+0 *\n", out.stdout), out.stdout
