"""The progress display of the CLI's waits: plain lines off a terminal, a live line on one."""

from __future__ import annotations

import io
import time

from serve_cleanup.cli.progress import PREFIX, Waiting


def _until(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_plain_lines_after_the_first_second_then_on_change_and_periodically():
    out = io.StringIO()
    with Waiting("the controller", stream=out, interactive=False, first_after_s=0.05, every_s=0.3) as w:
        _until(lambda: out.getvalue().count("\n") >= 1)
        w.update("Serve to finish shutting down")
        _until(lambda: "Serve to finish shutting down" in out.getvalue())
        _until(lambda: out.getvalue().count("Serve to finish shutting down") >= 2)  # every_s
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"{PREFIX} the controller (") and lines[0].endswith("s)")
    assert all(line.startswith(PREFIX) for line in lines)


def test_a_short_wait_prints_nothing_off_a_terminal():
    out = io.StringIO()
    with Waiting("the controller", stream=out, interactive=False, first_after_s=30):
        pass
    assert out.getvalue() == ""


def test_notes_are_plain_lines():
    out = io.StringIO()
    with Waiting("x", stream=out, interactive=False, first_after_s=30) as w:
        w.note("Another process started Serve at the same time.")
    assert out.getvalue() == "Another process started Serve at the same time.\n"


def test_on_a_terminal_a_live_line_with_the_elapsed_time():
    out = io.StringIO()
    with Waiting("the controller", stream=out, interactive=True) as w:
        w.update("Serve to finish shutting down")
        _until(lambda: "Serve to finish shutting down" in out.getvalue())
    text = out.getvalue()
    assert "Waiting for Serve to finish shutting down" in text and "0:00:0" in text
