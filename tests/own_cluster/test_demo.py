"""The README's first command, `serve-cleanup demo`, end to end.

The demo starts a local Ray of its own (in a temp dir of the test's), and shuts it down at
the end; the ``demo_run`` fixture (conftest.py) starts it, early when it can.
"""

from __future__ import annotations

import re

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def test_demo_shows_plain_serve_leaking_and_serve_cleanup_not(demo_run):
    out = demo_run.result()
    assert out.returncode == 0, f"demo failed:\n{out.stdout}\n{out.stderr[-3000:]}"
    assert "OK: plain Serve leaked 3 actor(s); serve_cleanup leaked 0 and killed no bystander." in out.stdout, out.stdout
    assert re.search(r"helpers alive after shutdown\s+3 LEAKED\s+0 *\n", out.stdout), out.stdout
