"""Keep the benchmark scripts working: a tiny run against the test cluster. Times nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import ray


pytestmark = pytest.mark.ray

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_benchmarks_smoke(no_serve, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--address",
         ray.get_runtime_context().gcs_address, "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = (tmp_path / "benchmarks.md").read_text()
    assert "Smoke run" in report and "registration p50" in report
