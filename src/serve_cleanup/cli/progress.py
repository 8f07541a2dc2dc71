"""What a command is waiting for, and for how long.

On a terminal: one live line (``rich``) with a spinner, the thing waited for and the
elapsed time, erased when the wait ends. Otherwise (a pipe, a log, ``kubectl exec``
without a TTY): plain lines on stderr, the first once the wait has lasted a second, then
one every ``every_s`` seconds and one each time the thing waited for changes. Stdout is
left to the command's result.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any, Optional

PREFIX = "serve-cleanup: waiting for"


class Waiting:
    def __init__(
        self, what: str, *, stream: Optional[IO[str]] = None, interactive: Optional[bool] = None,
        first_after_s: float = 1.0, every_s: float = 5.0,
    ) -> None:
        self._what = what
        self._stream = stream if stream is not None else sys.stderr
        self._interactive = self._stream.isatty() if interactive is None else interactive
        self._first_after_s = first_after_s
        self._every_s = every_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = 0.0
        self._live: Any = None
        self._task: Any = None
        self._thread: Optional[threading.Thread] = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def update(self, what: str) -> None:
        """Now waiting for ``what``."""
        with self._lock:
            self._what = what
        if self._live is not None:
            self._live.update(self._task, description=f"Waiting for {what}")

    def note(self, message: str) -> None:
        """A line worth keeping (printed above the live line on a terminal)."""
        if self._live is not None:
            self._live.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=self._stream, flush=True)

    def __enter__(self) -> "Waiting":
        self._started = time.monotonic()
        if self._interactive:
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._live = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                console=Console(file=self._stream, force_terminal=True), transient=True,
            )
            self._live.start()
            self._task = self._live.add_task(f"Waiting for {self._what}", total=None)
        else:
            self._thread = threading.Thread(target=self._plain_lines, daemon=True, name="serve_cleanup_progress")
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._live is not None:
            self._live.stop()
        if self._thread is not None:
            self._thread.join(1.0)

    def _plain_lines(self) -> None:
        if self._stop.wait(self._first_after_s):
            return
        printed, last = None, 0.0
        while True:
            with self._lock:
                what = self._what
            now = self.elapsed
            if what != printed or now - last >= self._every_s:
                print(f"{PREFIX} {what} ({now:.0f}s)", file=self._stream, flush=True)
                printed, last = what, now
            if self._stop.wait(0.25):
                return
