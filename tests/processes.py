"""Finding the processes a test (or the session) started, through /proc (Linux).

Two ways, used together:

* a marker in the environment, which every child inherits (``ray start`` passes its
  environment on to everything it spawns);
* the process tree: a raylet starts its agents (``ray::DashboardAgent``,
  ``ray::RuntimeEnvAgent``) and workers, which rename themselves with setproctitle: that
  overwrites their ``environ``, so a marker may or may not survive there. They are found
  as descendants of a marked process while their parent lives, and remembered
  (``Seen``): once the parent is killed they are orphans of init, known only by pid and
  start time (which tells a process from a later one that got the same pid).

Imports no Ray.
"""

from __future__ import annotations

import os
import signal
from typing import Iterable, Optional


def _stat(pid: int) -> Optional[tuple[str, int, int]]:
    """(state, parent pid, start time) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def live() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time) of every process alive now (zombies aside)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[0] != "Z":
                table[int(entry)] = stat[1:]
    return table


def descendants(roots: Iterable[int], table: Optional[dict[int, tuple[int, int]]] = None) -> set[int]:
    """The live processes below ``roots`` (the roots not included)."""
    table = live() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def with_marker(name: str, value: str, prefix: bool = False,
                table: Optional[dict[int, tuple[int, int]]] = None) -> set[int]:
    """Live processes whose environment has ``name=value`` (``name=value...`` if
    ``prefix``), this process aside."""
    needle = f"{name}={value}".encode()
    found = set()
    for pid in live() if table is None else table:
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if any(v.startswith(needle) if prefix else v == needle for v in env):
            found.add(pid)
    return found


def marked_tree(name: str, value: str, prefix: bool = False) -> set[int]:
    """The processes carrying the marker and every live process below them."""
    table = live()
    marked = with_marker(name, value, prefix, table)
    return marked | descendants(marked, table)


class Seen:
    """Processes found once, by pid and start time: ``alive()`` is those still running
    (an orphan whose environment lost the marker, too), never a later process that
    happens to get the same pid."""

    def __init__(self) -> None:
        self._started: dict[int, int] = {}

    def add(self, pids: Iterable[int]) -> None:
        for pid in pids:
            stat = _stat(pid)
            if stat is not None and stat[0] != "Z":
                self._started.setdefault(pid, stat[2])

    def alive(self) -> set[int]:
        found = set()
        for pid, started in self._started.items():
            stat = _stat(pid)
            if stat is not None and stat[0] != "Z" and stat[2] == started:
                found.add(pid)
        return found


def command(pid: int) -> str:
    """The command line of ``pid`` (short), for a report."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:160]
    except OSError:
        return "?"


def kill(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
