"""How every test waits: ``wait_for`` polls a condition until it holds or a deadline passes;
``assert_stays`` checks that a condition holds for a whole window (for negatives such as
"not killed": a kill that was sent lands within that window).

Imports neither Ray nor pytest: the no-Ray tests, the Ray tests, and the two scripts that
also run outside pytest (the chaos harness, the head-restart driver) use it.
"""

from __future__ import annotations

import time
from typing import Callable, Optional


class TimedOut(AssertionError):
    """``wait_for``'s deadline passed (an AssertionError: a test that meets it fails)."""


def wait_for(
    predicate: Callable[[], object], timeout_s: float = 30.0, what: str = "condition",
    interval_s: float = 0.05,
) -> object:
    """Call ``predicate`` until it returns a truthy value, and return that value; raise
    ``TimedOut`` after ``timeout_s``. An exception the predicate raises counts as "not yet"
    (it may race a restarting controller) and is named in the failure. ``interval_s=0``
    polls without a pause (for a step that lasts a fraction of a second)."""
    deadline = time.monotonic() + timeout_s
    last_exc: Optional[BaseException] = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:
            last_exc = e
        if time.monotonic() >= deadline:
            raise TimedOut(f"timed out after {timeout_s}s waiting for {what} (last error: {last_exc!r})")
        if interval_s:
            time.sleep(interval_s)


def assert_stays(predicate: Callable[[], bool], seconds: float, what: str, interval_s: float = 0.1) -> None:
    """Assert ``predicate`` holds at every poll of a ``seconds``-long window."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), f"expected {what} to hold for {seconds}s"
        time.sleep(interval_s)
