"""`serve-cleanup status` with this environment's (supported) Ray and no cluster at the
address. Its twin with Ray missing, broken or unsupported is tests/no_ray/test_cli_without_ray.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_status_without_a_cluster_is_exit_5_and_still_shows_the_switch():
    """With a supported Ray (this test environment's) and nothing listening at the address:
    no Ray is started, no driver connects; the switch and Ray lines come first."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run(
        [sys.executable, "-m", "serve_cleanup.cli", "status", "--json"],
        capture_output=True, text=True, timeout=60, env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"},
    )
    assert out.returncode == 5, out.stderr
    status = json.loads(out.stdout)
    assert status["exit_code"] == 5 and status["ray"]["supported"] is True
    assert status["cluster"]["address"].endswith(f":{port}") and "cannot reach GCS" in status["cluster"]["error"]
    assert status["controller"] is None and "switch" in status
    assert "Traceback" not in out.stderr, out.stderr
    (line,) = out.stderr.splitlines()  # one error line
    assert line.startswith("Error: ") and "cannot connect" in line
