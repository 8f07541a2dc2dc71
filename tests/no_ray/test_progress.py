"""The progress display of the CLI's waits: plain lines off a terminal, a live line on one."""

from __future__ import annotations

import io

from serve_cleanup.cli.progress import PREFIX, Waiting
from waiting import wait_for


def test_plain_lines_after_the_first_second_then_on_change_and_periodically():
    out = io.StringIO()
    with Waiting("the controller", stream=out, interactive=False, first_after_s=0.05, every_s=0.3) as w:
        wait_for(lambda: out.getvalue().count("\n") >= 1, 10, "the first line", interval_s=0.01)
        w.update("Serve to finish shutting down")
        wait_for(lambda: "Serve to finish shutting down" in out.getvalue(), 10, "the new line", interval_s=0.01)
        wait_for(lambda: out.getvalue().count("Serve to finish shutting down") >= 2, 10, "a repeat",  # every_s
                 interval_s=0.01)
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
        wait_for(lambda: "Serve to finish shutting down" in out.getvalue(), 10, "the new line", interval_s=0.01)
    text = out.getvalue()
    assert "Waiting for Serve to finish shutting down" in text and "0:00:0" in text
