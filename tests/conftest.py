"""Shared by every test directory. Imports no Ray: tests/no_ray runs where Ray is not
installed; the Ray fixtures live in ray_helpers.py.

At the end of the session it checks that the suite left the machine as it found it for
Ray (a check, not a test: it fails the run):

* no ``ray_current_cluster`` in Ray's default temp dir that was not there before the
  session (or that changed): ``ray.init()`` reads it to join "the" local cluster, so one
  pointing at a cluster a test started and ended breaks the next ``ray.init(num_cpus=2)``
  on the machine ("When connecting to an existing cluster, num_cpus ... must not be
  provided"). Every cluster a test starts gets a temp dir of its own instead;
* no process the session started still running: those that inherited
  ``SESSION_MARKER`` from its environment (``ray start`` passes it on to everything it
  spawns), and those found below them or below the session after any test (a raylet's
  agents rewrite their environment: see processes.py). Other Ray users of the machine
  are not counted.

What it finds it reports, and removes (the file; the processes, by pid).
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import NamedTuple, Optional

import pytest

import processes
from waiting import TimedOut, wait_for

SESSION_MARKER = "SC_TEST_SESSION"  # not SERVE_CLEANUP_*: some tests drop those from a child's env
EXIT_GRACE_S = 30.0  # processes still exiting when the session ends (Ray's workers) get this long


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-rounds", type=int, default=1,
        help="rounds of the chaos harness (the default run has one; a long run is e.g. 100)",
    )
    parser.addoption("--chaos-seed", type=int, default=20261127, help="seed of the chaos harness")
    parser.addoption(
        "--sim-seeds", type=int, default=300,
        help="seeds of the core's simulation (tests/no_ray/test_simulation.py); e.g. 100000 for a long run",
    )


def pytest_report_header(config: pytest.Config) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ray_version = version("ray")
    except PackageNotFoundError:
        return "ray: not installed (tests/no_ray run; the other folders need it)"
    ignored = f"; RAY_ADDRESS={os.environ['RAY_ADDRESS']!r} is ignored" if os.environ.get("RAY_ADDRESS") else ""
    return (
        f"ray {ray_version}: the Ray tests start their own local cluster "
        f"(ray.init(address='local')){ignored}, and shut Serve and it down at the end"
    )


# --- the machine after the suite ---------------------------------------------------------------


def ray_address_file() -> Path:
    """``ray_current_cluster`` in Ray's default temp dir, found as Ray finds it
    (``ray._common.utils.get_default_system_temp_dir``), without importing Ray."""
    if "RAY_TMPDIR" in os.environ:
        base = os.environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and "TMPDIR" in os.environ:
        base = os.environ["TMPDIR"]
    else:
        base = "/tmp"
    return Path(base) / "ray" / "ray_current_cluster"


class AddressFile(NamedTuple):
    content: Optional[bytes]  # None: no such file
    mtime_ns: int


def _address_file() -> AddressFile:
    path = ray_address_file()
    try:
        return AddressFile(path.read_bytes(), path.stat().st_mtime_ns)
    except OSError:
        return AddressFile(None, 0)


def _note_session_processes(config: pytest.Config) -> set[int]:
    """Add what runs now of this session (its marked processes, the processes below them
    and below this one) to what it has seen; return those of them still alive."""
    seen = config.stash[_seen]
    table = processes.live()
    marked = processes.with_marker(SESSION_MARKER, config.stash[_marker], table=table)
    seen.add(marked | processes.descendants(marked | {os.getpid()}, table))
    return seen.alive()


_marker = pytest.StashKey[str]()
_seen = pytest.StashKey[processes.Seen]()
_file_before = pytest.StashKey[AddressFile]()
_left = pytest.StashKey[list]()


def pytest_sessionstart(session: pytest.Session) -> None:
    marker = os.environ.setdefault(SESSION_MARKER, uuid.uuid4().hex)
    session.config.stash[_marker] = marker
    session.config.stash[_seen] = processes.Seen()
    session.config.stash[_file_before] = _address_file()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """After each test, before its fixtures are torn down: note the processes the
    session runs now (a raylet's agents are found below it while it lives; once it is
    killed they are orphans whose environment may have lost the marker)."""
    yield
    if os.path.isdir("/proc") and _seen in item.config.stash:
        _note_session_processes(item.config)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if _marker not in config.stash:
        return
    left: list[str] = []

    before, after = config.stash[_file_before], _address_file()
    if after.content is not None and after != before:
        path = ray_address_file()
        left.append(
            f"{path} ({after.content.decode(errors='replace')!r}) was "
            + ("not there before the session" if before.content is None else f"{before.content!r} before the session")
            + "; a plain ray.init() on this machine would try to join that cluster. Give the "
            "cluster a temp dir of its own. (Removed"
            + (")" if before.content is None else "; the previous content put back)")
        )
        if before.content is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(before.content)

    if os.path.isdir("/proc"):
        try:
            wait_for(lambda: not _note_session_processes(config), EXIT_GRACE_S,
                     "the session's processes to exit", interval_s=0.2)
        except TimedOut:
            alive = _note_session_processes(config)
            left.append(
                f"{len(alive)} process(es) this session started are still running "
                f"{EXIT_GRACE_S:.0f} s after its end (killed now, by pid):\n"
                + "\n".join(f"    {pid}  {processes.command(pid)}" for pid in sorted(alive))
            )
            processes.kill(alive)

    config.stash[_left] = left
    if left and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    left = config.stash.get(_left, [])
    if left:
        terminalreporter.section("the suite left the machine broken for Ray", sep="=", red=True, bold=True)
        for line in left:
            terminalreporter.write_line("FAILED: " + line, red=True)
